"""The embedded server answers as TensorFlow Serving does: one table of cases from TensorFlow Serving's source.

Each row: the API, the request in words, what TensorFlow Serving answers (a
gRPC code, an HTTP status, or OK), the file of `tensorflow/serving` that says
so, and a check of the reply's format where the row is about a format. The
rows run against one live embedded server (gRPC and REST, both models, two
versions of the text model, metrics on) in another process. Messages are
this server's own; codes, statuses and formats are TensorFlow Serving's.
`python tests/test_tfs_conformance.py` prints the table.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Optional

import grpc
import numpy as np
import pytest
from google.protobuf import text_format
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from serving import tensors

from conftest import copy_version, free_port, publish_text_and_stock, start_server

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "the quick"


@dataclasses.dataclass(frozen=True)
class Reply:
    """What came back: the answer ("OK", a gRPC code name, "HTTP 404"), the message, the payload."""

    answer: str
    message: str = ""
    payload: Any = None


@dataclasses.dataclass(frozen=True)
class Case:
    """One row: `send` performs the request against the served fixture; `check` looks at the reply's payload."""

    api: str
    request: str
    answer: str
    source: str
    send: Callable[[dict], Reply]
    check: Optional[Callable[[Any], None]] = None


# -- how requests are sent ------------------------------------------------------------------------

def spec(name: str = "text", version: Optional[int] = None, label: Optional[str] = None,
         signature: str = "") -> model_pb2.ModelSpec:
    model_spec = model_pb2.ModelSpec(name=name, signature_name=signature)
    if version is not None:
        model_spec.version.value = version
    if label is not None:
        model_spec.version_label = label
    return model_spec


def predict_request(model_spec: Optional[model_pb2.ModelSpec] = None, output_filter=(), **inputs):
    request = predict_pb2.PredictRequest(output_filter=list(output_filter))
    if model_spec is not None:
        request.model_spec.CopyFrom(model_spec)
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tensors.to_proto(np.asarray(value)))
    return request


def text_inputs(rows: int = 1) -> dict[str, np.ndarray]:
    return {"text": np.array([PROMPT.encode()] * rows, dtype=object)}


def generate_inputs(**changes) -> dict[str, np.ndarray]:
    inputs = {"text": np.array([b"the "], dtype=object), "max_tokens": np.array([6], np.int32),
              "temperature": np.array([1.0], np.float32), "seed": np.array([1], np.int64)}
    return {**inputs, **changes}


def window(served: dict, rows: int = 1) -> np.ndarray:
    return np.repeat(served["window"][None], rows, axis=0)


def grpc_call(method: str, request_of: Callable[[dict], Any]) -> Callable[[dict], Reply]:
    def send(served):
        model_methods = ("GetModelStatus", "HandleReloadConfigRequest")
        with grpc.insecure_channel(served["target"]) as channel:
            stub = (model_service_pb2_grpc.ModelServiceStub(channel) if method in model_methods
                    else prediction_service_pb2_grpc.PredictionServiceStub(channel))
            try:
                return Reply("OK", "", getattr(stub, method)(request_of(served), timeout=60))
            except grpc.RpcError as error:
                return Reply(error.code().name, error.details())
    return send


def predict(request_of: Callable[[dict], predict_pb2.PredictRequest]) -> Callable[[dict], Reply]:
    return grpc_call("Predict", request_of)


