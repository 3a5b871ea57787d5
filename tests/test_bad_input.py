"""Bad input, as one table: every interface, the exact answer, and still serving afterwards.

Each row names where the input goes (a CLI, the client, the server over gRPC
or REST, a reload request), the bad input in words, the answer expected (an
exit code, a gRPC status code, an HTTP status, or "works" for inputs that look
odd but are fine) and a fragment of the message. After every server row a
good request must still be answered by the same server process.

docs/bad-input.md is this table in words; `python tests/test_bad_input.py`
prints it, and a test checks that the two agree.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from conftest import free_port, publish_text_and_stock, start_server

ROOT = Path(__file__).resolve().parents[1]
PROMPT = np.array([b"the quick"], dtype=object)


@dataclasses.dataclass(frozen=True)
class Case:
    """One row of the table.

    Attributes:
        where: The interface the input goes to.
        bad_input: The input, in words.
        answer: What comes back: "exit 2", a gRPC code name, "HTTP 404", "works", ...
        message: A fragment of the one-line message.
        send: Performs the input against the `served` fixture (for server rows) or a work
            directory (CLI rows); returns (answer, message) as observed.
    """

    where: str
    bad_input: str
    answer: str
    message: str
    send: Callable[..., tuple[str, str]]


# ----------------------------------------------------------------------------- gRPC
def request(model: str = "text", signature: str = "", version: int | None = None, label: str | None = None,
            output_filter: tuple[str, ...] = (), **inputs: Any) -> predict_pb2.PredictRequest:
    """A PredictRequest; each input an array (encoded with make_tensor_proto) or a ready TensorProto."""
    spec = model_pb2.ModelSpec(name=model, signature_name=signature)
    if version is not None:
        spec.version.value = version
    if label is not None:
        spec.version_label = label
    message = predict_pb2.PredictRequest(model_spec=spec, output_filter=list(output_filter))
    for name, value in inputs.items():
        message.inputs[name].CopyFrom(value if isinstance(value, tensor_pb2.TensorProto)
                                      else tf.make_tensor_proto(value))
    return message


def generate_inputs(**overrides) -> dict[str, np.ndarray]:
    inputs = {"text": PROMPT, "max_tokens": np.array([5], np.int32), "temperature": np.array([1.0], np.float32),
              "seed": np.array([1], np.int64)}
    return {**inputs, **overrides}


def tensor(dtype: int, dims: list[int], **fields) -> tensor_pb2.TensorProto:
    """A TensorProto written field by field, as a careless or hostile client could."""
    proto = tensor_pb2.TensorProto(dtype=dtype, **fields)
    for size in dims:
        proto.tensor_shape.dim.add(size=size)
    return proto


def predict(message: predict_pb2.PredictRequest) -> Callable[[dict], tuple[str, str]]:
    def send(served):
        with grpc.insecure_channel(served["target"]) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            try:
                stub.Predict(message, timeout=60)
            except grpc.RpcError as error:
                return error.code().name, error.details()
        return "OK", ""
    return send


def rpc(method: str, message) -> Callable[[dict], tuple[str, str]]:
    def send(served):
        with grpc.insecure_channel(served["target"]) as channel:
            stub_class = (model_service_pb2_grpc.ModelServiceStub if method in ("GetModelStatus",)
                          else prediction_service_pb2_grpc.PredictionServiceStub)
            try:
                getattr(stub_class(channel), method)(message, timeout=60)
            except grpc.RpcError as error:
                return error.code().name, error.details()
        return "OK", ""
    return send


def reload(models: str) -> Callable[[dict], tuple[str, str]]:
    """A HandleReloadConfigRequest (its `config` entries as text proto, `{models}` the model root);
    a reload that fails fails the call, with the code and message (as in TensorFlow Serving)."""
    def send(served):
        config = text_format.Parse("model_config_list {" + models.replace("{models}", served["models"]) + "}",
                                   model_server_config_pb2.ModelServerConfig())
        with grpc.insecure_channel(served["target"]) as channel:
            try:
                model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
                    model_management_pb2.ReloadConfigRequest(config=config), timeout=60)
            except grpc.RpcError as error:
                return error.code().name, error.details()
        return "OK", ""
    return send


SERVED = ('config { name: "text" base_path: "{models}/text" model_platform: "tensorflow" } '
          'config { name: "stock" base_path: "{models}/stock" model_platform: "tensorflow" }')


def rest(path: str) -> Callable[[dict], tuple[str, str]]:
    def send(served):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{served['rest_port']}{path}", timeout=60) as answer:
                return f"HTTP {answer.status}", ""
        except urllib.error.HTTPError as error:
            return f"HTTP {error.code}", json.loads(error.read())["error"]
    return send


NOT_UTF8 = np.array([b"caf\xe9 au lait"], dtype=object)  # Latin-1, not UTF-8

SERVER_CASES = [
    Case("server (gRPC)", "an empty PredictRequest", "INVALID_ARGUMENT", "Missing ModelSpec",
         predict(predict_pb2.PredictRequest())),
    Case("server (gRPC)", "a PredictRequest with an empty model name", "INVALID_ARGUMENT", "model_spec.name is empty",
         predict(predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="")))),
    Case("server (gRPC)", "an unknown model", "NOT_FOUND", "model 'nope' not found", predict(request("nope", text=PROMPT))),
    Case("server (gRPC)", "a version that is not loaded", "NOT_FOUND", "version 99 is not loaded",
         predict(request(version=99, text=PROMPT))),
    Case("server (gRPC)", "an unknown version label", "INVALID_ARGUMENT", "Unrecognized servable version label: gold",
         predict(request(label="gold", text=PROMPT))),
    Case("server (gRPC)", "an unknown signature", "FAILED_PRECONDITION", 'Serving signature key "classify_me" not found',
         predict(request(signature="classify_me", text=PROMPT))),
    Case("server (gRPC)", "an input missing", "INVALID_ARGUMENT", "missing input 'seed'",
         predict(request(signature="generate", **{k: v for k, v in generate_inputs().items() if k != "seed"}))),
    Case("server (gRPC)", "an unknown input", "INVALID_ARGUMENT", "unknown input 'colour'",
         predict(request(text=PROMPT, colour=np.array([1])))),
    Case("server (gRPC)", "a dtype mismatch (float32 where the model takes strings)", "INVALID_ARGUMENT",
         "input 'text' must be string, got float32", predict(request(text=np.array([1.5], np.float32)))),
    Case("server (gRPC)", "an unknown dtype number in the TensorProto", "INVALID_ARGUMENT",
         "input 'text' has an unknown dtype enum 999", predict(request(text=tensor(999, [1])))),
    Case("server (gRPC)", "a malformed TensorProto (7 bytes of content for 10 float32s)", "INVALID_ARGUMENT",
         "input 'window' is not a valid tensor", predict(request("stock", window=tensor(1, [1, 10, 1],
                                                                                         tensor_content=b"1234567")))),
    Case("server (gRPC)", "a TensorProto with a negative dimension", "INVALID_ARGUMENT",
         "input 'window' has a shape with unknown or negative sizes",
         predict(request("stock", window=tensor(1, [1, -10, 1])))),
    Case("server (gRPC)", "a TensorProto declaring 10^12 elements in a few bytes", "INVALID_ARGUMENT",
         "over the limit of 4,194,304 per request", predict(request("stock", window=tensor(1, [10**6, 10**6, 1])))),
    Case("server (gRPC)", "one 1 MB string declared to fill 256 prompts (256 MB once decoded)", "INVALID_ARGUMENT",
         "bytes of strings once decoded, over the limit of 16,777,216",
         predict(request(text=tensor(7, [256], string_val=[b"x" * 1024 * 1024])))),
    Case("server (gRPC)", "a batch of 300 prompts (TensorFlow Serving has no row limit)", "OK", "",
         predict(request(text=np.array([b"a"] * 300, dtype=object)))),
    Case("server (gRPC)", "max_tokens beyond the limit", "INVALID_ARGUMENT", "max_tokens must be <= 10000",
         predict(request(signature="generate", **generate_inputs(max_tokens=np.array([10_001], np.int32))))),
    Case("server (gRPC)", "a negative temperature", "INVALID_ARGUMENT", "temperature must be > 0",
         predict(request(signature="generate", **generate_inputs(temperature=np.array([-1.0], np.float32))))),
    Case("server (gRPC)", "non-UTF-8 bytes in a string tensor", "INVALID_ARGUMENT", "text must be valid UTF-8",
         predict(request(text=NOT_UTF8))),
    Case("server (gRPC)", "NaN in a price window", "INVALID_ARGUMENT", "window holds NaN or Inf",
         predict(request("stock", window=np.full((1, 10, 1), np.nan, np.float32)))),
    Case("server (gRPC)", "a negative price in a window", "INVALID_ARGUMENT", "window holds a price <= 0",
         predict(request("stock", window=np.full((1, 10, 1), -3.0, np.float32)))),
    Case("server (gRPC)", "a window of the wrong length", "INVALID_ARGUMENT",
         "input 'window' must have shape [None, 10, 1]", predict(request("stock", window=np.ones((1, 9, 1), np.float32)))),
    Case("server (gRPC)", "an output_filter naming an unknown output", "INVALID_ARGUMENT",
         "output tensor alias not found in signature: logits", predict(request(output_filter=("logits",), text=PROMPT))),
    Case("server (gRPC)", "an oversized message (17 MB)", "RESOURCE_EXHAUSTED", "larger than max",
         predict(request(text=np.array([b"x" * (17 * 1024 * 1024)], dtype=object)))),
    Case("server (gRPC)", "GetModelMetadata for a field other than signature_def", "INVALID_ARGUMENT",
         "Metadata field graph is not supported",
         rpc("GetModelMetadata", get_model_metadata_pb2.GetModelMetadataRequest(
             model_spec=model_pb2.ModelSpec(name="text"), metadata_field=["graph"]))),
    Case("server (gRPC)", "GetModelStatus of an unknown model", "NOT_FOUND", "Could not find any versions of model nope",
         rpc("GetModelStatus", get_model_status_pb2.GetModelStatusRequest(model_spec=model_pb2.ModelSpec(name="nope")))),
    Case("server (gRPC)", "Classify without a model_spec", "INVALID_ARGUMENT", "Missing ModelSpec",
         rpc("Classify", classification_pb2.ClassificationRequest())),
    Case("server (gRPC)", "Classify on a Predict signature (the models have Predict signatures only)",
         "INVALID_ARGUMENT", "Expected one or two output Tensors, found 3",
         rpc("Classify", classification_pb2.ClassificationRequest(model_spec=model_pb2.ModelSpec(name="text")))),
    Case("server (reload)", "a reload pointing a model at a directory outside the model roots", "INVALID_ARGUMENT",
         "outside the allowed model roots", reload('config { name: "text" base_path: "/etc" }')),
    Case("server (reload)", "a reload escaping the model root with '..'", "INVALID_ARGUMENT",
         "outside the allowed model roots", reload('config { name: "text" base_path: "{models}/../../.." }')),
    Case("server (reload)", "a reload with a model name holding a path", "INVALID_ARGUMENT",
         "model name '../text' is not allowed", reload('config { name: "../text" base_path: "{models}/text" }')),
    Case("server (reload)", "a reload labelling a version that is not loaded", "FAILED_PRECONDITION",
         "label 'canary' of model 'text' points at version 7, which is not available",
         reload(SERVED.replace('tensorflow" }', 'tensorflow" version_labels { key: "canary" value: 7 } }', 1))),
    Case("server (REST)", "a path traversal in the URL", "HTTP 400", "Malformed request: GET /v1/models/../../etc",
         rest("/v1/models/../../etc/passwd")),
    Case("server (REST)", "an encoded path traversal as the model name", "HTTP 404",
         "model '../../etc/passwd' not found", rest("/v1/models/..%2F..%2Fetc%2Fpasswd/metadata")),
]


# ----------------------------------------------------------------------------- client
def client_call(call: Callable[[Any], Any], **client_options) -> Callable[[dict], tuple[str, str]]:
    def send(served):
        from serving.prediction_client import PredictionClient, ServingCallError

        try:
            with PredictionClient(client_options.pop("target", served["target"]), "text", **client_options) as client:
                call(client)
        except ServingCallError as error:
            return error.code.name, error.details
        except ValueError as error:
            return "ValueError", str(error)
        return "OK", ""
    return send


def client_cli(*argv: str) -> Callable[[dict], tuple[str, str]]:
    def send(served):
        result = subprocess.run([sys.executable, "-m", "serving.client", "--target", served["target"], *argv],
                                cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 1, result.stderr
        return f"exit {result.returncode}", result.stderr.strip()
    return send


CLIENT_CASES = [
    Case("client", "a version and a label at once", "ValueError", "pass a version or a label, not both",
         client_call(lambda c: None, version=1, label="stable")),
    Case("client", "a server that is not there (1 s deadline)", "DEADLINE_EXCEEDED", "Deadline Exceeded",
         client_call(lambda c: c.next_token(["a"]), target=f"127.0.0.1:{free_port()}", timeout=1.0)),
    Case("client", "generate with max_tokens -1", "INVALID_ARGUMENT", "max_tokens must be >= 0",
         client_call(lambda c: c.generate("a", max_tokens=-1))),
    Case("client CLI", "next-value with a value that is not a number", "exit 2",
         "values must be comma-separated numbers, got 'x'", client_cli("next-value", "--model", "stock", "1,2,x")),
]


# ----------------------------------------------------------------------------- CLIs
def pipeline(module: str, *argv: str, files: dict[str, bytes] | None = None,
             expect_written: tuple[str, ...] = ()) -> Callable[[Path], tuple[str, str]]:
    """Run a pipeline's CLI in-process in an empty directory; check what it wrote."""
    def send(workdir: Path):
        import importlib

        from pipelines import cli

        for name, content in (files or {}).items():
            (workdir / name).write_bytes(content)
        before = {p.name for p in workdir.iterdir()}
        code = cli.run_main(importlib.import_module(module).main, list(argv))
        written = {p.name for p in workdir.iterdir()} - before
        if code == 0:
            for name in expect_written:
                assert (workdir / name).exists(), f"{name} was not written"
        else:
            assert not written, f"an error left {written} behind"
        return f"exit {code}", ""
    return send


