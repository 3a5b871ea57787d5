"""Which model versions are loaded, as TensorFlow Serving decides it.

For each model of `models.config`, the manager watches `base_path` for
numbered version directories, loads the ones the version policy selects
(`latest { num_versions }`, `all`, or `specific { versions }`), unloads the
others and resolves requests by version or label. It reads SavedModels and
configs only: nothing here knows how a model was trained.

Hot reloading is safe for requests in flight: a request holds its
`LoadedVersion` while it runs, and unloading only removes the version from the
table, so the old version answers until its last request has finished.
Versions are loaded the way TensorFlow Serving loads them (a Session, the
restore and init ops: `serving.saved_model_bundle`), and become AVAILABLE only
once their warmup requests have run. A version that fails to load or to warm
up is reported (state END with the error) while the versions already loaded
keep serving. A directory without `saved_model.pb`
is incomplete (still being copied) and is skipped until it is complete.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import Callable, Optional

import grpc
from google.protobuf import wrappers_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving.saved_model_bundle import (
    SavedModelBundle,
    Signature,
    error_message,
    load_bundle,
    signature_key,
    status_code,
)

log = logging.getLogger("serving")


class ServingError(Exception):
    """An error with the gRPC status code TensorFlow Serving would answer."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclasses.dataclass
class LoadedVersion:
    """One loaded version of a model.

    Attributes:
        name: The model's name.
        version: Its version number.
        path: Its directory.
        bundle: The Session-loaded SavedModel.
    """

    name: str
    version: int
    path: Path
    bundle: SavedModelBundle

    @property
    def all_signature_defs(self) -> dict[str, meta_graph_pb2.SignatureDef]:
        """Every SignatureDef, `__saved_model_init_op` included, as `GetModelMetadata` returns them."""
        return dict(self.bundle.meta_graph.signature_def)

    def model_spec(self) -> model_pb2.ModelSpec:
        """The ModelSpec GetModelMetadata answers: the name and the version served (no signature)."""
        return model_pb2.ModelSpec(name=self.name, version=wrappers_pb2.Int64Value(value=self.version))

    def signature(self, name: str) -> Signature:
        """The signature a Predict names.

        Raises:
            ServingError: FAILED_PRECONDITION for an unknown signature, as TensorFlow Serving answers
                (`predict_util.cc`).
        """
        name = signature_key(name)
        signatures = self.bundle.signatures
        if name not in signatures:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                               f'Serving signature key "{name}" not found (model {self.name} version '
                               f"{self.version} has: {', '.join(sorted(signatures))})")
        return signatures[name]


def load_version(name: str, version: int, path: Path, session_config=None) -> LoadedVersion:
    """Load a SavedModel version with the session-based loader (no warmup)."""
    return LoadedVersion(name, version, path, load_bundle(path, session_config))


Loader = Callable[[str, int, Path], LoadedVersion]


@dataclasses.dataclass(frozen=True)
class VersionStatus:
    """One row of GetModelStatus: a version's state and, for a failed load, its error.

    Attributes:
        version: The version number.
        state: `AVAILABLE` or `END` (unloaded, or failed to load).
        code: OK, or the code of the error that stopped the load.
        message: The error, or "".
    """

    version: int
    state: str
    code: grpc.StatusCode = grpc.StatusCode.OK
    message: str = ""



def complete_versions(base_path: Path) -> list[int]:
    """Version numbers under a base path whose SavedModel is complete, ascending."""
    if not base_path.is_dir():
        return []
    return sorted(int(p.name) for p in base_path.iterdir()
                  if p.is_dir() and p.name.isdigit() and (p / "saved_model.pb").is_file())


def wanted_versions(available: list[int], policy: model_server_config_pb2.ModelConfig) -> list[int]:
    """The versions a model's version policy selects among those on disk (default: the latest)."""
    chosen = policy.model_version_policy.WhichOneof("policy_choice")
    if chosen == "all":
        return available
    if chosen == "specific":
        return [v for v in available if v in set(policy.model_version_policy.specific.versions)]
    count = policy.model_version_policy.latest.num_versions if chosen == "latest" else 1
    return available[-max(1, count):]


def signature_def_map(loaded: LoadedVersion) -> get_model_metadata_pb2.SignatureDefMap:
    """GetModelMetadata's `signature_def`: every SignatureDef, `__saved_model_init_op` included."""
    return get_model_metadata_pb2.SignatureDefMap(signature_def=loaded.all_signature_defs)


