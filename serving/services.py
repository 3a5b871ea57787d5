"""The gRPC servicers: tensorflow.serving.PredictionService and ModelService, thin over the server's parts.

Each call unpacks its request once (`ModelQuery.from_spec`), hands the work
to `serving.prediction.Predictor` or the `ModelManager`, and writes the answer
or aborts with TensorFlow Serving's code and message.

Implemented: Predict (model_spec name, version or version_label,
signature_name; inputs as TensorProto; output_filter), GetModelMetadata
(signature_def), GetModelStatus, HandleReloadConfigRequest; Classify, Regress
and MultiInference check what TensorFlow Serving checks, then answer
UNIMPLEMENTED.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional, Sequence

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import config as tfs_config
from serving import tensors
from serving.models import (
    LoadedVersion,
    ModelManager,
    ServingError,
    check_tf_example_signature,
    signature_def_map,
    status_response,
)
from serving.prediction import Predictor
from serving.process_group import ProcessGroup, forwarded
from serving.requests import ModelQuery, decode_tensor_protos, require_model_spec
from serving.saved_model_bundle import signature_key

log = logging.getLogger("serving")


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
        key = signature_key(task.model_spec.signature_name)
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
    """tensorflow.serving.PredictionService over a `Predictor`."""

    def __init__(self, predictions: Predictor):
        self.predictions = predictions

    def _answer(self, context, model_name: str, api: str, call):
        """Answer one Predict, Classify or Regress: its errors as gRPC codes, TensorFlow Serving's metrics around it."""
        metrics, code, start = self.predictions.metrics, grpc.StatusCode.OK, time.perf_counter()
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
            if metrics is not None:
                metrics.record_request(model_name, api, "GRPC", code.name, time.perf_counter() - start)

    def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:
        return self._answer(context, request.model_spec.name, "Predict", lambda: self._predict(request))

    def _predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        require_model_spec(request)
        query = ModelQuery.from_spec(request.model_spec)
        with self.predictions.observed(query):
            target = self.predictions.resolve(query)
            inputs = decode_tensor_protos(request.inputs, target.signature, self.predictions.limits)
            outputs = self.predictions.predict(target, inputs, request.output_filter)
        response = predict_pb2.PredictResponse(model_spec=target.loaded.model_spec())
        response.model_spec.signature_name = target.signature.key
        for key, value in outputs.items():  # the typed fields, as TensorFlow Serving writes outputs
            tensors.to_proto_field(value, into=response.outputs[key])
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
            loaded = self.predictions.version(ModelQuery.from_spec(request.model_spec))
            response = get_model_metadata_pb2.GetModelMetadataResponse(model_spec=loaded.model_spec())
            response.metadata["signature_def"].Pack(signature_def_map(loaded))
            return response
        except ServingError as error:
            context.abort(error.code, error.message)

    def _tf_example(self, request, kind: str) -> None:
        require_model_spec(request)
        query = ModelQuery.from_spec(request.model_spec)
        check_tf_example_signature(self.predictions.version(query), query.signature_name, kind)

    def Classify(self, request, context):
        return self._answer(context, request.model_spec.name, "Classify",
                            lambda: self._tf_example(request, "classification"))

    def Regress(self, request, context):
        return self._answer(context, request.model_spec.name, "Regress",
                            lambda: self._tf_example(request, "regression"))

    def MultiInference(self, request, context):
        try:
            spec = request.tasks[0].model_spec if request.tasks else model_pb2.ModelSpec()
            check_multi_inference(request, self.predictions.version(ModelQuery.from_spec(spec)))
        except ServingError as error:
            context.abort(error.code, error.message)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """tensorflow.serving.ModelService: version status and config reloads.

    Args:
        models: The loaded versions.
        allowed_roots: Directories a reload request may point base paths into.
        allow_labels_for_unavailable: Accept labels naming a version not loaded
            (--allow_version_labels_for_unavailable_models).
        group: The processes sharing this server's ports, each told of every reload (None: alone).
    """

    def __init__(self, models: ModelManager, allowed_roots: Sequence[Path] = (),
                 allow_labels_for_unavailable: bool = False, group: Optional[ProcessGroup] = None):
        self.models = models
        self.group = group
        self.allowed_roots = list(allowed_roots)
        self.allow_labels_for_unavailable = allow_labels_for_unavailable

    def GetModelStatus(self, request, context):
        """Every version ever seen, newest first; a version label is ignored, as TensorFlow Serving ignores it."""
        try:
            require_model_spec(request)
            query = ModelQuery.from_spec(request.model_spec)
            return status_response(self.models, query.name, query.version)
        except ServingError as error:
            context.abort(error.code, error.message)

    def HandleReloadConfigRequest(self, request, context):
        """A reload that fails fails the call itself, with the code and message (model_service_impl.cc).

        In a group of processes, one that applies a config passes it on to the others and
        answers once all have (the first failure, if any).
        """
        try:
            try:
                tfs_config.validate_model_config(request.config, "reload request")
                # Anyone who reaches the port can send a reload: it may not point the server at arbitrary files.
                tfs_config.check_base_paths_within(request.config, self.allowed_roots, "reload request")
            except tfs_config.ConfigError as error:  # the served models stay as they were
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from None
            failure = None
            try:
                self.models.set_config(request.config)
            except Exception as error:  # noqa: BLE001
                log.exception("applying a new model config failed")
                failure = ServingError(grpc.StatusCode.INTERNAL,
                                       f"the new config is in place, but applying it failed: {error}")
            if self.group is not None and not forwarded(context):
                try:
                    self.group.forward_reload(request)  # every process serves what one was told
                except ServingError as error:
                    failure = failure or error
            if failure is not None:
                raise failure
            unavailable = [] if self.allow_labels_for_unavailable else self.models.unavailable_labels()
            if unavailable:  # the models are reloaded, the label cannot serve
                raise ServingError(grpc.StatusCode.FAILED_PRECONDITION, f"{unavailable[0]}; requests by that label "
                                   "get NOT_FOUND until it loads (--allow_version_labels_for_unavailable_models "
                                   "accepts this)")
        except ServingError as error:
            context.abort(error.code, error.message)
        return model_management_pb2.ReloadConfigResponse()