def hello_prices(lines: int = 160) -> bytes:
    """A Yahoo-style CSV saved by a Windows tool: UTF-8 BOM and CRLF line ends."""
    rows = ["Date,Open,High,Low,Close,Adj Close,Volume"]
    price = 100.0
    for day in range(lines):
        price *= 1.0 + 0.01 * np.sin(day / 3.0)
        rows.append(f"2021-{1 + day // 28:02d}-{1 + day % 28:02d},{price:.2f},{price + 1:.2f},{price - 1:.2f},"
                    f"{price:.2f},{price:.2f},{1000 + day}")
    return ("\ufeff" + "\r\n".join(rows) + "\r\n").encode("utf-8")


TINY = ("--units", "4", "--epochs", "1", "--runs-dir", "runs")
CLI_CASES = [
    Case("text CLI", "a corpus of a single repeated character", "works", "trains and exports",
         pipeline("pipelines.text", "--corpus", "a.txt", "--seq-len", "8", *TINY, "--output", "saved_models/a",
                  "--max-tokens", "5", files={"a.txt": b"a" * 400}, expect_written=("saved_models", "runs"))),
    Case("text CLI", "a corpus in Latin-1, not UTF-8", "exit 2", "not UTF-8: invalid byte 0xe9 at byte offset 3",
         pipeline("pipelines.text", "--corpus", "l1.txt", files={"l1.txt": b"caf\xe9 " * 200})),
    Case("text CLI", "a negative temperature", "exit 2", "--temperature must be > 0",
         pipeline("pipelines.text", "--corpus", "c.txt", "--temperature", "-0.5", files={"c.txt": b"abc " * 200})),
    Case("series CLI", "a CSV with a BOM and Windows line endings", "works", "loads, trains and exports",
         pipeline("pipelines.series", "--csv", "p.csv", "--window", "5", *TINY, "--output", "saved_models/p",
                  files={"p.csv": hello_prices()}, expect_written=("saved_models", "runs"))),
    Case("series CLI", "NaN cells in a CSV above the forward-fill limit", "exit 2",
         "1 missing cells (50.0%) is above the 5% that may be forward-filled",
         pipeline("pipelines.series", "--csv", "n.csv", files={"n.csv": b"Date,Close\n2020-01-02,1\n2020-01-03,nan\n"})),
    Case("series CLI", "a CSV of several tickers without --ticker", "exit 2",
         "holds several series; pick one with --ticker (A, B)",
         pipeline("pipelines.series", "--csv", "t.csv",
                  files={"t.csv": b"Date,Ticker,Close\n2020-01-02,A,1\n2020-01-02,B,2\n"})),
    Case("gradients CLI", "report on a run trained without the monitor", "exit 2", "has no gradients.csv",
         pipeline("pipelines.gradients", "report", ".")),
]

