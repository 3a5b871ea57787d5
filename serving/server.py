"""An embedded model server that speaks TensorFlow Serving's gRPC API.

    python -m serving.server --model_config_file serving/models.config --port 8500

The real `tensorflow_model_server` ships as a Docker image or an apt package,
not on PyPI; this server answers the same `tensorflow.serving.PredictionService`
and `ModelService` calls, built on the official protos of tensorflow-serving-api,
so one client works against both. Flags are named as TensorFlow Serving names
them. It reads SavedModels and configs only.

Versions are loaded as TensorFlow Serving loads them: the session-based
loader (restore op, init op), then the warmup file replayed; a version whose
warmup fails never serves (`serving.saved_model_bundle`). With
`--enable_batching`, every Predict obeys BatchingSession's rules and codes.

Implemented: Predict (model_spec name, version or version_label,
signature_name; inputs as TensorProto; output_filter), GetModelMetadata
(signature_def), GetModelStatus, HandleReloadConfigRequest; Classify, Regress
and MultiInference answer UNIMPLEMENTED. Errors carry TensorFlow Serving's
codes: NOT_FOUND for an unknown model, version, label or signature,
INVALID_ARGUMENT for a missing or unknown input, a wrong dtype or shape, or
a value the model refuses, each with a message naming the input.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import signal
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from google.protobuf import wrappers_pb2  # noqa: E402
from tensorflow.core.protobuf import config_pb2  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    get_model_metadata_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import config as tfs_config  # noqa: E402
from serving import tensors  # noqa: E402
from serving.batching import BatchingOptions, BatchScheduler, QueueFull  # noqa: E402
from serving.metrics import ServingMetrics  # noqa: E402
from serving.models import (  # noqa: E402
    LoadedVersion,
    ModelManager,
    ServingError,
    check_tf_example_signature,
    load_version,
    signature_def_map,
    status_response,
)
from serving.rest import RestServer  # noqa: E402
from serving.saved_model_bundle import WARMUP_FILE, Signature, error_message, replay_warmup, status_code  # noqa: E402

log = logging.getLogger("serving")
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def check_names(names, signature, signature_name: str) -> None:
    """Every input the signature takes, and no other.

    Raises:
        ServingError: INVALID_ARGUMENT naming the first missing or unknown input and listing the inputs.
    """
    specs = signature.inputs
    missing = sorted(set(specs) - set(names))
    unknown = sorted(set(names) - set(specs))
    if missing or unknown:
        expected = ", ".join(f"{name} ({spec.dtype.name} {spec.shape.as_list()})"
                             for name, spec in sorted(specs.items()))
        problem = f"unknown input {unknown[0]!r}" if unknown else f"missing input {missing[0]!r}"
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"{problem} for signature {signature_name!r}; it takes: {expected}")


def check_inputs(arrays: dict[str, np.ndarray], signature, signature_name: str) -> dict[str, np.ndarray]:
    """Inputs checked against the signature: names and shapes (dtypes are the decoder's job).

    Raises:
        ServingError: INVALID_ARGUMENT naming the input and what it should be.
    """
    check_names(arrays, signature, signature_name)
    for name, spec in signature.inputs.items():
        if not spec.shape.is_compatible_with(arrays[name].shape):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {name!r} must have shape {spec.shape.as_list()} (None: any size), "
                               f"got {list(arrays[name].shape)}")
    return arrays


@dataclasses.dataclass(frozen=True)
class RequestLimits:
    """What one Predict request may ask for (TensorFlow Serving bounds only the message size).

    Attributes:
        max_rows: Rows (leading batch dimension) per input; 0, the default, sets no limit (TensorFlow
            Serving has none: a 300-row request is ordinary).
        max_elements: Elements in all inputs together, checked on the declared shapes before anything
            is allocated.
        max_string_bytes: Bytes of all strings together once decoded (a TensorProto repeats its last
            string to fill its shape: one long string could otherwise become gigabytes).
    """

    max_rows: int = 0
    max_elements: int = 4 * 1024 * 1024
    max_string_bytes: int = MAX_MESSAGE_BYTES

    def check_rows(self, arrays: dict[str, np.ndarray]) -> None:
        for name, array in arrays.items():
            if self.max_rows and array.ndim and len(array) > self.max_rows:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"input {name!r} holds {len(array)} rows, over the limit of {self.max_rows} "
                                   "per request; split it into several requests")


def _proto_dtype(name: str, proto) -> Optional[tf.dtypes.DType]:
    if not proto.dtype:
        return None
    try:
        return tf.dtypes.as_dtype(proto.dtype)
    except TypeError:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"input {name!r} has an unknown dtype enum {proto.dtype}") from None


def _declared_dims(name: str, proto) -> list[int]:
    dims = [dim.size for dim in proto.tensor_shape.dim]
    if any(size < 0 for size in dims) or proto.tensor_shape.unknown_rank:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"input {name!r} has a shape with unknown or negative sizes: {dims}")
    return dims


def _string_bytes(proto, elements: int) -> int:
    """Bytes of a string tensor once decoded, its last string repeated to fill the shape as TensorFlow does."""
    values = proto.string_val
    return sum(map(len, values)) + max(0, elements - len(values)) * (len(values[-1]) if values else 0)


def decode_tensor_protos(request_inputs, signature, limits: RequestLimits = RequestLimits(),
                         signature_name: str = "serving_default") -> dict[str, np.ndarray]:
    """gRPC TensorProtos to arrays, each of the dtype its signature input declares.

    Names, dtypes and declared sizes are all checked before anything is
    decoded: a proto can claim a huge shape in a few bytes, and decoding it
    would allocate that much.
    """
    specs = signature.inputs
    check_names(request_inputs, signature, signature_name)
    elements = string_bytes = 0
    for name, proto in request_inputs.items():
        dtype = _proto_dtype(name, proto)
        if dtype != specs[name].dtype:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"input {name!r} must be "
                               f"{specs[name].dtype.name}, got {dtype.name if dtype else 'no dtype'}")
        dims = _declared_dims(name, proto)
        elements += math.prod(dims)
        if elements > limits.max_elements:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {name!r} of shape {dims} brings the request to {elements:,} elements, over "
                               f"the limit of {limits.max_elements:,} per request")
        if dtype == tf.string:
            string_bytes += _string_bytes(proto, math.prod(dims))
            if string_bytes > limits.max_string_bytes:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"input {name!r} brings the request to {string_bytes:,} bytes of strings once "
                                   f"decoded, over the limit of {limits.max_string_bytes:,}")
    arrays = {}
    for name, proto in request_inputs.items():
        try:
            arrays[name] = tensors.to_array(proto)
        except Exception as error:  # noqa: BLE001 - a malformed TensorProto
            detail = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {name!r} is not a valid tensor: {detail}") from None
    return arrays


def check_batchable_inputs(inputs: dict[str, np.ndarray]) -> int:
    """BatchingSession's rules for a request's inputs (`batching_util.h`, ComputeTensorBatchSize).

    Returns:
        The request's rows (the inputs' common first dimension).

    Raises:
        ServingError: INVALID_ARGUMENT, as TensorFlow Serving answers with batching on.
    """
    if not inputs:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Batching Run() must have at least one input tensor "
                           "(with --enable_batching every signature needs an input with a batch dimension)")
    if any(array.ndim == 0 for array in inputs.values()):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Batching Run() input tensors must have at least one "
                           f"dimension; got shapes {({k: list(v.shape) for k, v in inputs.items()})}")
    sizes = {len(array) for array in inputs.values()}
    if len(sizes) > 1:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Batching Run() input tensors must have equal "
                           f"0th-dimension size; got shapes {({k: list(v.shape) for k, v in inputs.items()})}")
    return sizes.pop()


def check_batched_outputs(outputs: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """BatchingSession's rules for a batch's outputs (`batching_session.cc`, SplitOutputTensors).

    Raises:
        ServingError: FAILED_PRECONDITION for an output without a batch dimension of `rows`.
    """
    for name, array in outputs.items():
        if array.ndim == 0:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"Batched output tensor has 0 dimensions (output {name!r})")
        if len(array) != rows:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                               "Batched output tensor's 0th dimension does not equal the sum of the 0th dimension "
                               f"sizes of the input tensors (output {name!r}: {len(array)} rows for {rows})")
    return outputs


def require_model_spec(request) -> None:
    """Every request names its model (predict_impl.cc and the other services: "Missing ModelSpec")."""
    if not request.HasField("model_spec"):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec: set model_spec.name")


def check_multi_inference(request, loaded: LoadedVersion) -> None:
    """What MultiInference checks (multi_inference.cc): one model, distinct signatures, classify/regress only.

    Raises:
        ServingError: TensorFlow Serving's code for the first check that fails; UNIMPLEMENTED past them.
    """
    seen = set()
    for task in request.tasks:  # the model names and signatures first, then the methods (as there)
        if not task.model_spec.name:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Found ModelSpec with an empty model name.")
        if task.model_spec.name != request.tasks[0].model_spec.name:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               "All ModelSpecs in a MultiInferenceRequest must access the same model name.")
        key = task.model_spec.signature_name or "serving_default"
        if key in seen:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"Duplicate evaluation of signature: {key}")
        seen.add(key)
        if key not in loaded.bundle.signatures:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"Requested signature not found in model graph: {key}")
    for key in seen:
        method = loaded.bundle.signatures[key].definition.method_name
        if method not in ("tensorflow/serving/classify", "tensorflow/serving/regress"):
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"Unsupported signature method_name: {method} "
                               f"(signature {key!r}; use Predict)")
    raise ServingError(grpc.StatusCode.UNIMPLEMENTED, "MultiInference over tf.Example inputs is not implemented by "
                       "this server; use Predict")


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """tensorflow.serving.PredictionService over a `ModelManager`."""

    def __init__(self, models: ModelManager, batching: Optional[BatchScheduler] = None,
                 metrics: Optional[ServingMetrics] = None, limits: RequestLimits = RequestLimits()):
        self.models = models
        self.batching = batching
        self.metrics = metrics
        self.limits = limits

    def _run(self, loaded: LoadedVersion, signature: Signature, inputs: dict[str, np.ndarray],
             outputs: Sequence[str]) -> dict[str, np.ndarray]:
        if self.batching is None:
            return signature.run(inputs, outputs)
        check_batchable_inputs(inputs)

        def run(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return check_batched_outputs(signature.run(arrays, outputs), len(next(iter(arrays.values()))))

        try:  # one queue per tensor signature (inputs and fetched outputs), as BatchingSession keys them
            return self.batching.run((loaded.name, loaded.version, signature.key, tuple(outputs)), run, inputs)
        except QueueFull as error:
            raise ServingError(grpc.StatusCode.UNAVAILABLE, str(error)) from None

    def _resolve(self, spec: model_pb2.ModelSpec) -> LoadedVersion:
        version = spec.version.value if spec.HasField("version") else None
        label = spec.version_label if spec.HasField("version_label") else None
        return self.models.resolve(spec.name, version, label)

    def predict_arrays(self, name: str, version: Optional[int], label: Optional[str], signature_name: str,
                       decode, output_filter: Sequence[str] = ()) -> tuple[LoadedVersion, str, dict[str, np.ndarray]]:
        """Predict for any transport: gRPC and REST differ only in how inputs are decoded.

        Args:
            name, version, label: Which model version (see `ModelManager.resolve`).
            signature_name: Empty for serving_default.
            decode: Called with the signature; returns the input arrays.
            output_filter: Outputs to return (empty: all).

        Returns:
            The version used, the signature name and the outputs.
        """
        if self.metrics is None:
            return self._predict_arrays(name, version, label, signature_name, decode, output_filter)
        with self.metrics.observe(name, signature_name or "serving_default") as outcome:
            try:
                return self._predict_arrays(name, version, label, signature_name, decode, output_filter)
            except ServingError as error:
                outcome["code"] = error.code.name
                raise
            except Exception:
                outcome["code"] = "INTERNAL"
                raise

    def _predict_arrays(self, name, version, label, signature_name, decode, output_filter):
        loaded = self.models.resolve(name, version, label)
        return self.predict_loaded(loaded, signature_name, decode, output_filter)

    def predict_loaded(self, loaded: LoadedVersion, signature_name: str, decode,
                       output_filter: Sequence[str] = ()) -> tuple[LoadedVersion, str, dict[str, np.ndarray]]:
        """Predict with a version already chosen (requests after `resolve`; warmup before it serves)."""
        signature_name = signature_name or "serving_default"
        signature = loaded.signature(signature_name)
        inputs = check_inputs(decode(signature), signature, signature_name)
        self.limits.check_rows(inputs)
        wanted = list(output_filter) or sorted(signature.outputs)
        unknown = [key for key in wanted if key not in signature.outputs]
        if unknown:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"output tensor alias not found in signature: "
                               f"{unknown[0]} (outputs: {', '.join(sorted(signature.outputs))})")
        repeated = [key for i, key in enumerate(wanted) if key in wanted[:i]]
        if repeated:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"duplicate output tensor alias: {repeated[0]}")
        try:
            start = time.perf_counter()
            outputs = self._run(loaded, signature, inputs, wanted)
            if self.metrics is not None:  # around Session::Run, as predict_util.cc records it
                self.metrics.tfs.observe("/tensorflow/serving/runtime_latency", (loaded.name, "Predict", "TF1"),
                                         (time.perf_counter() - start) * 1e6)
        except tf.errors.OpError as error:  # the graph's own checks: their code, as Session::Run returns it
            raise ServingError(status_code(error), error_message(error)) from None
        return loaded, signature_name, outputs

    def warm_up(self, loaded: LoadedVersion) -> int:
        """Replay the version's warmup requests through the Predict path (batching included).

        Returns:
            How many records ran.

        Raises:
            WarmupError: The first record that failed.
        """
        def predict(request: predict_pb2.PredictRequest):
            signature_name = request.model_spec.signature_name or "serving_default"
            return self.predict_loaded(
                loaded, signature_name,
                lambda signature: decode_tensor_protos(request.inputs, signature, self.limits, signature_name),
                request.output_filter)

        return replay_warmup(loaded.path, predict)

    def _answer(self, context, model_name: str, api: str, call):
        """Answer one Predict, Classify or Regress: its errors as gRPC codes, TensorFlow Serving's metrics around it."""
        code, start = grpc.StatusCode.OK, time.perf_counter()
        try:
            return call()
        except ServingError as error:
            code = error.code
            context.abort(error.code, error.message)
        except Exception as error:  # noqa: BLE001 - never crash the server on one request
            log.exception("%s failed", api)
            code = grpc.StatusCode.INTERNAL
            context.abort(code, f"{type(error).__name__}: {error}")
        finally:
            if self.metrics is not None:
                self.metrics.record_request(model_name, api, "GRPC", code.name, time.perf_counter() - start)

    def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:
        return self._answer(context, request.model_spec.name, "Predict", lambda: self._predict(request))

    def _predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        spec = request.model_spec
        require_model_spec(request)
        loaded, name, outputs = self.predict_arrays(
            spec.name, spec.version.value if spec.HasField("version") else None,
            spec.version_label if spec.HasField("version_label") else None, spec.signature_name,
            lambda signature: decode_tensor_protos(request.inputs, signature, self.limits,
                                                   spec.signature_name or "serving_default"),
            request.output_filter)
        response = predict_pb2.PredictResponse(model_spec=model_pb2.ModelSpec(
            name=loaded.name, version=wrappers_pb2.Int64Value(value=loaded.version), signature_name=name))
        for key, value in outputs.items():  # the typed fields, as TensorFlow Serving writes outputs
            response.outputs[key].CopyFrom(tensors.to_proto_field(value))
        return response

    def GetModelMetadata(self, request, context):
        try:  # the fields are checked before the model is looked up (get_model_metadata_impl.cc)
            require_model_spec(request)
            if not request.metadata_field:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "GetModelMetadataRequest must specify at "
                                   "least one metadata_field (the one supported: signature_def)")
            for field in request.metadata_field:
                if field != "signature_def":
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"Metadata field {field} is not supported "
                                       "(the one supported: signature_def)")
            loaded = self._resolve(request.model_spec)
            response = get_model_metadata_pb2.GetModelMetadataResponse(model_spec=loaded.model_spec())
            response.metadata["signature_def"].Pack(signature_def_map(loaded))
            return response
        except ServingError as error:
            context.abort(error.code, error.message)

    def _tf_example(self, request, kind: str) -> None:
        require_model_spec(request)
        check_tf_example_signature(self._resolve(request.model_spec), request.model_spec.signature_name, kind)

    def Classify(self, request, context):
        return self._answer(context, request.model_spec.name, "Classify",
                            lambda: self._tf_example(request, "classification"))

    def Regress(self, request, context):
        return self._answer(context, request.model_spec.name, "Regress",
                            lambda: self._tf_example(request, "regression"))

    def MultiInference(self, request, context):
        try:
            check_multi_inference(request, self._resolve(request.tasks[0].model_spec if request.tasks
                                                         else model_pb2.ModelSpec()))
        except ServingError as error:
            context.abort(error.code, error.message)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """tensorflow.serving.ModelService: version status and config reloads."""

    def __init__(self, models: ModelManager, allowed_roots: Sequence[Path] = (),
                 allow_labels_for_unavailable: bool = False):
        self.models = models
        self.allowed_roots = list(allowed_roots)
        self.allow_labels_for_unavailable = allow_labels_for_unavailable

    def GetModelStatus(self, request, context):
        """Every version ever seen, newest first; a version label is ignored, as TensorFlow Serving ignores it."""
        try:
            require_model_spec(request)
            spec = request.model_spec
            return status_response(self.models, spec.name, spec.version.value if spec.HasField("version") else None)
        except ServingError as error:
            context.abort(error.code, error.message)

    def HandleReloadConfigRequest(self, request, context):
        """A reload that fails fails the call itself, with the code and message (model_service_impl.cc)."""
        try:
            try:
                tfs_config.validate_model_config(request.config, "reload request")
                # Anyone who reaches the port can send a reload: it may not point the server at arbitrary files.
                tfs_config.check_base_paths_within(request.config, self.allowed_roots, "reload request")
            except tfs_config.ConfigError as error:  # the served models stay as they were
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from None
            try:
                self.models.set_config(request.config)
            except Exception as error:  # noqa: BLE001
                log.exception("applying a new model config failed")
                raise ServingError(grpc.StatusCode.INTERNAL,
                                   f"the new config is in place, but applying it failed: {error}") from None
            unavailable = [] if self.allow_labels_for_unavailable else self.models.unavailable_labels()
            if unavailable:  # the models are reloaded, the label cannot serve
                raise ServingError(grpc.StatusCode.FAILED_PRECONDITION, f"{unavailable[0]}; requests by that label "
                                   "get NOT_FOUND until it loads (--allow_version_labels_for_unavailable_models "
                                   "accepts this)")
        except ServingError as error:
            context.abort(error.code, error.message)
        return model_management_pb2.ReloadConfigResponse()