def check_tf_example_signature(loaded: LoadedVersion, signature_name: str, kind: str) -> None:
    """What Classify and Regress check before they run (classifier.cc, regressor.cc).

    They take tf.Example protos through a signature whose one input is named
    `inputs`; the exported models have Predict signatures (raw strings and
    prices in, tensors out), so every one of their signatures fails a check
    with TensorFlow Serving's code (INVALID_ARGUMENT). A signature that passed
    them all would need tf.Example parsing, which this server does not do.

    Raises:
        ServingError: INVALID_ARGUMENT naming the check that fails; UNIMPLEMENTED past them.
    """
    key = signature_key(signature_name)
    if key not in loaded.bundle.signatures:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"No signature was found with the name: {key}")
    definition = loaded.bundle.signatures[key].definition
    outputs_allowed = (1, 2) if kind == "classification" else (1,)
    if len(definition.inputs) != 1:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"Expected one input Tensor. (signature {key!r} "
                           f"takes {', '.join(sorted(definition.inputs)) or 'none'}; use Predict)")
    if len(definition.outputs) not in outputs_allowed:
        expected = "one or two output Tensors" if kind == "classification" else "one output Tensor"
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"Expected {expected}, found {len(definition.outputs)} "
                           f"(signature {key!r}; use Predict)")
    if "inputs" not in definition.inputs:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"No {kind} inputs found in SignatureDef {key!r} "
                           "(it needs an input named 'inputs' holding tf.Example protos; use Predict)")
    raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"{kind} of tf.Example inputs is not implemented by this "
                       "server; use Predict")


