"""The embedded server over real gRPC on loopback, queried by the client, as another process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf

from serving.prediction_client import PredictionClient, ServingCallError

from conftest import copy_version, free_port, start_server

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dirs(exported_lstm, exported_stock, tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    text_base = root / "saved_models" / "text"
    copy_version(exported_lstm[1], text_base, 1)
    stock_version = copy_version(exported_stock[1], root / "saved_models" / "stock", 1)
    config = root / "models.config"
    config.write_text(f"""model_config_list {{
      config {{ name: "text" base_path: "{text_base}" model_platform: "tensorflow"
               model_version_policy {{ latest {{ num_versions: 2 }} }}
               version_labels {{ key: "stable" value: 1 }} }}
      config {{ name: "stock" base_path: "{root / 'saved_models' / 'stock'}" model_platform: "tensorflow" }}
    }}""")
    return {"root": root, "config": config, "text_base": text_base, "text_v1": exported_lstm[1],
            "stock_version": stock_version, "series": exported_stock[2]}


REST_PORT = 0  # picked when the server starts: a port picked at import could be taken by then


@pytest.fixture(scope="module")
def server(model_dirs):
    global REST_PORT
    REST_PORT = free_port()
    process, target = start_server(model_dirs["config"], "--file_system_poll_wait_seconds", "0.3",
                                   "--rest_api_port", str(REST_PORT), "--monitoring_config_file",
                                   str(ROOT / "serving" / "monitoring.config"))
    yield target
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


def rest(path: str, body=None) -> tuple[int, dict]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(f"http://127.0.0.1:{REST_PORT}{path}", data=data,
                                     method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_next_token_and_generate_equal_the_in_process_model(server, model_dirs):
    local = tf.saved_model.load(str(model_dirs["text_v1"]))
    with PredictionClient(server, "text") as client:
        remote = client.predict({"text": np.array([b"The quick", b""], dtype=object)})
        here = local.signatures["serving_default"](text=tf.constant(["The quick", ""]))
        np.testing.assert_allclose(remote["probabilities"], here["probabilities"].numpy(), atol=1e-5)
        tokens = client.next_token(["The quick"])[0]
        assert [t for t, _ in tokens] == [t.decode() for t in here["top_k_tokens"].numpy()[0]]
        generated = client.generate("The ", max_tokens=40, temperature=0.7, seed=3)
        expected = local.signatures["generate"](
            text=tf.constant(["The "]), max_tokens=tf.constant([40]), temperature=tf.constant([0.7]),
            seed=tf.constant([3], tf.int64))["generated"].numpy()[0].decode()
        assert generated == expected and len(generated) == 40
        assert len(client.generate("", max_tokens=5, top_k=1)) == 5


def test_next_value_equals_the_in_process_model(server, model_dirs):
    local = tf.saved_model.load(str(model_dirs["stock_version"]))
    windows = model_dirs["series"].values[-10:][None].astype(np.float32)
    with PredictionClient(server, "stock") as client:
        remote = client.next_value(windows)
    here = local.signatures["serving_default"](window=tf.constant(windows))
    np.testing.assert_allclose(remote["next_value"], here["next_value"].numpy(), rtol=1e-5)
    assert remote["quantiles"].shape == (1, 1, 3)


def test_metadata_and_status(server):
    with PredictionClient(server, "text") as client:
        metadata = client.metadata()
        assert metadata["generate"]["inputs"] == {"text": ("string", [-1]), "max_tokens": ("int32", [-1]),
                                                  "temperature": ("float32", [-1]), "seed": ("int64", [-1])}
        assert set(metadata["serving_default"]["outputs"]) == {"probabilities", "top_k_tokens",
                                                               "top_k_probabilities"}
        assert {"version": 1, "state": "AVAILABLE", "error": ""} in client.status()
    with PredictionClient(server, "text", label="stable") as client:
        assert client.next_token(["a"])


def test_sigterm_stops_the_server_gracefully(model_dirs):
    process, target = start_server(model_dirs["config"])
    with PredictionClient(target, "text") as client:
        assert client.next_token(["x"])
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert "stopped" in process.stdout.read()


def test_a_port_in_use_is_a_clean_error(model_dirs, server):
    port = server.split(":")[1]
    result = subprocess.run([sys.executable, "-m", "serving.server", "--model_config_file", str(model_dirs["config"]),
                             "--port", port], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_a_bad_reload_request_is_refused_and_changes_nothing(server):
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    for _ in range(2):
        config.model_config_list.config.add(name="twin", base_path="/nowhere")
    with grpc.insecure_channel(server) as channel, pytest.raises(grpc.RpcError) as refused:
        model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
            model_management_pb2.ReloadConfigRequest(config=config), timeout=60)
    # As in TensorFlow Serving, a failed reload fails the call itself with the code (model_service_impl.cc).
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "appears twice" in refused.value.details()
    with PredictionClient(server, "text") as client:
        assert client.next_token(["still the old config"])


def test_client_cli_against_the_server(server):
    result = subprocess.run([sys.executable, "-m", "serving.client", "--target", server, "generate", "--model", "text",
                             "--max-tokens", "12", "--seed", "1", "The "],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("The ") and len(result.stdout.rstrip("\n")) == 16
    missing = subprocess.run([sys.executable, "-m", "serving.client", "--target", server, "status", "--model", "x"],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr


def test_with_batching_concurrent_generations_equal_unbatched_ones(model_dirs):
    process, target = start_server(model_dirs["config"], "--enable_batching=true", "--batching_parameters_file",
                                   str(ROOT / "serving" / "batching.config"))
    local = tf.saved_model.load(str(model_dirs["text_v1"]))
    prompts = [("The ", 7), ("A lazy", 11), ("", 3), ("Ωμέγα", 5)] * 4
    results = [None] * len(prompts)

    def ask(i):
        with PredictionClient(target, "text") as client:
            results[i] = client.generate(prompts[i][0], max_tokens=20 + i, temperature=0.9, seed=prompts[i][1])

    try:
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for i, (prompt, seed) in enumerate(prompts):
            alone = local.signatures["generate"](
                text=tf.constant([prompt]), max_tokens=tf.constant([20 + i]), temperature=tf.constant([0.9]),
                seed=tf.constant([seed], tf.int64))["generated"].numpy()[0].decode()
            assert results[i] == alone
        with PredictionClient(target, "text") as client:  # a faulty request in a batch fails alone
            with pytest.raises(ServingCallError, match="temperature must be > 0"):
                client.generate("x", temperature=0.0)
            assert list(client.predict({"rows": np.array([0, 0], np.int32)}, "metadata")["seq_len"]) == [20, 20]
            with pytest.raises(ServingCallError, match="equal 0th-dimension size"):
                client.predict({"text": np.array([b"a", b"b"], dtype=object), "max_tokens": np.array([1], np.int32),
                                "temperature": np.array([1.0], np.float32), "seed": np.array([1], np.int64)},
                               "generate")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_rest_api_status_metadata_and_both_predict_formats(server, model_dirs):
    status, body = rest("/v1/models/text")
    assert status == 200 and {"version": "1", "state": "AVAILABLE",
                              "status": {"error_code": "OK", "error_message": ""}} in body["model_version_status"]
    status, body = rest("/v1/models/text/labels/stable/metadata")
    assert status == 200 and "generate" in body["metadata"]["signature_def"]["signature_def"]

    status, body = rest("/v1/models/text/versions/1:predict", {"instances": ["The quick", ""]})
    assert status == 200 and len(body["predictions"]) == 2
    with PredictionClient(server, "text", version=1) as client:
        over_grpc = client.predict({"text": np.array([b"The quick"], dtype=object)})
    np.testing.assert_allclose(body["predictions"][0]["probabilities"], over_grpc["probabilities"][0], atol=1e-6)
    assert body["predictions"][0]["top_k_tokens"] == list(over_grpc["top_k_tokens"][0])

    request = {"signature_name": "generate",
               "inputs": {"text": ["The "], "max_tokens": [25], "temperature": [0.7], "seed": [3]}}
    status, body = rest("/v1/models/text:predict", request)
    with PredictionClient(server, "text", version=1) as client:
        assert status == 200 and body["outputs"] == [client.generate("The ", 25, 0.7, 3)]

    window = model_dirs["series"].values[-10:].tolist()
    status, body = rest("/v1/models/stock:predict", {"instances": [window]})
    assert status == 200 and len(body["predictions"]) == 1 and len(body["predictions"][0]["next_value"]) == 1


def test_prometheus_metrics_count_requests_by_code(server):
    with PredictionClient(server, "text") as client:
        client.next_token(["count me"])
        with pytest.raises(ServingCallError):
            client.predict({"text": np.array([b"a"], dtype=object)}, "no_such_signature")
    with urllib.request.urlopen(f"http://127.0.0.1:{REST_PORT}/monitoring/prometheus/metrics", timeout=30) as r:
        text = r.read().decode()
    assert 'rnn_serving_requests_total{code="OK",model="text",signature="serving_default"}' in text
    assert 'rnn_serving_requests_total{code="FAILED_PRECONDITION",model="text",signature="no_such_signature"}' in text
    assert 'rnn_serving_request_latency_seconds_bucket{' in text and 'rnn_serving_loaded_versions{model="text"}' in text


@pytest.mark.parametrize("path, body, code, message", [
    ("/v1/models/nope:predict", {"instances": ["a"]}, 404, "model 'nope' not found"),
    ("/v1/models/text/versions/9", None, 404, "Could not find version 9 of model text"),
    ("/v1/models/text:predict", b"{not json", 400, "JSON Parse error"),
    ("/v1/models/text:predict", {"instances": ["a"], "inputs": {"text": ["a"]}}, 400,
     "expecting only one of 'inputs' or 'instances'"),
    ("/v1/models/text:predict", {"signature_name": "generate", "inputs": {"text": ["a"], "max_tokens": [3],
                                 "temperature": [0.0], "seed": [1]}}, 400, "temperature must be > 0"),
    ("/v1/models/text:predict", {"signature_name": "generate", "inputs": {"text": ["a"], "max_tokens": ["x"],
                                 "temperature": [1.0], "seed": [1]}}, 400, "is not of expected type: int32"),
    ("/v1/models/stock:predict", {"instances": [[[1.0]] * 9]}, 400, "must have shape [None, 10, 1]"),
    ("/v2/everything", None, 404, "no such endpoint"),
])
def test_rest_errors(server, path, body, code, message):
    status, answer = rest(path, body)
    assert status == code and message in answer["error"]


def test_the_demo_serves_and_queries_both_models(model_dirs):
    result = subprocess.run([sys.executable, "-m", "serving.demo", "--model_config_file", str(model_dirs["config"])],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("serving on 127.0.0.1:")
    assert any(line.startswith("text  next token after 'The '") for line in lines)
    assert any(line.startswith("text  generated: 'The ") for line in lines)
    stock = next(line for line in lines if line.startswith("stock next value after 2013-03-01"))
    assert "interval [" in stock


def test_handle_reload_config_request_moves_labels_and_models(server, model_dirs):
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc
    from tensorflow_serving.config import model_server_config_pb2

    from serving.config import read_model_config

    config = read_model_config(model_dirs["config"])
    text = next(c for c in config.model_config_list.config if c.name == "text")
    with PredictionClient(server, "text") as client:
        newest = max(row["version"] for row in client.status() if row["state"] == "AVAILABLE")
    text.version_labels["canary"] = newest
    with grpc.insecure_channel(server) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        reply = stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config), timeout=60)
        assert reply.status.error_code == 0
    with PredictionClient(server, "text", label="canary") as client:
        assert client.next_token(["x"])
    only_text = model_server_config_pb2.ModelServerConfig()
    only_text.model_config_list.config.append(text)
    with grpc.insecure_channel(server) as channel:
        model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
            model_management_pb2.ReloadConfigRequest(config=only_text), timeout=60)
    with PredictionClient(server, "stock") as client, pytest.raises(ServingCallError, match="not found"):
        client.next_value(np.ones((1, 10, 1), np.float32))
    with grpc.insecure_channel(server) as channel:  # put the stock model back for the other tests
        model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
            model_management_pb2.ReloadConfigRequest(config=read_model_config(model_dirs["config"])), timeout=60)


# These change the served versions: they run last.

def test_a_new_version_is_picked_up_under_load_with_no_failed_request(server, model_dirs):
    failures, answered, stop = [], [], threading.Event()

    def hammer():
        with PredictionClient(server, "text", timeout=30) as client:
            while not stop.is_set():
                try:
                    client.next_token(["The "])
                    answered.append(1)
                except ServingCallError as error:  # pragma: no cover - the assertion below reports it
                    failures.append(error)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        for version in (2, 3):  # with latest {2}: 2 loads, then 3 loads and 1 unloads
            copy_version(model_dirs["text_v1"], model_dirs["text_base"], version)
            with PredictionClient(server, "text") as client:
                deadline = time.time() + 60
                while {"version": version, "state": "AVAILABLE", "error": ""} not in client.status():
                    assert time.time() < deadline, client.status()
                    time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == [] and len(answered) > 20
    with PredictionClient(server, "text") as client:
        states = {row["version"]: row["state"] for row in client.status()}
        assert states == {1: "END", 2: "AVAILABLE", 3: "AVAILABLE"}  # latest {2}: version 1 was unloaded
        assert client.predict({"text": np.array([b"a"], dtype=object)})


def test_an_incomplete_or_broken_version_is_skipped_and_reported(server, model_dirs):
    base = model_dirs["text_base"]
    (base / "7").mkdir()  # being copied: no saved_model.pb yet
    broken = base / ".broken"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a protobuf")
    os.rename(broken, base / "8")
    with PredictionClient(server, "text") as client:
        deadline = time.time() + 60
        while not any(row["version"] == 8 for row in client.status()):
            assert time.time() < deadline
            time.sleep(0.2)
        rows = {row["version"]: row for row in client.status()}
        assert rows[8]["state"] == "END" and rows[8]["error"]
        assert 7 not in rows
        # The broken newest version takes no place in "latest {2}": both good versions still serve.
        assert {v for v, row in rows.items() if row["state"] == "AVAILABLE"} == {2, 3}
        assert client.next_token(["still serving"])  # the loaded versions keep answering
    shutil.rmtree(base / "7")
    shutil.rmtree(base / "8")
