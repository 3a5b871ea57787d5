"""A SavedModel version loaded the way TensorFlow Serving loads it.

TensorFlow Serving (like Java, Go and C programs) does not use Python's
object-based `tf.saved_model.load`: it imports the MetaGraph into a Session,
runs the restore op with the variables' checkpoint, runs the init op (tables,
assets), and answers each request with `Session.run` on the tensors a
SignatureDef names (`tensorflow/cc/saved_model/loader.cc`). A SavedModel that
works with one loader can fail with the other, so this server loads exactly
that way, and so refuses what TensorFlow Serving would refuse.

After loading, TensorFlow Serving replays the version's warmup file,
`assets.extra/tf_serving_warmup_requests` (TFRecord of PredictionLog), and
the version becomes AVAILABLE only if every record succeeds
(`tensorflow_serving/servables/tensorflow/saved_model_warmup_util.cc`):
`replay_warmup` does the same.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2
from tensorflow.python.saved_model import loader_impl  # the steps of tf.compat.v1.saved_model.loader.load
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
VARIABLES_INDEX = Path("variables") / "variables.index"
MAX_WARMUP_RECORDS = 1000  # WarmupConsts::kMaxNumRecords
SERVE_TAG = "serve"
DEFAULT_SIGNATURE = "serving_default"  # what a request that names no signature runs (kDefaultServingSignatureDefKey)


class WarmupError(Exception):
    """A warmup record failed: the version must not become AVAILABLE.

    Attributes:
        code: The gRPC code of the failure (GetModelStatus reports it).
    """

    def __init__(self, message: str, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT):
        super().__init__(message)
        self.code = code


_CODES = {code.value[0]: code for code in grpc.StatusCode}  # TensorFlow's error codes are gRPC's


def status_code(error: BaseException) -> grpc.StatusCode:
    """The status code of an error: its own (`code`), TensorFlow's, or UNKNOWN."""
    code = getattr(error, "code", None)
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(error, tf.errors.OpError):
        return _CODES.get(error.error_code, grpc.StatusCode.UNKNOWN)
    return grpc.StatusCode.UNKNOWN


def signature_key(name: str) -> str:
    """The signature a request names: its `signature_name`, or `DEFAULT_SIGNATURE` when that is empty."""
    return name or DEFAULT_SIGNATURE


def tensor_spec(info: meta_graph_pb2.TensorInfo) -> tf.TensorSpec:
    """The shape and dtype a SignatureDef declares for one tensor."""
    return tf.TensorSpec(tf.TensorShape(info.tensor_shape), tf.dtypes.as_dtype(info.dtype))


class Signature:
    """One SignatureDef of a loaded version, run with `Session.run`.

    Attributes:
        key: The signature's name, e.g. `serving_default`.
        inputs: Input name -> the declared shape and dtype.
        outputs: Output name -> the declared shape and dtype.
    """

    def __init__(self, key: str, definition: meta_graph_pb2.SignatureDef, session: tf.compat.v1.Session):
        self.key = key
        self.definition = definition
        self.inputs = {name: tensor_spec(info) for name, info in definition.inputs.items()}
        self.outputs = {name: tensor_spec(info) for name, info in definition.outputs.items()}
        self._session = session
        self._feeds = sorted(definition.inputs)
        self._callables: dict[tuple[str, ...], Callable] = {}
        self._lock = threading.Lock()

    def _callable(self, outputs: tuple[str, ...]) -> Callable:
        """A Session callable per set of fetched outputs, built once.

        TensorFlow Serving runs a signature with `Session::Run` on tensor names;
        the Python equivalent without per-call overhead is a callable made
        from `CallableOptions` (TensorFlow's own Keras backend made them so):
        `Session.make_callable` with feeds only wraps `Session.run`, which
        re-parses the feeds and fetches on every call (about 2 ms a request
        for the LSTM-256 model, measured). Feeds must be of the declared
        dtypes, which the request decoders guarantee.
        """
        with self._lock:
            if outputs not in self._callables:
                options = config_pb2.CallableOptions()
                options.feed.extend(self.definition.inputs[name].name for name in self._feeds)
                options.fetch.extend(self.definition.outputs[name].name for name in outputs)
                self._callables[outputs] = self._session._make_callable_from_options(options)
            return self._callables[outputs]

    def run(self, arrays: dict[str, np.ndarray], outputs: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
        """Feed the inputs, fetch the outputs (all of them when `outputs` is None).

        Raises:
            tf.errors.OpError: As `Session.run` raises it (an assertion in the graph is InvalidArgumentError).
        """
        names = tuple(outputs) if outputs else tuple(sorted(self.outputs))
        values = self._callable(names)(*[arrays[name] for name in self._feeds])
        return {name: np.asarray(value) for name, value in zip(names, values)}


@dataclasses.dataclass
class SavedModelBundle:
    """A loaded SavedModel: its Session, MetaGraph and signatures (TensorFlow Serving's SavedModelBundle).

    Attributes:
        path: The version directory.
        session: The Session holding the restored variables.
        meta_graph: The MetaGraphDef tagged `serve`.
        signatures: Signature key -> `Signature`, every SignatureDef but the init op.
    """

    path: Path
    session: tf.compat.v1.Session
    meta_graph: meta_graph_pb2.MetaGraphDef
    signatures: dict[str, Signature]

    def close(self) -> None:
        self.session.close()


def load_bundle(path: Path, session_config: Optional[config_pb2.ConfigProto] = None) -> SavedModelBundle:
    """Load a SavedModel as TensorFlow Serving does: a new graph and Session, restore op, init op.

    The steps of `tensorflow/cc/saved_model/loader.cc` (LoadSavedModel): import
    the MetaGraph tagged `serve`; run its restore op on `variables/variables`,
    or, when the SavedModel has no variables index, restore nothing (as the
    C++ loader does; Python's loader would raise); run the init op.

    Args:
        path: The version directory.
        session_config: Threads and other Session options.

    Raises:
        Whatever the loader raises (a missing or unreadable saved_model.pb, a
        truncated checkpoint, an op this TensorFlow lacks).
    """
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph, config=session_config)
    try:
        loader = loader_impl.SavedModelLoader(str(path))
        with graph.as_default():
            saver, _ = loader.load_graph(graph, [SERVE_TAG])
            if saver is not None and (path / VARIABLES_INDEX).is_file():
                loader.restore_variables(session, saver)
            loader.run_init_ops(session, [SERVE_TAG])
        meta_graph = loader.get_meta_graph_def_from_tags([SERVE_TAG])
    except BaseException:
        session.close()
        raise
    signatures = {key: Signature(key, definition, session)
                  for key, definition in meta_graph.signature_def.items() if not key.startswith("__")}
    graph.finalize()  # requests only run what was loaded: nothing may add ops to the graph
    return SavedModelBundle(path, session, meta_graph, signatures)


