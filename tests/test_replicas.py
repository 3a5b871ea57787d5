"""Replicated serving: one client, two embedded servers, round-robin, and a replica killed mid-run."""

from __future__ import annotations

import re
import signal
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from serving.prediction_client import channel_target

from conftest import LoopingClients, copy_version, free_port, start_server

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["the quick", "a lazy dog", "seven wizards"]


def ok_requests(rest_port: int) -> int:
    """Predict requests a replica answered OK, from its Prometheus metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/monitoring/prometheus/metrics", timeout=30) as r:
        text = r.read().decode()
    return int(sum(float(v) for v in re.findall(r'rnn_serving_requests_total\{code="OK"[^}]*\} ([0-9.e+]+)', text)))


@pytest.fixture
def replicas(exported_lstm, tmp_path):
    copy_version(exported_lstm[1], tmp_path / "models" / "text", 1)
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "text" base_path: "{tmp_path / "models" / "text"}" '
                      'model_platform: "tensorflow" } }')
    servers = []
    try:
        for _ in range(2):
            rest_port = free_port()
            process, target = start_server(config, "--rest_api_port", str(rest_port), "--monitoring_config_file",
                                           str(ROOT / "serving" / "monitoring.config"))
            servers.append({"process": process, "target": target, "rest_port": rest_port})
        yield servers
    finally:
        stop_all(servers)


def stop_all(servers: list[dict]) -> None:
    for server in servers:
        if server["process"].poll() is None:
            server["process"].send_signal(signal.SIGTERM)
            server["process"].wait(timeout=30)


def test_several_targets_become_one_round_robin_channel_target():
    assert channel_target("localhost:8500") == "localhost:8500"
    assert channel_target("dns:///serving.example:8500") == "dns:///serving.example:8500"
    assert channel_target(["127.0.0.1:8500", "127.0.0.1:8501"]) == "ipv4:127.0.0.1:8500,127.0.0.1:8501"
    assert channel_target("127.0.0.1:1,127.0.0.1:2") == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert channel_target(["[::1]:8500", "[::1]:8501"]) == "ipv6:[::1]:8500,[::1]:8501"
    with pytest.raises(ValueError, match="must be host:port"):
        channel_target(["127.0.0.1:8500", "no-port"])


def test_requests_spread_over_both_replicas_and_a_killed_one_costs_nothing(replicas, exported_lstm):
    expected = tf.saved_model.load(str(exported_lstm[1])).signatures["serving_default"]
    truth = {p: expected(text=tf.constant([p]))["top_k_probabilities"].numpy()[0] for p in PROMPTS}
    with LoopingClients([server["target"] for server in replicas], PROMPTS, timeout=30) as clients:
        deadline = time.monotonic() + 120
        while min(ok_requests(server["rest_port"]) for server in replicas) < 20:  # both replicas answer
            assert time.monotonic() < deadline, [ok_requests(s["rest_port"]) for s in replicas]
            time.sleep(0.1)
        replicas[0]["process"].send_signal(signal.SIGKILL)  # a replica dies mid-run
        replicas[0]["process"].wait(timeout=30)
        killed_at, survivor_before = time.monotonic(), ok_requests(replicas[1]["rest_port"])
        while clients.answered_after(killed_at) < 100:
            assert time.monotonic() < deadline + 60, "too few answers after the kill"
            time.sleep(0.05)
    assert not clients.errors, clients.errors[:3]
    assert ok_requests(replicas[1]["rest_port"]) - survivor_before >= 100  # the survivor took over
    for _, prompt, probabilities in clients.answers:
        np.testing.assert_allclose(probabilities, truth[prompt], atol=1e-5)