TABLE = SERVER_CASES + CLIENT_CASES + CLI_CASES


def markdown() -> str:
    rows = ["| # | where | bad input | answer | message (fragment) |", "|---|---|---|---|---|"]
    rows += [f"| {i} | {c.where} | {c.bad_input} | {c.answer} | `{c.message}` |" for i, c in enumerate(TABLE, 1)]
    return "\n".join(rows)


# ----------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def served(exported_lstm, exported_stock, tmp_path_factory):
    models, config = publish_text_and_stock(tmp_path_factory.mktemp("bad-input"), exported_lstm[1], exported_stock[1])
    rest_port = free_port()
    process, target = start_server(config, "--file_system_poll_wait_seconds", "0", "--rest_api_port", str(rest_port))
    yield {"target": target, "rest_port": rest_port, "models": str(models), "process": process}
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


def still_serving(served) -> None:
    from serving.prediction_client import PredictionClient

    assert served["process"].poll() is None, "the server died"
    with PredictionClient(served["target"], "text") as client:
        assert client.next_token(["still here"])[0]
    with PredictionClient(served["target"], "stock") as client:
        assert np.isfinite(client.next_value(np.full((1, 10, 1), 25.0, np.float32))["next_value"]).all()


@pytest.mark.parametrize("case", SERVER_CASES + CLIENT_CASES, ids=lambda c: c.bad_input)
def test_server_and_client_answer_with_the_right_code_and_keep_serving(served, case):
    answer, message = case.send(served)
    assert answer == case.answer, (answer, message)
    assert case.message in message and "\n" not in message, message
    still_serving(served)


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda c: c.bad_input)
def test_clis_answer_in_one_line_and_leave_nothing_half_written(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    answer, _ = case.send(tmp_path)
    err = capsys.readouterr().err
    if case.answer == "works":
        assert answer == "exit 0", err
        return
    assert answer == case.answer
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert case.message in err


def test_the_table_is_long_enough_and_documented():
    assert len(TABLE) >= 30
    assert {case.where.split()[0] for case in TABLE} >= {"text", "series", "gradients", "client", "server"}
    doc = (ROOT / "docs" / "bad-input.md").read_text()
    assert markdown() in doc, "docs/bad-input.md is out of date: python tests/test_bad_input.py prints the table"


if __name__ == "__main__":
    print(markdown())
