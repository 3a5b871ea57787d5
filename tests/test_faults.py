"""Faults: kill -9 in training and in export, a corrupted version, a server restart under load.

Every fault is real: a separate process killed with SIGKILL at a random
moment (the moment is printed in the assertion message, so a failure can be
replayed), real files truncated, a real server restarted on the same port.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from serving.models import complete_versions
from serving.prediction_client import PredictionClient

from conftest import LoopingClients, copy_version, free_port, start_server

ROOT = Path(__file__).resolve().parents[1]
RNG = random.Random()  # deliberately unseeded: each run kills at another moment


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# ----------------------------------------------------------------------------- training
def train_command(corpus: Path, workdir: Path, run_id: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.text", "--corpus", str(corpus), "--units", "16", "--seq-len", "20",
            "--epochs", "6", "--batch-size", "32", "--steps-per-epoch", "30", "--patience", "0", "--seed", "7",
            "--runs-dir", str(workdir / "runs"), "--run-id", run_id, "--output", str(workdir / "saved_models" / run_id),
            "--max-tokens", "5"]


def final_summary(workdir: Path, run_id: str) -> dict:
    return json.loads((workdir / "runs" / run_id / "summary.json").read_text())


def test_kill_9_during_training_then_rerun_resumes_and_matches_an_uninterrupted_run(corpus_file, tmp_path):
    uninterrupted = subprocess.run(train_command(corpus_file, tmp_path, "whole"), cwd=ROOT, capture_output=True,
                                   text=True, timeout=300)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]

    process = subprocess.Popen(train_command(corpus_file, tmp_path, "killed"), cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = tmp_path / "runs" / "killed" / "history.csv"
    epochs_done = RNG.randint(1, 4)  # a random step: after a random epoch, a random time into the next
    wait_for(lambda: history.is_file() and len(history.read_text().splitlines()) > epochs_done
             or process.poll() is not None, 300, f"epoch {epochs_done}")
    delay = RNG.uniform(0.0, 0.15)  # well inside the next epoch, away from its backup save
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    when = f"killed {delay:.2f} s after epoch {epochs_done}"
    backup = tmp_path / "runs" / "killed" / "backup"
    assert backup.is_dir() and any(backup.iterdir()), f"training had ended: {when}"

    rerun = subprocess.run(train_command(corpus_file, tmp_path, "killed"), cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    whole, resumed = final_summary(tmp_path, "whole"), final_summary(tmp_path, "killed")
    assert resumed["resumed"] and resumed["epochs_run"] < 6, when  # the rerun did not start over
    assert history.read_text().splitlines()[-1].split(",")[0] == "5", when  # ... and ended at the last epoch
    # Same seed, same data; the epochs after the resume draw other window offsets, hence a tolerance.
    assert resumed["val_loss_nats_per_token"] == pytest.approx(whole["val_loss_nats_per_token"], rel=0.01), when
    assert (tmp_path / "saved_models" / "killed" / "1" / "saved_model.pb").is_file()


# ----------------------------------------------------------------------------- export
EXPORT_LOOP = """
import sys
from pathlib import Path
import keras
from model.builders import build_next_token_model
from model.config import ModelConfig
from model.text_export import export_text_model
vocabulary = list("abcdefgh ")
model = build_next_token_model(len(vocabulary) + 2, ModelConfig(units=8, embedding_dim=4))
print("ready", flush=True)
while True:
    export_text_model(model, Path(sys.argv[1]), vocabulary, "char", [1] * len(vocabulary), 10)
    print("exported", flush=True)
