"""Versioned, atomic SavedModel export in TensorFlow Serving's layout.

TensorFlow Serving watches `saved_models/<name>/` and serves the numbered
subdirectories `1/`, `2/`, ... A version directory must appear complete or not
at all, so every export is written into a hidden temporary directory next to
the versions (a name TensorFlow Serving ignores, since it is not a number)
and renamed into place; a failed export leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from model.config import InvalidSetting

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
METADATA_FILE = Path("assets") / "metadata.json"


def check_export_base(base_dir: str | os.PathLike) -> Path:
    """Fail fast, before any training, if exports could not be written there.

    Args:
        base_dir: The model's directory, `saved_models/<name>`. An existing
            model directory is fine: the export adds the next version.

    Returns:
        The directory as a Path.

    Raises:
        InvalidSetting: If the path is a file, or it (or its nearest existing
            parent) is not a writable directory.
    """
    base = Path(base_dir)
    if base.exists() and not base.is_dir():
        raise InvalidSetting(f"{{output}} {base} is a file; pass a directory such as saved_models/NAME")
    existing = base
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InvalidSetting(f"{{output}} {base}: {existing} is a file, not a directory; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InvalidSetting(f"{{output}} {base}: directory {existing} is not writable; choose a writable path")
    return base


def version_numbers(base_dir: Path) -> list[int]:
    """The complete version numbers under a model directory, ascending."""
    if not base_dir.is_dir():
        return []
    return sorted(int(p.name) for p in base_dir.iterdir() if p.is_dir() and p.name.isdigit())


def remove_abandoned_staging(base: Path) -> list[Path]:
    """Remove staging directories whose exporter died (kill -9, power loss) on this machine.

    A staging directory is named `.export-<pid>-...` after the process writing
    it; one whose process no longer runs will never be renamed into place.

    Returns:
        The directories removed.
    """
    removed = []
    for path in base.glob(".export-*"):
        pid = path.name.split("-")[1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)  # signal 0: does the process exist?
            continue
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        except PermissionError:  # it exists, as another user
            continue
    return removed


def export_new_version(base_dir: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Write a new version of a model, atomically.

    Args:
        base_dir: `saved_models/<name>`; created if missing.
        write: Writes the complete SavedModel (and any extras) into the
            directory it is given.

    Returns:
        The new version's directory, `<base_dir>/<max existing version + 1>`.
    """
    base = check_export_base(base_dir)
    base.mkdir(parents=True, exist_ok=True)
    remove_abandoned_staging(base)
    staging = Path(tempfile.mkdtemp(prefix=f".export-{os.getpid()}-", dir=base))
    try:
        write(staging)
        os.chmod(staging, 0o755)  # mkdtemp makes it 0700: a server running as another user could not read it
        while True:  # Another exporter may take the same number: retry with the next.
            target = base / str(max(version_numbers(base), default=0) + 1)
            try:
                os.rename(staging, target)
                return target
            except OSError:
                if not target.exists():
                    raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def save_signatures(directory: Path, signatures: Mapping[str, Any], resources: Iterable[Any] = ()) -> None:
    """Save signature functions so that every SavedModel loader can run them.

    Keras 3 wraps each weight in a `keras.Variable` that holds a `tf.Variable`.
    Saving an object that reaches the weights through Keras layers writes
    two variables per weight: the `tf.Variable` the functions read (which no
    checkpoint entry restores) and a copy made for the `keras.Variable` (which
    the checkpoint restores, but no function reads). Python's object-based
    `tf.saved_model.load` rewires the functions onto the copy; the
    session-based loader that TensorFlow Serving, Java, Go and the C API use
    restores the copy and runs the functions on uninitialised variables
    ("Could not find variable ..."). So the saved root tracks exactly the
    `tf.Variable`s the traced functions capture, and no Keras object, as
    Keras's own `ExportArchive` does: one variable per weight, restored by
    every loader, and nothing the signatures do not use (no optimizer state).

    Args:
        directory: Where to write the SavedModel.
        signatures: Signature key -> `tf.function` with an input signature.
        resources: Other trackables the functions use, such as lookup
            tables (their initialisers go into the SavedModel's init op).
    """
    import tensorflow as tf

    concrete = {key: function.get_concrete_function() for key, function in signatures.items()}
    variables: dict[int, tf.Variable] = {}
    for function in concrete.values():
        for variable in function.variables:
            variables.setdefault(id(variable), variable)
    root = tf.Module()
    root.variables_used = list(variables.values())
    root.resources = list(resources)
    tf.saved_model.save(root, str(directory), signatures=concrete)


def facts_per_row(facts: Mapping[str, Any], rows: Any) -> dict[str, Any]:
    """The model's facts repeated once per row, for the `metadata` signature (call in-graph).

    TensorFlow Serving's batching splits every output along its first
    dimension, so a fact `[...]` is answered as `[rows, ...]`.
    """
    import tensorflow as tf

    return {key: tf.repeat(value[None], rows, axis=0) for key, value in facts.items()}


def write_metadata(saved_model_dir: Path, metadata: Mapping[str, Any]) -> None:
    """Write `assets/metadata.json`: what another app needs to use the model."""
    path = saved_model_dir / METADATA_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metadata, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_warmup_requests(saved_model_dir: Path, model_name: str,
                          requests: Iterable[tuple[str, Mapping[str, np.ndarray]]]) -> None:
    """Write TensorFlow Serving's warmup file, `assets.extra/tf_serving_warmup_requests`.

    TensorFlow Serving replays these PredictionLog records when it loads a
    version, so the first real request does not pay for graph initialisation.

    Args:
        saved_model_dir: The version directory being written.
        model_name: The name the model is served under.
        requests: (signature name, {input name: array}) pairs.
    """
    # Imported here so that the CLIs can check --output before loading TensorFlow.
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    path = saved_model_dir / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature_name, inputs in requests:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature_name))
            for input_name, value in inputs.items():
                request.inputs[input_name].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
