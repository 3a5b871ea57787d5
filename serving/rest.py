"""TensorFlow Serving's REST API, beside the gRPC one (`--rest_api_port`).

    GET  /v1/models/NAME[/versions/N | /labels/L]            version status (a label is ignored, as there)
    GET  /v1/models/NAME[/versions/N | /labels/L]/metadata   signature definitions
    POST /v1/models/NAME[/versions/N | /labels/L]:predict    {"signature_name": ..., "instances": [...]}
                                                             or {"signature_name": ..., "inputs": {...}}
    POST ...:classify, ...:regress                           answered as TensorFlow Serving answers them
                                                             for Predict-only models (400)
    GET  /monitoring/prometheus/metrics                      with --monitoring_config_file

Written after TensorFlow Serving's own handler and JSON codec
(`model_servers/http_rest_api_handler.cc`, `http_rest_api_util.cc`,
`util/json_tensor.cc`): the same URL grammar (anything else under /v1/ is
400 "Malformed request"), the same order of checks, strict JSON types (5.0 is
not an int32, "1.0" not a float), {"b64": ...} for binary strings, the row
format ("instances", answered {"predictions": ...}) and the columnar one
("inputs", answered {"outputs": ...}), float outputs written as TensorFlow
Serving writes them (6 significant digits unless that loses the value), and
errors as {"error": "..."} with TensorFlow Serving's HTTP codes.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import threading
import time
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format

from serving.models import ServingError, check_tf_example_signature, signature_def_map, status_response
from serving.requests import ModelQuery

# The URL grammar of http_rest_api_util.cc, matched (whole) against the path with its query string.
V1_PATH = re.compile(r"/v1/.*", re.IGNORECASE)
POST_PATH = re.compile(r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
                       re.IGNORECASE)
GET_PATH = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
                      re.IGNORECASE)
INT64_MAX = 2 ** 63 - 1
# ToHTTPStatusCode (http_server.cc).
HTTP_CODES = {
    grpc.StatusCode.OK: 200, grpc.StatusCode.CANCELLED: 499, grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.DEADLINE_EXCEEDED: 504, grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409, grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409, grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500, grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
MAX_BODY_BYTES = 16 * 1024 * 1024


def _bad(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


class _EmptyBodyError(Exception):
    """TensorFlow Serving answers a version number over int64 with 400 and no body at all."""


# -- JSON -> arrays (json_tensor.cc FillTensorProto) ------------------------------------------------

_INT_RANGES = {tf.int8: (-2 ** 31, 2 ** 31 - 1), tf.int16: (-2 ** 31, 2 ** 31 - 1), tf.uint8: (-2 ** 31, 2 ** 31 - 1),
               tf.uint16: (-2 ** 31, 2 ** 31 - 1), tf.int32: (-2 ** 31, 2 ** 31 - 1),
               tf.int64: (-2 ** 63, 2 ** 63 - 1), tf.uint32: (0, 2 ** 32 - 1), tf.uint64: (0, 2 ** 64 - 1)}


def _json_type(value: Any) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


def _type_error(value: Any, dtype: tf.DType) -> ServingError:
    return _bad(f"JSON Value: {json.dumps(value)[:256]} Type: {_json_type(value)} is not of expected type: "
                f"{dtype.name}")


def _b64_bytes(value: dict) -> bytes:
    """{"b64": "..."}: exactly that key, a string, standard base64 (padding optional)."""
    if set(value) != {"b64"} or not isinstance(value["b64"], str):
        raise _bad(f"JSON Value: {json.dumps(value)[:256]} not formatted correctly for base64 data")
    text = value["b64"]
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise _bad("Unable to base64 decode") from None


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and "b64" in value


def _element(value: Any, dtype: tf.DType) -> Any:
    """One JSON value as an element of `dtype`, with TensorFlow Serving's strictness."""
    if dtype == tf.string:
        if isinstance(value, str):
            return value.encode("utf-8")
        if isinstance(value, dict):
            return _b64_bytes(value)
        raise _type_error(value, dtype)
    if dtype == tf.bool:
        if isinstance(value, bool):
            return value
        raise _type_error(value, dtype)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _type_error(value, dtype)
    if dtype.is_floating:
        return float(value)
    low, high = _INT_RANGES.get(dtype, (None, None))
    if low is None:
        raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"Conversion of JSON Value: {value} to type: {dtype.name}")
    if not isinstance(value, int) or not low <= value <= high:  # 5.0 is a double, not an int
        raise _type_error(value, dtype)
    return value