"""


def test_kill_9_during_export_never_leaves_a_partial_version_visible(tmp_path):
    base = tmp_path / "saved_models" / "text"
    base.mkdir(parents=True)
    config = tmp_path / "models.config"  # a server polls the base path all along, as in production
    config.write_text(f'model_config_list {{ config {{ name: "text" base_path: "{base}" '
                      'model_platform: "tensorflow" model_version_policy { all {} } } }')
    server, target = start_server(config, "--file_system_poll_wait_seconds", "0.1")
    try:
        kill_exports_and_check(base, target)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def kill_exports_and_check(base: Path, target: str) -> None:
    kills = []
    for round_ in range(3):
        process = subprocess.Popen([sys.executable, "-c", EXPORT_LOOP, str(base)], cwd=ROOT,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                   env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert process.stdout.readline().strip() == "ready"
        if round_ == 0:
            assert process.stdout.readline().strip() == "exported"  # time one export, to aim inside the next
        delay = RNG.uniform(0.0, 3.0)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        kills.append(round(delay, 2))
        # What a server sees: every version directory is complete and loads; the rest is hidden.
        for version in complete_versions(base):
            loaded = tf.saved_model.load(str(base / str(version)))
            assert "serving_default" in loaded.signatures, f"version {version} after kills at {kills}"
        visible = [p.name for p in base.iterdir() if not p.name.startswith(".")]
        assert all(name.isdigit() for name in visible), visible
        assert sorted(int(name) for name in visible) == complete_versions(base), (visible, kills)
    assert complete_versions(base), "no export completed"
    # The next export clears what the killed exporters left half-written.
    abandoned = [p.name for p in base.glob(".export-*")]
    from model.export import remove_abandoned_staging
    assert sorted(p.name for p in remove_abandoned_staging(base)) == sorted(abandoned)
    assert not list(base.glob(".export-*"))
    with PredictionClient(target, "text") as client:
        wait_for(lambda: len(client.status()) == len(complete_versions(base)), 60, "the server to see every version")
        failed = [row for row in client.status() if row["error"]]
        assert not failed, f"the server saw a partial version: {failed} (kills at {kills})"


# ----------------------------------------------------------------------------- serving
@pytest.fixture
def one_model_server(exported_lstm, tmp_path):
    base = tmp_path / "saved_models" / "text"
    copy_version(exported_lstm[1], base, 1)
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "text" base_path: "{base}" '
                      'model_platform: "tensorflow" } }')
    port = free_port()
    process, target = start_server(config, "--file_system_poll_wait_seconds", "0.2", port=port)
    served = {"base": base, "config": config, "port": port, "target": target, "process": [process]}
    yield served
    for process in served["process"]:  # the first server, and any restarted one
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)


def test_a_truncated_variables_file_is_reported_and_the_previous_version_keeps_serving(one_model_server,
                                                                                              tmp_path):
    base = one_model_server["base"]
    # A version damaged before it is published (a disk error, an interrupted copy by hand).
    damaged = tmp_path / "damaged"
    copy_version(base / "1", damaged, 2)
    data = next((damaged / "2" / "variables").glob("variables.data-*"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    os.rename(damaged / "2", base / "2")
    with PredictionClient(one_model_server["target"], "text") as client:
        wait_for(lambda: any(row["version"] == 2 for row in client.status()), 60, "version 2 to be tried")
        rows = {row["version"]: row for row in client.status()}
        assert rows[2]["state"] == "END" and rows[2]["error"], rows
        assert rows[1]["state"] == "AVAILABLE"
        assert client.next_token(["the"])[0]
        (answered_by,) = {row["version"] for row in client.status() if row["state"] == "AVAILABLE"}
        assert answered_by == 1


def test_a_server_restart_while_clients_send_costs_no_request_and_no_wrong_answer(one_model_server, exported_lstm):
    expected = tf.saved_model.load(str(exported_lstm[1])).signatures["serving_default"]
    prompts = ["the quick", "a lazy dog", "seven wizards"]
    truth = {p: expected(text=tf.constant([p]))["top_k_probabilities"].numpy()[0] for p in prompts}
    with LoopingClients(one_model_server["target"], prompts) as clients:
        wait_for(lambda: len(clients.answers) >= 20, 60, "answers before the restart")
        time.sleep(RNG.uniform(0.0, 0.5))
        old = one_model_server["process"][0]
        old.send_signal(signal.SIGKILL)  # a crash, not a polite stop
        old.wait(timeout=30)
        killed_at = time.monotonic()
        new, _ = start_server(one_model_server["config"], port=one_model_server["port"])
        one_model_server["process"].append(new)  # the fixture stops it
        wait_for(lambda: clients.answered_after(killed_at) >= 20, 120, "answers after the restart")
    assert not clients.errors, clients.errors[:3]
    for _, prompt, probabilities in clients.answers:
        np.testing.assert_allclose(probabilities, truth[prompt], atol=1e-5)