class Server:
    """The gRPC server, its model manager and its pollers.

    Args:
        model_config_file: Path of models.config.
        host, port: Where to listen (port 0 picks a free one).
        file_system_poll_wait_seconds: How often base paths are scanned for new versions (0: never).
        model_config_file_poll_wait_seconds: How often models.config is re-read (0: never).
        max_workers: Size of the request thread pool.
        batching: Dynamic batching options (None: every request runs on its own).
        rest_api_port: REST port (0: no REST API).
        monitoring: MonitoringConfig (Prometheus metrics on the REST port).
        limits: Rows and elements a request may hold.
        allowed_model_roots: Directories a reload request may point base paths into, besides
            those holding the base paths of `model_config_file`.
        allow_version_labels_for_unavailable_models: Accept labels naming a version not loaded
            (otherwise a reload answers FAILED_PRECONDITION, as TensorFlow Serving does).
        session_config: The Sessions' options (thread pools), as --tensorflow_*_parallelism set them.
    """

    def __init__(self, model_config_file: str, host: str = "127.0.0.1", port: int = 8500,
                 file_system_poll_wait_seconds: float = 1.0, model_config_file_poll_wait_seconds: float = 0.0,
                 max_workers: int = 16, batching: Optional[BatchingOptions] = None, rest_api_port: int = 0,
                 monitoring=None, limits: RequestLimits = RequestLimits(),
                 allowed_model_roots: Sequence[str] = (), allow_version_labels_for_unavailable_models: bool = False,
                 session_config: Optional[config_pb2.ConfigProto] = None):
        self.config_path = Path(model_config_file)
        config = tfs_config.read_model_config(self.config_path)
        self.grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0)])  # a second server on the same port must fail, not share it
        try:  # bind first: a port in use is reported before any model is loaded
            self.port = self.grpc.add_insecure_port(f"{host}:{port}")
        except RuntimeError as error:
            raise OSError(f"cannot listen on {host}:{port}: {error}; pick another --port") from None
        if self.port == 0:
            raise OSError(f"cannot listen on {host}:{port}; pick another --port")
        self.host = host
        scheduler = BatchScheduler(batching) if batching else None
        prometheus = monitoring.prometheus_config if monitoring is not None else None
        self.metrics = ServingMetrics() if prometheus is not None and prometheus.enable else None
        # Warmup runs through the Predict path, so the service exists before any version loads.
        self.predictions = PredictionService(None, scheduler, self.metrics, limits)
        self._session_config = session_config
        self.models = ModelManager(config, load=self._load_and_warm_up)
        self.predictions.models = self.models
        self._stop = threading.Event()
        self._polls = [(file_system_poll_wait_seconds, self.models.refresh),
                       (model_config_file_poll_wait_seconds, self._reload_config)]
        roots = tfs_config.model_roots(config) + [Path(root) for root in allowed_model_roots]
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(self.predictions, self.grpc)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelService(self.models, roots, allow_version_labels_for_unavailable_models), self.grpc)
        for problem in ([] if allow_version_labels_for_unavailable_models else self.models.unavailable_labels()):
            log.warning("%s: requests by that label get NOT_FOUND until it loads", problem)
        metrics_path = (prometheus.path or "/monitoring/prometheus/metrics") if self.metrics else None
        self.rest = (RestServer(self.predictions, self.models, host, rest_api_port, self.metrics, metrics_path)
                     if rest_api_port else None)

    def _load_and_warm_up(self, name: str, version: int, path: Path) -> LoadedVersion:
        """Load a version as TensorFlow Serving does; it may serve only once its warmup requests succeed."""
        loaded = load_version(name, version, path, self._session_config)
        start, status = time.perf_counter(), "OK"
        try:
            count = self.predictions.warm_up(loaded)
        except BaseException as error:
            status = f"{status_code(error).name}: {error}"
            loaded.bundle.close()
            raise
        finally:
            if self.metrics is not None and (path / WARMUP_FILE).is_file():
                self.metrics.tfs.observe("/tensorflow/serving/model_warmup_latency", (str(path), status),
                                         (time.perf_counter() - start) * 1e6)
        if count:
            log.info("model %s version %d: %d warmup requests replayed", name, version, count)
        return loaded

    def _reload_config(self) -> None:
        try:
            self.models.set_config(tfs_config.read_model_config(self.config_path))
        except tfs_config.ConfigError as error:
            log.warning("keeping the previous model config: %s", error)

    def _poll(self, seconds: float, action) -> None:
        while not self._stop.wait(seconds):
            try:
                action()
            except Exception:  # noqa: BLE001 - a poll failure must not stop the server
                log.exception("poll failed")

    def start(self) -> "Server":
        self.grpc.start()
        if self.rest:
            self.rest.start()
        for seconds, action in self._polls:
            if seconds > 0:
                threading.Thread(target=self._poll, args=(seconds, action), daemon=True).start()
        return self

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting requests; let those in flight finish (up to `grace` seconds)."""
        self._stop.set()
        if self.rest:
            self.rest.stop()
        self.grpc.stop(grace).wait()


def _flag(value: str) -> bool:
    """TensorFlow Serving's boolean flags: --flag, --flag=true, --flag=false."""
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serving.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_config_file", default="serving/models.config")
    parser.add_argument("--port", type=int, default=8500, help="gRPC port (0: any free port)")
    parser.add_argument("--rest_api_port", type=int, default=0, help="REST port (0: no REST API)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind, gRPC and REST (default loopback only; 0.0.0.0: every interface)")
    parser.add_argument("--allowed_model_root", action="append", default=[],
                        help="a directory reload requests may point base paths into (repeatable); the "
                             "directories holding models.config's base paths are always allowed")
    parser.add_argument("--allow_version_labels_for_unavailable_models", nargs="?", const=True, default=False,
                        type=_flag, help="accept version labels naming a version that is not loaded")
    parser.add_argument("--max_request_rows", type=int, default=RequestLimits.max_rows,
                        help="rows (batch size) one request may send per input (0, the default: no limit)")
    parser.add_argument("--max_request_elements", type=int, default=RequestLimits.max_elements,
                        help="elements one request may send, all inputs together")
    parser.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0)
    parser.add_argument("--model_config_file_poll_wait_seconds", type=float, default=0.0)
    parser.add_argument("--max_workers", type=int, default=16)
    parser.add_argument("--monitoring_config_file", default=None,
                        help="MonitoringConfig text proto: Prometheus metrics on the REST port")
    parser.add_argument("--tensorflow_intra_op_parallelism", type=int, default=0,
                        help="threads per TensorFlow op (0: TensorFlow's choice)")
    parser.add_argument("--tensorflow_inter_op_parallelism", type=int, default=0,
                        help="TensorFlow ops run at once (0: TensorFlow's choice)")
    parser.add_argument("--enable_batching", nargs="?", const=True, default=False, type=_flag,
                        help="merge concurrent requests into one model call (also --enable_batching=true)")
    parser.add_argument("--batching_parameters_file", default=None,
                        help="BatchingParameters text proto (default: serving/batching.config's defaults)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("tensorflow").setLevel(logging.WARNING)  # the loader's "Restoring parameters" lines
    # Before any model loads: TensorFlow fixes its thread pools on first use.
    tf.config.threading.set_intra_op_parallelism_threads(args.tensorflow_intra_op_parallelism)
    tf.config.threading.set_inter_op_parallelism_threads(args.tensorflow_inter_op_parallelism)
    try:
        batching = None
        if args.enable_batching:
            batching = BatchingOptions()
            if args.batching_parameters_file:
                batching = BatchingOptions.from_proto(tfs_config.read_batching_parameters(args.batching_parameters_file))
        monitoring = (tfs_config.read_monitoring_config(args.monitoring_config_file)
                      if args.monitoring_config_file else None)
        server = Server(args.model_config_file, args.host, args.port, args.file_system_poll_wait_seconds,
                        args.model_config_file_poll_wait_seconds, args.max_workers, batching,
                        args.rest_api_port, monitoring,
                        RequestLimits(args.max_request_rows, args.max_request_elements),
                        args.allowed_model_root, args.allow_version_labels_for_unavailable_models,
                        config_pb2.ConfigProto(intra_op_parallelism_threads=args.tensorflow_intra_op_parallelism,
                                               inter_op_parallelism_threads=args.tensorflow_inter_op_parallelism)
                        ).start()
    except (tfs_config.ConfigError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    loaded = {name: server.models.available_versions(name) for name in server.models.names()}
    rest = f" (REST on port {server.rest.port})" if server.rest else ""
    print(f"serving on {server.host}:{server.port}{rest}: " +
          ", ".join(f"{name} {versions or 'no version yet'}" for name, versions in loaded.items()), flush=True)
    stopped.wait()
    server.stop()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