def _leaves(value: Any, dtype: tf.DType, shape: list[int], seen: dict, depth: int = 0) -> list[Any]:
    """The elements of a nested list, checked to be rectangular (the shape is set by the first path)."""
    if isinstance(value, list):
        if depth == len(shape) and not seen["leaf"]:
            shape.append(len(value))
        elif depth >= len(shape):
            raise _bad(f"Encountered list at unexpected level: {depth} expected < {len(shape)}")
        elif shape[depth] != len(value):
            raise _bad(f"Encountered list at unexpected size: {len(value)} at level: {depth} expected size: "
                       f"{shape[depth]}")
        return [leaf for item in value for leaf in _leaves(item, dtype, shape, seen, depth + 1)]
    seen["leaf"] = True
    if depth != len(shape):
        raise _bad(f"JSON Value: {json.dumps(value)[:256]} found at incorrect level: {depth + 1} in the JSON DOM. "
                   f"Expected at level: {len(shape) + 1}")
    return [_element(value, dtype)]


def _to_array(value: Any, spec: tf.TensorSpec) -> np.ndarray:
    """A JSON value (scalar or nested lists) as an array of the input's dtype."""
    shape: list[int] = []
    leaves = _leaves(value, spec.dtype, shape, {"leaf": False})
    if spec.dtype == tf.string:
        array = np.empty(len(leaves), dtype=object)
        array[:] = leaves
        return array.reshape(shape)
    if spec.dtype.is_floating:
        return np.array(leaves, dtype=spec.dtype.as_numpy_dtype).reshape(shape)
    wide = np.uint64 if spec.dtype == tf.uint64 else np.int64
    return np.array(leaves, dtype=wide).astype(spec.dtype.as_numpy_dtype).reshape(shape)  # narrowed as TF does


def _rows_to_arrays(rows: list, specs: dict[str, tf.TensorSpec]) -> dict[str, np.ndarray]:
    """The row format: one entry per example, an object of named inputs when there are several."""
    named = isinstance(rows[0], dict) and not _is_b64(rows[0])
    if not named and len(specs) > 1:
        raise _bad("instances is a plain list, but expecting list of objects as multiple input tensors required "
                   f"as per tensorinfo_map (inputs: {', '.join(sorted(specs))})")
    if not named:
        for i, row in enumerate(rows):
            if isinstance(row, dict) and not _is_b64(row):
                raise _bad(f"Expecting value/list but got object at item {i} of input list")
        name = next(iter(specs))
        return {name: _stack(rows, specs[name], name)}
    columns: dict[str, list] = {name: [] for name in specs}
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or _is_b64(row):
            raise _bad(f"Expecting object but got {_json_type(row).lower()} at item {i} of input list")
        unknown = sorted(set(row) - set(specs))
        if unknown:
            raise _bad(f"Failed to process element: {i} key: {unknown[0]} of 'instances' list. Error: "
                       f"INVALID_ARGUMENT: JSON object: does not have named input: {unknown[0]}")
        if set(row) != set(specs):
            raise _bad(f"Failed to process element: {i} of 'instances' list. JSON object: {json.dumps(row)[:256]} "
                       f"keys must be equal to: {','.join(sorted(specs))}")
        for name in specs:
            columns[name].append(row[name])
    return {name: _stack(values, specs[name], name) for name, values in columns.items()}


