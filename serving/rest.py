"""TensorFlow Serving's REST API, beside the gRPC one (`--rest_api_port`).

    GET  /monitoring/prometheus/metrics                      with --monitoring_config_file
    GET  /v1/models/NAME[/versions/N | /labels/L]            version status
    GET  /v1/models/NAME[/versions/N | /labels/L]/metadata   signature definitions
    POST /v1/models/NAME[/versions/N | /labels/L]:predict    {"signature_name": ..., "instances": [...]}
                                                             or {"signature_name": ..., "inputs": {...}}

The row format ("instances": one entry per example, a dict when the signature
has several inputs) answers {"predictions": [...]}; the columnar format
("inputs") answers {"outputs": ...}, as TensorFlow Serving does. Errors are
{"error": "..."} with 400 (bad request), 404 (unknown model, version, label
or signature), 501 or 503.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2

from serving.models import ServingError

PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
                  r"(?P<action>/metadata|:predict)?$")
HTTP_CODES = {grpc.StatusCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST, grpc.StatusCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
              grpc.StatusCode.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
              grpc.StatusCode.UNIMPLEMENTED: HTTPStatus.NOT_IMPLEMENTED}
MAX_BODY_BYTES = 16 * 1024 * 1024


def _bad(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _to_array(name: str, value: Any, spec: tf.TensorSpec) -> np.ndarray:
    """A JSON value as an array of the input's dtype ({"b64": ...} for binary strings)."""
    if spec.dtype == tf.string:
        def as_bytes(item):
            if isinstance(item, dict) and "b64" in item:
                return base64.b64decode(item["b64"])
            if isinstance(item, str):
                return item.encode("utf-8")
            raise _bad(f"input {name!r} must hold strings, got {item!r}")
        array = np.array(value, dtype=object)
        return np.vectorize(as_bytes, otypes=[object])(array) if array.size else array
    try:
        return np.array(value, dtype=spec.dtype.as_numpy_dtype)
    except (TypeError, ValueError):
        raise _bad(f"input {name!r} must hold {spec.dtype.name} numbers of one shape, got {str(value)[:100]}") from None


def decode_json(body: dict[str, Any], signature) -> tuple[dict[str, np.ndarray], bool]:
    """The request's inputs as arrays, and whether it used the row ("instances") format."""
    specs = signature.inputs
    if ("instances" in body) == ("inputs" in body):
        raise _bad('the request needs exactly one of "instances" (rows) and "inputs" (columns)')
    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list):
            raise _bad('"instances" must be a list, one entry per example')
        if len(specs) == 1 and not (rows and isinstance(rows[0], dict)):
            name = next(iter(specs))
            return {name: _to_array(name, rows, specs[name])}, True
        if not all(isinstance(row, dict) for row in rows):
            raise _bad(f'with several inputs ({", ".join(sorted(specs))}), each instance must be an object')
        names = set().union(*(row.keys() for row in rows)) if rows else set(specs)
        if any(set(row) != names for row in rows):
            raise _bad("every instance must name the same inputs")
        return {name: _to_array(name, [row[name] for row in rows], specs[name]) if name in specs
                else np.array([]) for name in names}, True
    columns = body["inputs"]
    if not isinstance(columns, dict):
        if len(specs) != 1:
            raise _bad(f'"inputs" must be an object naming the inputs: {", ".join(sorted(specs))}')
        columns = {next(iter(specs)): columns}
    return {name: _to_array(name, value, specs[name]) if name in specs else np.array([])
            for name, value in columns.items()}, False


def _jsonable(array: np.ndarray) -> Any:
    if array.dtype == object:
        return np.vectorize(lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else v,
                            otypes=[object])(array).tolist()
    return array.tolist()


def encode_json(outputs: dict[str, np.ndarray], rows: bool) -> dict[str, Any]:
    if not rows:
        values = {key: _jsonable(value) for key, value in outputs.items()}
        return {"outputs": next(iter(values.values())) if len(values) == 1 else values}
    keys = list(outputs)
    count = len(outputs[keys[0]]) if keys else 0
    if len(keys) == 1:
        return {"predictions": _jsonable(outputs[keys[0]])}
    return {"predictions": [{key: _jsonable(np.asarray(outputs[key][i])) for key in keys} for i in range(count)]}


class RestServer:
    """A threaded HTTP server over the gRPC server's prediction and model services.

    Args:
        predictions: The `serving.server.PredictionService`.
        models: The `ModelManager`.
        host, port: Where to listen (port 0: any free port).
    """

    def __init__(self, predictions, models, host: str, port: int, metrics=None, metrics_path: Optional[str] = None):
        handler = type("Handler", (_Handler,), {"predictions": predictions, "models": models,
                                                "metrics": metrics, "metrics_path": metrics_path})
        self.http = ThreadingHTTPServer((host, port), handler)
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

    def log_message(self, *args):  # requests are not logged line by line
        pass

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self, method: str):
        match = PATH.match(self.path.split("?")[0])
        if not match or (method == "POST") != (match["action"] == ":predict"):
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"no such endpoint: {method} {self.path}")
        version = int(match["version"]) if match["version"] else None
        return match["name"], version, match["label"], match["action"]

    def _handle(self, method: str) -> None:
        try:
            name, version, label, action = self._route(method)
            if action == "/metadata":
                self._send(HTTPStatus.OK, self._metadata(name, version, label))
            elif action is None:
                self._send(HTTPStatus.OK, self._status(name, version, label))
            else:
                self._send(HTTPStatus.OK, self._predict(name, version, label))
        except ServingError as error:
            self._send(HTTP_CODES.get(error.code, HTTPStatus.INTERNAL_SERVER_ERROR), {"error": error.message})
        except Exception as error:  # noqa: BLE001 - never crash on one request
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(error).__name__}: {error}"})

    def do_GET(self):  # noqa: N802 - http.server's name
        if self.metrics is not None and self.path.split("?")[0] == self.metrics_path:
            data = self.metrics.exposition(self.models)
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self._handle("GET")

    def do_POST(self):  # noqa: N802
        self._handle("POST")

    def _status(self, name: str, version: Optional[int], label: Optional[str]) -> dict[str, Any]:
        if label:
            version = self.models.resolve(name, None, label).version
        rows = [row for row in self.models.status(name) if version is None or row[0] == version]
        if not rows:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"model {name!r} has no version {version}")
        return {"model_version_status": [
            {"version": str(v), "state": state,
             "status": {"error_code": "UNKNOWN" if error else "OK", "error_message": error}}
            for v, state, error in rows]}

    def _metadata(self, name: str, version: Optional[int], label: Optional[str]) -> dict[str, Any]:
        loaded = self.models.resolve(name, version, label)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        for key, value in loaded.signature_defs.items():
            signatures.signature_def[key].CopyFrom(value)
        return {"model_spec": {"name": loaded.name, "signature_name": "", "version": str(loaded.version)},
                "metadata": {"signature_def": json_format.MessageToDict(signatures)}}

    def _predict(self, name: str, version: Optional[int], label: Optional[str]) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise _bad(f"request body of {length} bytes is over the {MAX_BODY_BYTES}-byte limit")
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError as error:
            raise _bad(f"the body is not JSON: {error}") from None
        if not isinstance(body, dict):
            raise _bad('the body must be a JSON object with "instances" or "inputs"')
        layout = {}

        def decode(signature):
            arrays, layout["rows"] = decode_json(body, signature)
            return arrays

        _, _, outputs = self.predictions.predict_arrays(name, version, label, body.get("signature_name", ""), decode)
        return encode_json(outputs, layout["rows"])