def rest(method: str, path: str, body: Any = None) -> Callable[[dict], Reply]:
    """An HTTP request to the REST port; the payload is the raw body text."""
    def send(served):
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        if data is None and method == "POST":
            data = b""
        request = urllib.request.Request(f"http://127.0.0.1:{served['rest_port']}{path}", data=data, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return Reply("OK", "", response.read().decode())
        except urllib.error.HTTPError as error:
            text = error.read().decode()
            message = json.loads(text)["error"] if text.startswith("{") else text
            return Reply(f"HTTP {error.code}", message, text)
    return send


def reload(edit: Callable[[model_server_config_pb2.ModelServerConfig, dict], None]) -> Callable[[dict], Reply]:
    def request_of(served):
        config = text_format.Parse(served["config_text"], model_server_config_pb2.ModelServerConfig())
        edit(config, served)
        return model_management_pb2.ReloadConfigRequest(config=config)
    return grpc_call("HandleReloadConfigRequest", request_of)


# -- checks of formats ------------------------------------------------------------------------------

def typed_fields_only(response: predict_pb2.PredictResponse) -> None:
    """Outputs in the typed fields (kAsProtoField), never tensor_content."""
    for name, proto in response.outputs.items():
        assert not proto.tensor_content, name
        assert proto.float_val or proto.string_val or proto.int_val or proto.int64_val, name


def resolved_spec(version: int, signature: str) -> Callable[[predict_pb2.PredictResponse], None]:
    def check(response):
        assert response.model_spec.name == "text"
        assert response.model_spec.version.value == version and response.model_spec.signature_name == signature
        assert response.model_spec.WhichOneof("version_choice") == "version"  # the label is not echoed
    return check


def outputs_are(*names: str) -> Callable[[predict_pb2.PredictResponse], None]:
    def check(response):
        assert sorted(response.outputs) == sorted(names)
    return check


def rows_of(output: str, rows: int) -> Callable[[predict_pb2.PredictResponse], None]:
    def check(response):
        assert tensors.to_array(response.outputs[output]).shape[0] == rows
    return check


def metadata_check(response: get_model_metadata_pb2.GetModelMetadataResponse) -> None:
    assert response.model_spec.name == "text" and response.model_spec.version.value == 2
    assert not response.model_spec.signature_name and list(response.metadata) == ["signature_def"]
    assert response.metadata["signature_def"].type_url == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    assert set(signatures.signature_def) == {"serving_default", "generate", "generate_top_k", "metadata",
                                             "__saved_model_init_op"}


def status_newest_first(response: get_model_status_pb2.GetModelStatusResponse) -> None:
    rows = [(s.version, get_model_status_pb2.ModelVersionStatus.State.Name(s.state), s.status.error_code,
             s.status.error_message) for s in response.model_version_status]
    assert rows == [(2, "AVAILABLE", 0, ""), (1, "AVAILABLE", 0, "")], rows


def json_body(check: Callable[[Any], None]) -> Callable[[str], None]:
    return lambda text: check(json.loads(text))


def rest_status_format(body: dict) -> None:
    assert body == {"model_version_status": [
        {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}


def rest_metadata_format(body: dict) -> None:
    assert body["model_spec"] == {"name": "text", "signature_name": "", "version": "2"}
    signatures = body["metadata"]["signature_def"]["signature_def"]  # nested twice, as TensorFlow Serving does
    assert "__saved_model_init_op" in signatures
    generate = signatures["generate"]
    assert generate["method_name"] == "tensorflow/serving/predict"
    assert generate["inputs"]["text"] == {"dtype": "DT_STRING", "tensor_shape": {
        "dim": [{"size": "-1", "name": ""}], "unknown_rank": False}, "name": "generate_text:0"}


def float32_numbers(text: str) -> None:
    """Every float written as TensorFlow Serving writes it: 6 digits, or 9 when 6 lose the float32 value."""
    numbers = re.findall(r"-?\d+\.\d+(?:e[-+]\d+)?|-?\d+e[-+]\d+", text)
    assert numbers
    for number in numbers:
        digits = len(re.sub(r"e.*|[-.]", "", number).lstrip("0"))
        value = np.float32(float(number))
        assert digits <= 9 and (digits <= 6 or np.float32(float(f"{value:g}")) != value), number


def predictions_rows(count: int, keys: set[str]) -> Callable[[str], None]:
    def check(text):
        predictions = json.loads(text)["predictions"]
        assert len(predictions) == count and all(set(row) == keys for row in predictions)
    return check


def one_output_value(body: dict) -> None:
    assert isinstance(body["outputs"], list) and len(body["outputs"]) == 1  # not {"generated": [...]}


def empty_body(text: str) -> None:
    assert text == ""


def metrics_check(text: str) -> None:
    assert "# TYPE :tensorflow:serving:request_count counter" in text
    assert ':tensorflow:serving:request_count{model_name="text",status="OK"}' in text
    assert re.search(r':tensorflow:serving:request_count\{model_name="nope",status="NOT_FOUND"\} \d+', text)
    assert ':tensorflow:serving:request_latency_bucket{model_name="text",API="Predict",entrypoint="GRPC",le="10"}' \
        in text
    assert ':tensorflow:serving:request_latency_bucket{model_name="text",API="predict",entrypoint="REST",le="+Inf"}' \
        in text
    assert ':tensorflow:serving:runtime_latency_count{model_name="text",API="Predict",runtime="TF1"}' in text
    assert re.search(r':tensorflow:serving:model_warmup_latency_count\{model_path="[^"]+/text/2",status="OK"\} 1',
                     text)
    assert "# HELP :tensorflow" not in text  # the exporter writes no HELP lines


def b64(text: str) -> dict[str, str]:
    return {"b64": base64.b64encode(text.encode()).decode()}


GENERATE_JSON = {"text": ["the "], "max_tokens": [6], "temperature": [1.0], "seed": [1]}

# -- the table --------------------------------------------------------------------------------------

TABLE = [
    # Predict: which model, version and signature
    Case("gRPC Predict", "no model_spec", "INVALID_ARGUMENT", "servables/tensorflow/predict_impl.cc",
         predict(lambda s: predict_request(None, **text_inputs()))),
    Case("gRPC Predict", "an empty model name", "INVALID_ARGUMENT", "model_servers/server_core.cc",
         predict(lambda s: predict_request(spec(""), **text_inputs()))),
    Case("gRPC Predict", "an unknown model", "NOT_FOUND", "core/basic_manager.cc",
         predict(lambda s: predict_request(spec("nope"), **text_inputs()))),
    Case("gRPC Predict", "a version that is not loaded", "NOT_FOUND", "core/basic_manager.cc",
         predict(lambda s: predict_request(spec(version=99), **text_inputs()))),
    Case("gRPC Predict", "an unknown version label", "INVALID_ARGUMENT", "model_servers/server_core.cc",
         predict(lambda s: predict_request(spec(label="gold"), **text_inputs()))),
    Case("gRPC Predict", "a version label of an unknown model", "INVALID_ARGUMENT", "model_servers/server_core.cc",
         predict(lambda s: predict_request(spec("nope", label="stable"), **text_inputs()))),
    Case("gRPC Predict", "an unknown signature", "FAILED_PRECONDITION", "servables/tensorflow/predict_util.cc",
         predict(lambda s: predict_request(spec(signature="classify_me"), **text_inputs()))),
    Case("gRPC Predict", "no signature name: serving_default, answered with the resolved spec", "OK",
         "servables/tensorflow/util.cc (MakeModelSpec)",
         predict(lambda s: predict_request(spec(), **text_inputs())), resolved_spec(2, "serving_default")),
    Case("gRPC Predict", "by label: the response names the version, not the label", "OK",
         "servables/tensorflow/predict_util.cc",
         predict(lambda s: predict_request(spec(label="stable", signature="generate"), **generate_inputs())),
         resolved_spec(1, "generate")),
    # Predict: inputs and outputs
    Case("gRPC Predict", "an input missing", "INVALID_ARGUMENT", "servables/tensorflow/predict_util.cc",
         predict(lambda s: predict_request(spec(signature="generate"), text=np.array([b"a"], object)))),
    Case("gRPC Predict", "an input the signature does not take", "INVALID_ARGUMENT",
         "servables/tensorflow/predict_util.cc",
         predict(lambda s: predict_request(spec(), **text_inputs(), colour=np.array([1.0], np.float32)))),
    Case("gRPC Predict", "a dtype mismatch (float32 for a string input)", "INVALID_ARGUMENT",
         "servables/tensorflow/predict_util_test.cc (InputTensorsHaveWrongType)",
         predict(lambda s: predict_request(spec(), text=np.array([1.0], np.float32)))),
    Case("gRPC Predict", "an output_filter naming an unknown output", "INVALID_ARGUMENT",
         "servables/tensorflow/predict_util.cc",
         predict(lambda s: predict_request(spec(), output_filter=["logits"], **text_inputs()))),
    Case("gRPC Predict", "an output_filter naming an output twice", "INVALID_ARGUMENT",
         "servables/tensorflow/predict_util.cc",
         predict(lambda s: predict_request(spec(), output_filter=["top_k_tokens"] * 2, **text_inputs()))),
    Case("gRPC Predict", "an output_filter: only those outputs", "OK", "servables/tensorflow/predict_util.cc",
         predict(lambda s: predict_request(spec(), output_filter=["top_k_tokens"], **text_inputs())),
         outputs_are("top_k_tokens")),
    Case("gRPC Predict", "float and string outputs in the typed fields, not tensor_content", "OK",
         "servables/tensorflow/predict_util.cc, model_servers/server_core.h (kAsProtoField)",
         predict(lambda s: predict_request(spec(), **text_inputs(2))), typed_fields_only),
    Case("gRPC Predict", "the stock model: next_value and quantiles in float_val", "OK",
         "servables/tensorflow/predict_util.cc",
         predict(lambda s: predict_request(spec("stock"), window=window(s))), typed_fields_only),
    Case("gRPC Predict", "300 rows in one request (no row limit)", "OK", "servables/tensorflow/predict_util.cc",
         predict(lambda s: predict_request(spec(), **text_inputs(300))), rows_of("probabilities", 300)),
    Case("gRPC Predict", "a value the graph refuses (temperature 0)", "INVALID_ARGUMENT",
         "servables/tensorflow/predict_util.cc (Session::Run's status)",
         predict(lambda s: predict_request(spec(signature="generate"),
                                           **generate_inputs(temperature=np.array([0.0], np.float32))))),
    Case("gRPC Predict", "the metadata signature: one row of facts per input row", "OK",
         "batching/batching_session.cc (every output split by rows)",
         predict(lambda s: predict_request(spec(signature="metadata"), rows=np.array([0, 0, 0], np.int32))),
         rows_of("vocabulary", 3)),
    # GetModelMetadata
    Case("gRPC GetModelMetadata", "no model_spec", "INVALID_ARGUMENT",
         "servables/tensorflow/get_model_metadata_impl.cc",
         grpc_call("GetModelMetadata", lambda s: get_model_metadata_pb2.GetModelMetadataRequest(
             metadata_field=["signature_def"]))),
    Case("gRPC GetModelMetadata", "no metadata_field", "INVALID_ARGUMENT",
         "servables/tensorflow/get_model_metadata_impl.cc",
         grpc_call("GetModelMetadata", lambda s: get_model_metadata_pb2.GetModelMetadataRequest(model_spec=spec()))),
    Case("gRPC GetModelMetadata", "an unsupported field, checked before the model", "INVALID_ARGUMENT",
         "servables/tensorflow/get_model_metadata_impl.cc",
         grpc_call("GetModelMetadata", lambda s: get_model_metadata_pb2.GetModelMetadataRequest(
             model_spec=spec("nope"), metadata_field=["graph"]))),
    Case("gRPC GetModelMetadata", "an unknown model", "NOT_FOUND", "core/basic_manager.cc",
         grpc_call("GetModelMetadata", lambda s: get_model_metadata_pb2.GetModelMetadataRequest(
             model_spec=spec("nope"), metadata_field=["signature_def"]))),
    Case("gRPC GetModelMetadata", "an unknown version label", "INVALID_ARGUMENT", "model_servers/server_core.cc",
         grpc_call("GetModelMetadata", lambda s: get_model_metadata_pb2.GetModelMetadataRequest(
             model_spec=spec(label="gold"), metadata_field=["signature_def"]))),
    Case("gRPC GetModelMetadata", "signature_def: name and version, every SignatureDef (init op included)", "OK",
         "servables/tensorflow/get_model_metadata_impl.cc",
         grpc_call("GetModelMetadata", lambda s: get_model_metadata_pb2.GetModelMetadataRequest(
             model_spec=spec(signature="generate"), metadata_field=["signature_def"])), metadata_check),
    # GetModelStatus
    Case("gRPC GetModelStatus", "no model_spec", "INVALID_ARGUMENT", "model_servers/get_model_status_impl.cc",
         grpc_call("GetModelStatus", lambda s: get_model_status_pb2.GetModelStatusRequest())),
    Case("gRPC GetModelStatus", "an empty model name", "NOT_FOUND", "model_servers/get_model_status_impl.cc",
         grpc_call("GetModelStatus", lambda s: get_model_status_pb2.GetModelStatusRequest(model_spec=spec("")))),
    Case("gRPC GetModelStatus", "an unknown model", "NOT_FOUND", "model_servers/get_model_status_impl.cc",
         grpc_call("GetModelStatus", lambda s: get_model_status_pb2.GetModelStatusRequest(model_spec=spec("nope")))),
    Case("gRPC GetModelStatus", "a version never seen", "NOT_FOUND", "model_servers/get_model_status_impl.cc",
         grpc_call("GetModelStatus", lambda s: get_model_status_pb2.GetModelStatusRequest(
             model_spec=spec(version=99)))),
    Case("gRPC GetModelStatus", "every version, newest first, error_code OK", "OK",
         "model_servers/get_model_status_impl.cc, core/servable_state_monitor.h",
         grpc_call("GetModelStatus", lambda s: get_model_status_pb2.GetModelStatusRequest(model_spec=spec())),
         status_newest_first),
    Case("gRPC GetModelStatus", "a version label, even an unknown one, is ignored", "OK",
         "model_servers/get_model_status_impl.cc",
         grpc_call("GetModelStatus", lambda s: get_model_status_pb2.GetModelStatusRequest(
             model_spec=spec(label="gold"))), status_newest_first),
    # HandleReloadConfigRequest
    Case("gRPC HandleReloadConfigRequest", "a config naming a model twice: the call fails", "INVALID_ARGUMENT",
         "model_servers/model_service_impl.cc, server_core.cc",
         reload(lambda config, s: config.model_config_list.config.append(config.model_config_list.config[0]))),
    Case("gRPC HandleReloadConfigRequest", "a label on a version that is not available: the call fails",
         "FAILED_PRECONDITION", "model_servers/server_core.cc",
         reload(lambda config, s: config.model_config_list.config[0].version_labels.__setitem__("canary", 7))),
    Case("gRPC HandleReloadConfigRequest", "the same config again", "OK", "model_servers/server_core.cc",
         reload(lambda config, s: None)),
    # Classify, Regress, MultiInference on Predict-only models
    Case("gRPC Classify", "no model_spec", "INVALID_ARGUMENT",
         "servables/tensorflow/classification_service.cc",
         grpc_call("Classify", lambda s: classification_pb2.ClassificationRequest())),
    Case("gRPC Classify", "an unknown model", "NOT_FOUND", "core/basic_manager.cc",
         grpc_call("Classify", lambda s: classification_pb2.ClassificationRequest(model_spec=spec("nope")))),
    Case("gRPC Classify", "an unknown signature", "INVALID_ARGUMENT", "servables/tensorflow/classifier.cc",
         grpc_call("Classify", lambda s: classification_pb2.ClassificationRequest(
             model_spec=spec(signature="nope")))),
    Case("gRPC Classify", "a Predict signature (three outputs)", "INVALID_ARGUMENT",
         "servables/tensorflow/classifier.cc",
         grpc_call("Classify", lambda s: classification_pb2.ClassificationRequest(model_spec=spec()))),
    Case("gRPC Classify", "a Predict signature with four inputs (generate)", "INVALID_ARGUMENT",
         "servables/tensorflow/classifier.cc",
         grpc_call("Classify", lambda s: classification_pb2.ClassificationRequest(
             model_spec=spec(signature="generate")))),
    Case("gRPC Regress", "the stock model's Predict signature (two outputs)", "INVALID_ARGUMENT",
         "servables/tensorflow/regressor.cc",
         grpc_call("Regress", lambda s: regression_pb2.RegressionRequest(model_spec=spec("stock")))),
    Case("gRPC Regress", "an unknown model", "NOT_FOUND", "core/basic_manager.cc",
         grpc_call("Regress", lambda s: regression_pb2.RegressionRequest(model_spec=spec("nope")))),
    Case("gRPC MultiInference", "no tasks", "INVALID_ARGUMENT", "servables/tensorflow/multi_inference_helper.cc",
         grpc_call("MultiInference", lambda s: inference_pb2.MultiInferenceRequest())),
    Case("gRPC MultiInference", "tasks on two models", "INVALID_ARGUMENT", "servables/tensorflow/multi_inference.cc",
         grpc_call("MultiInference", lambda s: inference_pb2.MultiInferenceRequest(tasks=[
             inference_pb2.InferenceTask(model_spec=spec(), method_name="tensorflow/serving/classify"),
             inference_pb2.InferenceTask(model_spec=spec("stock"), method_name="tensorflow/serving/regress")]))),
    Case("gRPC MultiInference", "the same signature twice", "INVALID_ARGUMENT",
         "servables/tensorflow/multi_inference.cc",
         grpc_call("MultiInference", lambda s: inference_pb2.MultiInferenceRequest(tasks=[
             inference_pb2.InferenceTask(model_spec=spec(signature="generate")),
             inference_pb2.InferenceTask(model_spec=spec(signature="generate"))]))),
    Case("gRPC MultiInference", "an unknown signature", "INVALID_ARGUMENT", "servables/tensorflow/multi_inference.cc",
         grpc_call("MultiInference", lambda s: inference_pb2.MultiInferenceRequest(tasks=[
             inference_pb2.InferenceTask(model_spec=spec(signature="nope"))]))),
    Case("gRPC MultiInference", "a Predict signature", "UNIMPLEMENTED", "servables/tensorflow/multi_inference.cc",
         grpc_call("MultiInference", lambda s: inference_pb2.MultiInferenceRequest(tasks=[
             inference_pb2.InferenceTask(model_spec=spec())]))),
    Case("gRPC MultiInference", "an unknown model", "NOT_FOUND", "core/basic_manager.cc",
         grpc_call("MultiInference", lambda s: inference_pb2.MultiInferenceRequest(tasks=[
             inference_pb2.InferenceTask(model_spec=spec("nope"))]))),
    # REST: the URL grammar
    Case("REST", "GET /v1/models/text: status with TensorFlow Serving's field names", "OK",
         "model_servers/http_rest_api_handler.cc", rest("GET", "/v1/models/text"), json_body(rest_status_format)),
    Case("REST", "GET /v1/models/text/labels/gold: the label is ignored", "OK",
         "model_servers/http_rest_api_handler.cc", rest("GET", "/v1/models/text/labels/gold"),
         json_body(rest_status_format)),
    Case("REST", "GET /v1/models/nope", "HTTP 404", "model_servers/get_model_status_impl.cc",
         rest("GET", "/v1/models/nope")),
    Case("REST", "GET /v1/models/text/versions/9", "HTTP 404", "model_servers/get_model_status_impl.cc",
         rest("GET", "/v1/models/text/versions/9")),
    Case("REST", "GET /v1/models (no name)", "HTTP 400", "model_servers/http_rest_api_handler.cc",
         rest("GET", "/v1/models")),
    Case("REST", "GET /v1/foo", "HTTP 400", "model_servers/http_rest_api_handler_test.cc (UnsupportedApiCalls)",
         rest("GET", "/v1/foo")),
    Case("REST", "GET on :predict", "HTTP 400", "model_servers/http_rest_api_handler_test.cc",
         rest("GET", "/v1/models/text:predict")),
    Case("REST", "POST on the status URL", "HTTP 400", "model_servers/http_rest_api_handler_test.cc",
         rest("POST", "/v1/models/text", {"instances": [PROMPT]})),
    Case("REST", "POST on /metadata", "HTTP 400", "model_servers/http_rest_api_handler_test.cc",
         rest("POST", "/v1/models/text/metadata", {})),
    Case("REST", "an unknown verb (:explain)", "HTTP 400", "model_servers/http_rest_api_util.cc",
         rest("POST", "/v1/models/text:explain", {"instances": [PROMPT]})),
    Case("REST", "a verb in capitals (:PREDICT)", "HTTP 400", "model_servers/http_rest_api_handler.cc",
         rest("POST", "/v1/models/text:PREDICT", {"instances": [PROMPT]})),
    Case("REST", "a version that is not a number", "HTTP 400", "model_servers/http_rest_api_handler_test.cc",
         rest("POST", "/v1/models/text/versions/HELLO:predict", {"instances": [PROMPT]})),
    Case("REST", "a version over int64: 400 with no body", "HTTP 400", "model_servers/http_rest_api_util.cc",
         rest("POST", "/v1/models/text/versions/18446744073709551615:predict", {"instances": [PROMPT]}), empty_body),
    Case("REST", "a version and a label together", "HTTP 400", "model_servers/http_rest_api_handler_test.cc",
         rest("POST", "/v1/models/text/versions/1/labels/stable:predict", {"instances": [PROMPT]})),
    Case("REST", "a trailing segment", "HTTP 400", "model_servers/http_rest_api_util.cc",
         rest("GET", "/v1/models/text/versions/1/extra")),
    Case("REST", "PUT", "HTTP 400", "model_servers/http_rest_api_handler.cc", rest("PUT", "/v1/models/text", b"")),
    Case("REST", "a path outside /v1/", "HTTP 404", "model_servers/http_server.cc", rest("GET", "/v2/models/text")),
    # REST: metadata
    Case("REST", "GET .../metadata: proto field names, nested signature_def, init op included", "OK",
         "model_servers/http_rest_api_util.cc", rest("GET", "/v1/models/text/metadata"),
         json_body(rest_metadata_format)),
    Case("REST", "GET .../labels/gold/metadata (an unknown label)", "HTTP 400", "model_servers/server_core.cc",
         rest("GET", "/v1/models/text/labels/gold/metadata")),
    # REST: predict, the order of checks and the request body
    Case("REST", "predict on an unknown model", "HTTP 404", "core/basic_manager.cc",
         rest("POST", "/v1/models/nope:predict", {"instances": [PROMPT]})),
    Case("REST", "predict on a version that is not loaded", "HTTP 404", "core/basic_manager.cc",
         rest("POST", "/v1/models/text/versions/50:predict", {"instances": [PROMPT]})),
    Case("REST", "predict by an unknown label", "HTTP 400", "model_servers/server_core.cc",
         rest("POST", "/v1/models/text/labels/gold:predict", {"instances": [PROMPT]})),
    Case("REST", "predict on an unknown signature", "HTTP 400", "model_servers/http_rest_api_handler.cc",
         rest("POST", "/v1/models/text:predict", {"signature_name": "nope", "instances": [PROMPT]})),
    Case("REST", "a signature_name that is not a string", "HTTP 400", "util/json_tensor.cc",
         rest("POST", "/v1/models/text:predict", {"signature_name": 5, "instances": [PROMPT]})),
    Case("REST", "an empty body", "HTTP 400", "util/json_tensor.cc", rest("POST", "/v1/models/text:predict", b"")),
    Case("REST", "a body that is not JSON", "HTTP 400", "util/json_tensor.cc",
         rest("POST", "/v1/models/text:predict", b"{instances")),
    Case("REST", "a JSON array, not an object", "HTTP 400", "util/json_tensor.cc",
         rest("POST", "/v1/models/text:predict", [PROMPT])),
    Case("REST", "neither instances nor inputs", "HTTP 400", "util/json_tensor.cc",
         rest("POST", "/v1/models/text:predict", {"examples": [PROMPT]})),
    Case("REST", "both instances and inputs", "HTTP 400", "util/json_tensor.cc",
         rest("POST", "/v1/models/text:predict", {"instances": [PROMPT], "inputs": [PROMPT]})),
    Case("REST", "instances that is not a list", "HTTP 400", "util/json_tensor.cc",
         rest("POST", "/v1/models/text:predict", {"instances": PROMPT})),
    Case("REST", "an empty instances list", "HTTP 400", "util/json_tensor.cc",
         rest("POST", "/v1/models/text:predict", {"instances": []})),
    Case("REST", "5.0 for an int32 input", "HTTP 400", "util/json_tensor.cc",
         rest("POST", "/v1/models/text:predict", {"signature_name": "generate",
                                                  "inputs": {**GENERATE_JSON, "max_tokens": [5.0]}})),
    Case("REST", "true for an int32 input", "HTTP 400", "util/json_tensor.cc",
         rest("POST", "/v1/models/text:predict", {"signature_name": "generate",
                                                  "inputs": {**GENERATE_JSON, "max_tokens": [True]}})),
    Case("REST", '"1.0" (a string) for a float input', "HTTP 400", "util/json_tensor.cc",
         rest("POST", "/v1/models/text:predict", {"signature_name": "generate",
                                                  "inputs": {**GENERATE_JSON, "temperature": ["1.0"]}})),
    Case("REST", "an int64 over its range", "HTTP 400", "util/json_tensor.cc",
         rest("POST", "/v1/models/text:predict", {"signature_name": "generate",
                                                  "inputs": {**GENERATE_JSON, "seed": [2 ** 63]}})),
    Case("REST", "an int for a float input (accepted)", "OK", "util/json_tensor_test.cc (MixedInputForFloatTensor)",
         rest("POST", "/v1/models/text:predict", {"signature_name": "generate",
                                                  "inputs": {**GENERATE_JSON, "temperature": [1]}})),
    Case("REST", "a number for a string input", "HTTP 400", "util/json_tensor.cc",
         rest("POST", "/v1/models/text:predict", {"instances": [5]})),
    Case("REST", "{\"b64\": ...} rows for a string input", "OK",
         "util/json_tensor_test.cc (SingleUnnamedTensorBase64Scalars)",
         rest("POST", "/v1/models/text:predict", {"instances": [b64(PROMPT), b64("the")]}),
         predictions_rows(2, {"probabilities", "top_k_tokens", "top_k_probabilities"})),
    Case("REST", "invalid base64", "HTTP 400", "util/json_tensor.cc",
         rest("POST", "/v1/models/text:predict", {"instances": [{"b64": "!!!"}]})),
    Case("REST", "a b64 object with another key", "HTTP 400", "util/json_tensor.cc",
         rest("POST", "/v1/models/text:predict", {"instances": [{"b64": "aGk=", "x": 1}]})),
    Case("REST", "instance objects naming an unknown input", "HTTP 400", "util/json_tensor.cc",
         rest("POST", "/v1/models/text:predict", {"signature_name": "generate", "instances": [
             {"text": "a", "max_tokens": 3, "temperature": 1.0, "seed": 1, "colour": 2}]})),
    Case("REST", "instance objects missing an input", "HTTP 400", "util/json_tensor.cc",
         rest("POST", "/v1/models/text:predict", {"signature_name": "generate", "instances": [{"text": "a"}]})),
    Case("REST", "a plain instances list for a signature of several inputs", "HTTP 400", "util/json_tensor.cc",
         rest("POST", "/v1/models/text:predict", {"signature_name": "generate", "instances": ["a"]})),
    Case("REST", "instances of different shapes", "HTTP 400", "util/json_tensor.cc",
         rest("POST", "/v1/models/stock:predict", {"instances": [[[100.0]] * 10, [[100.0]] * 9]})),
    Case("REST", "columnar inputs naming an extra key (ignored)", "OK", "util/json_tensor.cc",
         rest("POST", "/v1/models/text:predict", {"signature_name": "generate",
                                                  "inputs": {**GENERATE_JSON, "colour": [2]}})),
    Case("REST", "columnar inputs missing an input", "HTTP 400", "util/json_tensor.cc",
         rest("POST", "/v1/models/text:predict", {"signature_name": "generate", "inputs": {"text": ["a"]}})),
    Case("REST", "a value the graph refuses (temperature 0)", "HTTP 400", "model_servers/http_server.cc",
         rest("POST", "/v1/models/text:predict", {"signature_name": "generate",
                                                  "inputs": {**GENERATE_JSON, "temperature": [0.0]}})),
    # REST: the response body
    Case("REST", "rows answered as predictions, one object per row (several outputs)", "OK", "util/json_tensor.cc",
         rest("POST", "/v1/models/text:predict", {"instances": [PROMPT, "a", ""]}),
         predictions_rows(3, {"probabilities", "top_k_tokens", "top_k_probabilities"})),
    Case("REST", "floats written with 6 significant digits, 9 when 6 lose the value", "OK",
         "util/json_tensor.cc (WriteDecimal)",
         rest("POST", "/v1/models/text:predict", {"instances": [PROMPT]}), float32_numbers),
    Case("REST", "columnar inputs answered as outputs (one output: its value)", "OK", "util/json_tensor.cc",
         rest("POST", "/v1/models/text:predict", {"signature_name": "generate", "inputs": GENERATE_JSON}),
         json_body(one_output_value)),
    Case("REST", "the stock model, row format", "OK", "util/json_tensor.cc",
         rest("POST", "/v1/models/stock:predict", {"instances": [[[100.0]] * 10]}),
         predictions_rows(1, {"next_value", "quantiles"})),
    Case("REST", ":classify on a Predict signature", "HTTP 400", "servables/tensorflow/classifier.cc",
         rest("POST", "/v1/models/text:classify", {"examples": [{"x": 1}]})),
    Case("REST", ":regress on a Predict signature", "HTTP 400", "servables/tensorflow/regressor.cc",
         rest("POST", "/v1/models/stock:regress", {"examples": [{"x": 1}]})),
    # Monitoring
    Case("Prometheus", "TensorFlow Serving's metric names and labels", "OK",
         "util/prometheus_exporter.cc, servables/tensorflow/util.cc, saved_model_warmup_util.cc",
         rest("GET", "/monitoring/prometheus/metrics"), metrics_check),
]


def markdown() -> str:
    rows = ["| # | API | request | TensorFlow Serving answers | source (`tensorflow_serving/...`) |",
            "|---|---|---|---|---|"]
    rows += [f"| {i} | {c.api} | {c.request} | {c.answer} | {c.source} |" for i, c in enumerate(TABLE, 1)]
    return "\n".join(rows)


@pytest.fixture(scope="module")
def served(exported_lstm, exported_stock, tmp_path_factory):
    """One server, as TensorFlow Serving would run: text versions 1 and 2, stock 1, REST, metrics."""
    root = tmp_path_factory.mktemp("conformance")
    models, config = publish_text_and_stock(root, exported_lstm[1], exported_stock[1])
    copy_version(exported_lstm[1], models / "text", 2)
    config_text = config.read_text().replace('model_platform: "tensorflow"\n',
                                             'model_platform: "tensorflow" model_version_policy { all {} }\n', 1)
    config.write_text(config_text)
    rest_port = free_port()
    process, target = start_server(config, "--file_system_poll_wait_seconds", "0", "--rest_api_port", str(rest_port),
                                   "--monitoring_config_file", str(ROOT / "serving" / "monitoring.config"))
    series = exported_stock[2]
    try:
        yield {"target": target, "rest_port": rest_port, "config_text": config_text,
               "window": series.values[-10:].astype(np.float32)}
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


@pytest.mark.parametrize("case", TABLE, ids=[f"{i} {c.api}: {c.request}" for i, c in enumerate(TABLE, 1)])
def test_the_embedded_server_answers_as_tensorflow_serving(served, case):
    reply = case.send(served)
    assert reply.answer == case.answer, f"{case.request}: {reply.answer} {reply.message}"
    if case.check is not None:
        case.check(reply.payload)


def test_a_model_removed_by_reload_keeps_its_versions_in_state_end(served):
    """ServableStateMonitor never forgets a version: GetModelStatus answers END, not NOT_FOUND."""
    only_text = text_format.Parse(served["config_text"], model_server_config_pb2.ModelServerConfig())
    del only_text.model_config_list.config[1]
    status = grpc_call("GetModelStatus", lambda s: get_model_status_pb2.GetModelStatusRequest(model_spec=spec("stock")))
    try:
        assert reload(lambda config, s: config.CopyFrom(only_text))(served).answer == "OK"
        reply = status(served)
        assert reply.answer == "OK", reply.message
        assert [(s.version, s.state) for s in reply.payload.model_version_status] == [
            (1, get_model_status_pb2.ModelVersionStatus.END)]
        assert predict(lambda s: predict_request(spec("stock"), window=window(s)))(served).answer == "NOT_FOUND"
    finally:
        assert reload(lambda config, s: None)(served).answer == "OK"
    assert predict(lambda s: predict_request(spec("stock"), window=window(s)))(served).answer == "OK"


def test_the_table_is_broad_and_documented():
    assert len(TABLE) >= 80
    assert {case.api.split()[0] for case in TABLE} >= {"gRPC", "REST", "Prometheus"}
    assert markdown() in (ROOT / "docs" / "tfs-conformance.md").read_text(), \
        "docs/tfs-conformance.md is out of date: python tests/test_tfs_conformance.py prints the table"


if __name__ == "__main__":
    print(markdown())