def error_message(error: BaseException) -> str:
    """One line saying what went wrong: for a graph error, the model's own message, not TensorFlow's summary."""
    text = error.message if isinstance(error, tf.errors.OpError) else str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    skip = ("Graph execution error", "Detected at node", "<stack traces unavailable>", "[[")
    useful = [line for line in lines if not line.startswith(skip)]
    line = useful[0] if useful else lines[0] if lines else type(error).__name__
    return line.removeprefix("assertion failed: [").rstrip("]")


def warmup_requests(version_dir: Path) -> Iterator[prediction_log_pb2.PredictionLog]:
    """The PredictionLog records of a version's warmup file (none when it has no file).

    Raises:
        WarmupError: A record that is not a PredictionLog, a file that is not
            TFRecord, or more than `MAX_WARMUP_RECORDS` records.
    """
    path = version_dir / WARMUP_FILE
    if not path.is_file():
        return
    count = 0
    try:
        for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
            count += 1
            if count > MAX_WARMUP_RECORDS:
                raise WarmupError(f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}")
            log = prediction_log_pb2.PredictionLog()
            try:
                log.ParseFromString(record)
            except Exception:  # noqa: BLE001 - protobuf's DecodeError
                raise WarmupError(f"Failed to parse warmup record {count} from {path}") from None
            yield log
    except tf.errors.DataLossError as error:
        raise WarmupError(f"{error.message}. Please verify your warmup data is in TFRecord format.",
                          grpc.StatusCode.DATA_LOSS) from None


def replay_warmup(version_dir: Path, predict: Callable[[predict_pb2.PredictRequest], object]) -> int:
    """Run every warmup record through `predict`, as TensorFlow Serving does before a version serves.

    Args:
        version_dir: The version directory.
        predict: Answers one PredictRequest for this version (raises on failure).

    Returns:
        The number of records replayed.

    Raises:
        WarmupError: The first record that failed, with its error.
    """
    count = 0
    for log in warmup_requests(version_dir):
        kind = log.WhichOneof("log_type")
        if kind != "predict_log":  # the exports write Predict records only, and this server serves Predict
            raise WarmupError(f"warmup record {count + 1}: unsupported log_type {kind!r} (this server "
                              "replays predict_log records)", grpc.StatusCode.UNIMPLEMENTED)
        try:
            predict(log.predict_log.request)
        except Exception as error:  # noqa: BLE001 - any failure refuses the version
            signature = signature_key(log.predict_log.request.model_spec.signature_name)
            raise WarmupError(f"warmup record {count + 1} (signature {signature!r}) failed: "
                              f"{error_message(error)}", status_code(error)) from None
        count += 1
    return count