class ModelManager:
    """The table of loaded versions, refreshed from disk and from the config.

    Args:
        config: The ModelServerConfig (models.config).
        root: Directory that relative base paths are resolved against.
        load: Loads one version, warmup included; raises if it cannot serve.
    """

    def __init__(self, config: model_server_config_pb2.ModelServerConfig, root: Path = Path("."),
                 load: Loader = load_version):
        self._root = root
        self._load = load
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()  # one refresh at a time
        self._configs: dict[str, model_server_config_pb2.ModelConfig] = {}
        self._loaded: dict[str, dict[int, LoadedVersion]] = {}
        self._failed: dict[str, dict[int, VersionStatus]] = {}
        # Unloaded versions stay in END, also after their model left the config (TensorFlow Serving's
        # ServableStateMonitor never forgets a version).
        self._unloaded: dict[str, set[int]] = {}
        self.set_config(config)

    def set_config(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """Replace the model list (HandleReloadConfigRequest), then load and unload to match."""
        configs = {model.name: model for model in config.model_config_list.config}
        with self._refresh_lock:  # not while a refresh walks the old list
            with self._lock:
                for name in [name for name in self._loaded if name not in configs]:
                    self._unloaded.setdefault(name, set()).update(self._loaded.pop(name))
                for name in [name for name in configs if name not in self._configs]:
                    self._failed.pop(name, None)  # a model added (again) gets a fresh try at every version
                self._configs = configs
        self.refresh()

    def base_path(self, name: str) -> Path:
        path = Path(self._configs[name].base_path)
        return path if path.is_absolute() else self._root / path

    def refresh(self) -> None:
        """Load the versions the policies want and unload the others.

        A version that failed to load takes no place in the policy: with
        `latest {2}`, a broken newest version leaves the two newest good ones serving.
        """
        with self._refresh_lock:
            for name, config in list(self._configs.items()):
                base = self.base_path(name)
                while True:  # each failure frees a slot for an older version: choose again
                    failed = self._failed.get(name, {})
                    wanted = wanted_versions([v for v in complete_versions(base) if v not in failed], config)
                    loaded = self._loaded.get(name, {})
                    missing = [v for v in wanted if v not in loaded]
                    if not missing:
                        break
                    for version in missing:
                        try:
                            new = self._load(name, version, base / str(version))
                        except Exception as error:  # noqa: BLE001 - any load failure is reported, not fatal
                            message = f"{type(error).__name__}: {error_message(error)[:500]}"
                            log.warning("model %s version %d failed to load: %s", name, version, message)
                            with self._lock:
                                self._failed.setdefault(name, {})[version] = VersionStatus(
                                    version, "END", status_code(error), message)
                            continue
                        with self._lock:
                            self._loaded.setdefault(name, {})[version] = new
                        log.info("model %s version %d loaded", name, version)
                with self._lock:
                    for version in [v for v in self._loaded.get(name, {}) if v not in wanted]:
                        del self._loaded[name][version]  # requests in flight keep their reference
                        self._unloaded.setdefault(name, set()).add(version)
                        log.info("model %s version %d unloaded", name, version)

    def resolve(self, name: str, version: Optional[int] = None, label: Optional[str] = None) -> LoadedVersion:
        """The version a request asks for: a number, a label, or the newest loaded.

        Raises:
            ServingError: with TensorFlow Serving's codes (`server_core.cc`, ServableRequestFromModelSpec):
                INVALID_ARGUMENT for no name or an unknown label (of any model, known or not),
                NOT_FOUND for an unknown model or a version that is not loaded.
        """
        if not name:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "model_spec.name is empty: name the model to "
                               f"query (served models: {', '.join(self.names())})")
        with self._lock:
            if label:
                labels = self._configs[name].version_labels if name in self._configs else {}
                if label not in labels:
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"Unrecognized servable version label: "
                                       f"{label} (model {name!r} has labels: {', '.join(sorted(labels)) or 'none'})")
                version = labels[label]
            if name not in self._configs:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"model {name!r} not found; served models: {', '.join(sorted(self._configs))}")
            loaded = self._loaded.get(name, {})
            if version is None:
                if not loaded:
                    raise ServingError(grpc.StatusCode.UNAVAILABLE, f"model {name!r} has no version loaded yet")
                return loaded[max(loaded)]
            if version not in loaded:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"model {name!r} version {version} is not loaded; loaded: "
                                   f"{', '.join(map(str, sorted(loaded))) or 'none'}")
            return loaded[version]

    def status(self, name: str) -> list[VersionStatus]:
        """Every version ever seen of a model, newest first: AVAILABLE, or END once unloaded
        (also after the model left the config) or after failing to load (with the error).

        Raises:
            ServingError: NOT_FOUND when no version of that name was ever seen, as TensorFlow Serving answers.
        """
        with self._lock:
            loaded = self._loaded.get(name, {})
            rows = [VersionStatus(v, "AVAILABLE") for v in loaded]
            rows += [row for v, row in self._failed.get(name, {}).items() if v not in loaded]
            rows += [VersionStatus(v, "END") for v in self._unloaded.get(name, set())
                     if v not in loaded and v not in self._failed.get(name, {})]
        if not rows:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {name}")
        return sorted(rows, key=lambda row: -row.version)

    def available_versions(self, name: str) -> list[int]:
        """The versions of a model that serve now, ascending."""
        with self._lock:
            return sorted(self._loaded.get(name, {}))

    def unavailable_labels(self) -> list[str]:
        """Labels that point at a version not loaded now, each described in words.

        TensorFlow Serving refuses such labels (FAILED_PRECONDITION) unless it
        runs with --allow_version_labels_for_unavailable_models.
        """
        with self._lock:
            return [f"label {label!r} of model {name!r} points at version {version}, which is not available "
                    f"(loaded: {', '.join(map(str, sorted(self._loaded.get(name, {})))) or 'none'})"
                    for name, config in sorted(self._configs.items())
                    for label, version in sorted(config.version_labels.items())
                    if version not in self._loaded.get(name, {})]

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._configs)


def status_response(models: ModelManager, name: str, version: Optional[int] = None
                    ) -> get_model_status_pb2.GetModelStatusResponse:
    """GetModelStatus's answer (gRPC and REST): every version seen, newest first, or one version.

    Raises:
        ServingError: NOT_FOUND for a model or version never seen (`get_model_status_impl.cc`).
    """
    rows = models.status(name)
    if version is not None:
        rows = [row for row in rows if row.version == version]
        if not rows:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find version {version} of model {name}")
    response = get_model_status_pb2.GetModelStatusResponse()
    for row in rows:
        status = response.model_version_status.add(
            version=row.version, state=get_model_status_pb2.ModelVersionStatus.State.Value(row.state))
        status.status.error_code = row.code.value[0]
        status.status.error_message = row.message
    return response