def _stack(rows: list, spec: tf.TensorSpec, name: str) -> np.ndarray:
    arrays = []
    for i, row in enumerate(rows):
        try:
            arrays.append(_to_array(row, spec))
        except ServingError as error:
            raise ServingError(error.code, f"Failed to process element: {i} of 'instances' list. Error: "
                               f"{error.code.name}: {error.message}") from None
        if arrays[-1].shape != arrays[0].shape:
            first, this = arrays[0], arrays[-1]
            detail = (f"Expecting tensor size: {first.size} but got: {this.size}" if first.size != this.size else
                      f"Expecting shape [{','.join(map(str, first.shape))}] but got: [{','.join(map(str, this.shape))}]")
            raise _bad(f"Failed to process element: {i} of 'instances' list. Error: INVALID_ARGUMENT: {detail}")
    return np.stack(arrays) if arrays else np.array([])


def decode_json(body: dict[str, Any], signature) -> tuple[dict[str, np.ndarray], bool]:
    """The request's inputs as arrays, and whether it used the row ("instances") format.

    Returns:
        Exactly the signature's inputs (names are checked here, with TensorFlow Serving's REST messages),
        and True for the row format.

    Raises:
        ServingError: INVALID_ARGUMENT (400) with TensorFlow Serving's reason.
    """
    specs = signature.inputs
    if not specs:
        raise _bad(f"Failed to get input map for signature: {signature.key}")
    if "instances" in body and "inputs" in body:
        raise _bad("Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist")
    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list):
            raise _bad("Expecting 'instances' to be an list/array")
        if not rows:
            raise _bad("No values in 'instances' array")
        return _rows_to_arrays(rows, specs), True
    if "inputs" not in body:
        raise _bad("Missing 'inputs' or 'instances' key")
    columns = body["inputs"]
    if not isinstance(columns, dict) or _is_b64(columns):
        if len(specs) != 1:
            raise _bad("inputs is a plain value/list, but expecting an object as multiple input tensors required as "
                       f"per tensorinfo_map (inputs: {', '.join(sorted(specs))})")
        name = next(iter(specs))
        return {name: _to_array(columns, specs[name])}, False
    arrays = {}
    for name, spec in specs.items():  # keys that name no input are ignored, as TensorFlow Serving ignores them
        if name not in columns:
            raise _bad(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = _to_array(columns[name], spec)
    return arrays, False


# -- arrays -> JSON (json_tensor.cc MakeJsonFromTensors) ---------------------------------------------

def format_float(value: float, single: bool) -> str:
    """A float as TensorFlow Serving writes it (WriteDecimal): 6 significant digits unless that loses the value."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    text = f"{value:g}"
    exact = np.float32(float(text)) == np.float32(value) if single else float(text) == value
    if not exact:
        text = f"{value:.9g}" if single else f"{value:.17g}"
    if "." not in text and "e" not in text and "n" not in text:
        text += ".0"
    return text


def _json_text(value: Any, dtype: np.dtype, as_b64: bool) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_json_text(item, dtype, as_b64) for item in value) + "]"
    if dtype.kind == "f":
        return format_float(float(value), single=dtype.itemsize <= 4)
    if dtype.kind == "b":
        return "true" if value else "false"
    if dtype.kind in "iu":
        return str(int(value))
    data = value if isinstance(value, bytes) else str(value).encode("utf-8")
    if as_b64:  # outputs named *_bytes carry binary data (json_tensor.cc)
        return json.dumps({"b64": base64.b64encode(data).decode("ascii")})
    return json.dumps(data.decode("utf-8", "replace"), ensure_ascii=False)


def _output_text(name: str, array: np.ndarray) -> str:
    return _json_text(array.tolist(), array.dtype, name.endswith("_bytes"))


def encode_json(outputs: dict[str, np.ndarray], rows: bool) -> str:
    """The response body: {"predictions": ...} for the row format, {"outputs": ...} for the columnar one."""
    if not outputs:
        raise _bad("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    if not rows:
        if len(names) == 1:
            return '{"outputs": ' + _output_text(names[0], outputs[names[0]]) + "}"
        return '{"outputs": {' + ", ".join(f"{json.dumps(n)}: {_output_text(n, outputs[n])}" for n in names) + "}}"
    batch = None
    for name in names:
        if outputs[name].ndim == 0:
            raise _bad(f"Tensor name: {name} has no shape information")
        if batch is not None and len(outputs[name]) != batch:
            raise _bad(f"Tensor name: {name} has inconsistent batch size: {len(outputs[name])} expecting: {batch}")
        batch = len(outputs[name])
    if len(names) == 1:
        return '{"predictions": ' + _output_text(names[0], outputs[names[0]]) + "}"
    predictions = ["{" + ", ".join(f"{json.dumps(n)}: {_output_text(n, outputs[n][i])}" for n in names) + "}"
                   for i in range(batch)]
    return '{"predictions": [' + ", ".join(predictions) + "]}"


def parse_body(data: bytes) -> dict[str, Any]:
    """The request body as a JSON object (NaN and Infinity allowed; anything after the object ignored)."""
    text = data.decode("utf-8", "replace").lstrip()
    if not text:
        raise _bad("JSON Parse error: The document is empty")
    try:
        body, _ = json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError as error:
        raise _bad(f"JSON Parse error: {error.msg}. at offset: {error.pos}") from None
    if not isinstance(body, dict):
        raise _bad(f"JSON Value: {text[:256]} Is not object")
    if "signature_name" in body and not isinstance(body["signature_name"], str):
        raise _bad("'signature_name' key must be a string value.")
    return body


# -- the server -------------------------------------------------------------------------------------

class RestServer:
    """A threaded HTTP server over the gRPC server's Predict path and model manager.

    Args:
        predictions: The `serving.prediction.Predictor`.
        models: The `ModelManager`.
        host, port: Where to listen (port 0: any free port).
        metrics: The server's metrics (None: no metrics endpoint).
        metrics_path: Where they are answered.
        exposition: What that path answers (Prometheus text; default: `metrics`' own).
        reuse_port: Share the port with other processes (SO_REUSEPORT; `serving.supervisor`).
    """

    def __init__(self, predictions, models, host: str, port: int, metrics=None, metrics_path: Optional[str] = None,
                 exposition: Optional[Callable[[], bytes]] = None, reuse_port: bool = False):
        exposition = exposition or (lambda: metrics.exposition(models))
        handler = type("Handler", (_Handler,), {"predictions": predictions, "models": models, "metrics": metrics,
                                                "metrics_path": metrics_path, "exposition": staticmethod(exposition)})
        server_class = type("HTTPServer", (ThreadingHTTPServer,), {"allow_reuse_port": reuse_port})
        self.http = server_class((host, port), handler)
        self.http.daemon_threads = True
        self.port = self.http.server_address[1]

    def start(self) -> "RestServer":
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()


class _Handler(BaseHTTPRequestHandler):
    predictions = None
    models = None
    metrics = None
    metrics_path = None
    exposition = None

    def log_message(self, *args):  # requests are not logged line by line
        pass

    def _send_text(self, status: int, text: str, content_type: str = "application/json") -> None:
        data = text.encode("utf-8")
        self.send_response(status)
        if data:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send(self, status: int, body: dict[str, Any]) -> None:
        self._send_text(status, json.dumps(body, ensure_ascii=False))

    def _version(self, digits: Optional[str]) -> Optional[int]:
        if digits is None:
            return None
        if int(digits) > INT64_MAX:
            raise _EmptyBodyError
        return int(digits)

    def _handle(self, method: str) -> None:
        path, start = self.path, time.perf_counter()
        post, get = POST_PATH.fullmatch(path), GET_PATH.fullmatch(path)
        # TensorFlow Serving's metrics: the model named in the URL, the verb ("" for status and metadata).
        model_name = urllib.parse.unquote((post or get)[1] or "") if (post or get) else ""
        api, code = post[4] if post else "", grpc.StatusCode.OK
        try:
            if not V1_PATH.fullmatch(path):
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"no such endpoint: {method} {path}")
            if method == "POST" and post and post[4] in ("predict", "classify", "regress"):
                name, label = urllib.parse.unquote(post[1]), post[3] and urllib.parse.unquote(post[3])
                version = self._version(post[2])
                if post[4] == "predict":
                    self._send_text(HTTPStatus.OK, self._predict(name, version, label))
                else:
                    self._tf_example(name, version, label, post[4])
            elif method == "GET" and get:
                if get[1] is None:
                    raise _bad("Missing model name in request.")
                name, label = urllib.parse.unquote(get[1]), get[3] and urllib.parse.unquote(get[3])
                version = self._version(get[2])
                if get[4] == "metadata":  # case-sensitive, as TensorFlow Serving dispatches it
                    self._send_text(HTTPStatus.OK, self._metadata(name, version, label))
                else:
                    self._send_text(HTTPStatus.OK, self._status(name, version))
            else:
                raise _bad(f"Malformed request: {method} {path}")
        except _EmptyBodyError:
            code = grpc.StatusCode.INVALID_ARGUMENT
            self._send_text(HTTPStatus.BAD_REQUEST, "")
        except ServingError as error:
            code = error.code
            self._send(HTTP_CODES.get(error.code, 500), {"error": error.message})
        except Exception as error:  # noqa: BLE001 - never crash on one request
            code = grpc.StatusCode.INTERNAL
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(error).__name__}: {error}"})
        finally:
            if self.metrics is not None and V1_PATH.fullmatch(path):
                self.metrics.record_request(model_name, api, "REST", code.name, time.perf_counter() - start)

    def do_GET(self):  # noqa: N802 - http.server's name
        if self.metrics is not None and self.path == self.metrics_path:
            self._send_text(HTTPStatus.OK, self.exposition().decode("utf-8"),
                            "text/plain; version=0.0.4; charset=utf-8")
            return
        self._handle("GET")

    def do_POST(self):  # noqa: N802
        self._handle("POST")

    def do_PUT(self):  # noqa: N802 - every other method is a malformed request under /v1/
        self._handle("PUT")

    def do_DELETE(self):  # noqa: N802
        self._handle("DELETE")

    def do_PATCH(self):  # noqa: N802
        self._handle("PATCH")

    def _json(self, message) -> str:
        return json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True,
                                                    always_print_fields_with_no_presence=True), indent=1)

    def _status(self, name: str, version: Optional[int]) -> str:
        return self._json(status_response(self.models, name, version))

    def _metadata(self, name: str, version: Optional[int], label: Optional[str]) -> str:
        loaded = self.models.resolve(name, version, label)
        spec = self._json(loaded.model_spec())
        return '{\n"model_spec":' + spec + ',\n"metadata": {"signature_def": ' + self._json(
            signature_def_map(loaded)) + "}\n}\n"

    def _read_body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise _bad(f"request body of {length} bytes is over the {MAX_BODY_BYTES}-byte limit")
        return parse_body(self.rfile.read(length))

    def _predict(self, name: str, version: Optional[int], label: Optional[str]) -> str:
        body = self._read_body()
        query = ModelQuery(name, version, label, body.get("signature_name", ""))
        with self.predictions.observed(query):
            target = self.predictions.resolve(query)
            inputs, rows = decode_json(body, target.signature)
            outputs = self.predictions.predict(target, inputs)
        return encode_json(outputs, rows)

    def _tf_example(self, name: str, version: Optional[int], label: Optional[str], verb: str) -> None:
        """:classify and :regress: the checks of Classify and Regress (the models have Predict signatures)."""
        body = self._read_body()
        loaded = self.models.resolve(name, version, label)
        check_tf_example_signature(loaded, body.get("signature_name", ""),
                                   "classification" if verb == "classify" else "regression")
