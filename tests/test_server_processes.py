"""Several server processes on one port (`--server_processes`): each answers, reloads reach all, metrics sum all."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import text_format
from tensorflow_serving.apis import get_model_status_pb2, model_management_pb2, model_service_pb2_grpc

from serving.metrics import merge_expositions
from serving.prediction_client import PredictionClient

from conftest import copy_version, free_port, start_server

ROOT = Path(__file__).resolve().parents[1]


def config_text(models: Path, names: list[str]) -> str:
    return "model_config_list { " + " ".join(
        f'config {{ name: "{name}" base_path: "{models / name}" model_platform: "tensorflow" }}'
        for name in names) + " }"


@pytest.fixture
def group(exported_lstm, tmp_path):
    """Two processes sharing one gRPC and one REST port, metrics on."""
    models = tmp_path / "models"
    for name in ("text", "other"):
        copy_version(exported_lstm[1], models / name, 1)
    config = tmp_path / "models.config"
    config.write_text(config_text(models, ["text"]))
    rest_port = free_port()
    process, target = start_server(config, "--server_processes", "2", "--rest_api_port", str(rest_port),
                                   "--monitoring_config_file", str(ROOT / "serving" / "monitoring.config"),
                                   "--file_system_poll_wait_seconds", "0")
    yield {"process": process, "target": target, "rest_port": rest_port, "models": models}
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def server_pids(supervisor: int) -> list[int]:
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return [int(pid) for pid in children]


def scrape(rest_port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/monitoring/prometheus/metrics", timeout=30) as r:
        return r.read().decode()


def ok_requests(text: str) -> float:
    return sum(float(v) for v in re.findall(r'rnn_serving_requests_total\{code="OK"[^}]*\} ([0-9.e+]+)', text))


def test_the_processes_share_the_port_and_every_scrape_counts_every_request(group):
    assert len(server_pids(group["process"].pid)) == 2
    before = ok_requests(scrape(group["rest_port"]))
    # One connection each (a local subchannel pool), so that the kernel can hand them to either process.
    clients = [PredictionClient(group["target"], "text", timeout=60, own_connection=True) for _ in range(12)]
    try:
        for client in clients:
            for _ in range(3):
                client.predict({"text": np.array([b"hello"], dtype=object)})
    finally:
        for client in clients:
            client.close()
    texts = [scrape(group["rest_port"]) for _ in range(6)]  # whichever process answers, the same sum
    assert {ok_requests(text) - before for text in texts} == {36.0}
    assert 'rnn_serving_loaded_versions{model="text"} 1' in texts[0]


def test_a_reload_sent_to_one_process_reaches_the_other(group):
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(config_text(group["models"], ["text", "other"]), request.config)
    with grpc.insecure_channel(group["target"]) as channel:
        model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=120)
    for _ in range(8):  # a fresh connection each time: either process may answer; both know the new model
        with grpc.insecure_channel(group["target"], options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
                get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "other"}), timeout=30)
        assert status.model_version_status[0].state == get_model_status_pb2.ModelVersionStatus.AVAILABLE


def test_a_process_that_dies_stops_the_group_with_a_clear_error(exported_lstm, tmp_path):
    copy_version(exported_lstm[1], tmp_path / "models" / "text", 1)
    config = tmp_path / "models.config"
    config.write_text(config_text(tmp_path / "models", ["text"]))
    process, _ = start_server(config, "--server_processes", "2", stderr=subprocess.PIPE)
    children = server_pids(process.pid)
    os.kill(children[1], signal.SIGKILL)
    assert process.wait(timeout=60) == 1
    assert "server process 1 exited with code -9; stopping the others" in process.stderr.read()
    time.sleep(0.5)
    assert not Path(f"/proc/{children[0]}").exists() or "Z" in Path(f"/proc/{children[0]}/stat").read_text().split()[2]


def test_a_taken_port_or_a_bad_config_is_one_clear_error(tmp_path):
    config = tmp_path / "models.config"
    config.write_text("model_config_list { config { name: 'text' no_such_field: 1 } }")
    result = subprocess.run([sys.executable, "-m", "serving.server", "--model_config_file", str(config),
                             "--server_processes", "2", "--port", "0"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("error:") == 1, result.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config.write_text(f"model_config_list {{ config {{ name: 'text' base_path: '{tmp_path}' }} }}")
        result = subprocess.run([sys.executable, "-m", "serving.server", "--model_config_file", str(config),
                                 "--server_processes", "2", "--port", str(taken.getsockname()[1])],
                                cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "pick another port" in result.stderr and "Traceback" not in result.stderr


def test_expositions_merge_counters_histograms_by_sum_and_gauges_by_minimum():
    one = ('# TYPE :tensorflow:serving:request_count counter\n'
           ':tensorflow:serving:request_count{model_name="text",status="OK"} 3\n'
           '# HELP rnn_serving_loaded_versions Versions loaded\n# TYPE rnn_serving_loaded_versions gauge\n'
           'rnn_serving_loaded_versions{model="text"} 2.0\n')
    two = ('# TYPE :tensorflow:serving:request_count counter\n'
           ':tensorflow:serving:request_count{model_name="text",status="OK"} 4\n'
           ':tensorflow:serving:request_count{model_name="text",status="NOT_FOUND"} 1\n'
           '# HELP rnn_serving_loaded_versions Versions loaded\n# TYPE rnn_serving_loaded_versions gauge\n'
           'rnn_serving_loaded_versions{model="text"} 1.0\n')
    assert merge_expositions([one, two]).splitlines() == [
        '# TYPE :tensorflow:serving:request_count counter',
        ':tensorflow:serving:request_count{model_name="text",status="OK"} 7',
        ':tensorflow:serving:request_count{model_name="text",status="NOT_FOUND"} 1',
        '# HELP rnn_serving_loaded_versions Versions loaded', '# TYPE rnn_serving_loaded_versions gauge',
        'rnn_serving_loaded_versions{model="text"} 1']
