"""Run directories, summary.json, resuming an interrupted run, time budgets."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from model.config import UsageError
from pipelines.text_data import batches_per_pass, training_batch_size

from conftest import train_tiny

ROOT = Path(__file__).resolve().parents[1]


def history_epochs(run_dir: Path) -> list[int]:
    with (run_dir / "history.csv").open() as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def test_run_directory_and_summary(exported_lstm):
    summary, _ = exported_lstm
    run_dir = Path(summary["run_dir"])
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert history_epochs(run_dir) == [0, 1]
    assert (run_dir / "best.weights.h5").is_file()
    assert not (run_dir / "backup").exists()  # BackupAndRestore cleans up after a finished run
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    nats = summary["val_loss_nats_per_token"]
    assert 0 < nats < math.log(summary["vocabulary_size"] + 2) + 0.5  # learnt something vs uniform
    assert summary["val_bits_per_token"] == pytest.approx(nats / math.log(2))
    assert summary["val_perplexity"] == pytest.approx(math.exp(nats))
    assert summary["config"]["model"]["cell"] == "lstm"
    assert summary["config"]["optimizer"]["clip"] == "clipnorm"
    assert summary["tokens_per_second"] > 0 and summary["wall_seconds"] > 0
    assert summary["epochs_run"] == 2 and not summary["resumed"]
    # An epoch is one pass over the training windows, drawn from one endless dataset.
    train_ids = np.zeros(summary["train_tokens"], np.int32)
    seq_len, batch_size = summary["config"]["data"]["seq_len"], summary["config"]["training"]["batch_size"]
    per_epoch = batches_per_pass(train_ids, seq_len, batch_size)
    assert summary["steps"] == 2 * per_epoch and summary["steps_per_epoch"] == per_epoch
    assert summary["train_batch_size"] == training_batch_size(train_ids, seq_len, batch_size)


class Interrupt(Exception):
    pass


class InterruptAfterEpoch(keras.callbacks.Callback):
    """Fault injection: the process 'dies' at the end of the given epoch."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise Interrupt(f"killed after epoch {epoch}")


def test_an_interrupted_run_resumes_where_it_stopped(corpus_file, tmp_path):
    with pytest.raises(Interrupt):
        train_tiny(corpus_file, tmp_path, "gru", epochs=4, run_id="resumable",
                   extra_callbacks=[InterruptAfterEpoch(1)])
    run_dir = tmp_path / "runs" / "resumable"
    assert history_epochs(run_dir) == [0, 1] and not (run_dir / "summary.json").exists()
    assert (run_dir / "backup").is_dir()
    layout_before = json.loads((run_dir / "gradient_layers.json").read_text())
    steps_before = len((run_dir / "gradients.csv").read_text().splitlines()) - 1

    summary = train_tiny(corpus_file, tmp_path, "gru", epochs=4, run_id="resumable")
    assert summary["resumed"] and summary["epochs_run"] == 2  # epochs 2 and 3 only
    assert history_epochs(run_dir) == [0, 1, 2, 3]
    # The gradient monitor carries on from where it stopped: same start, steps and epochs continue.
    assert json.loads((run_dir / "gradient_layers.json").read_text()) == layout_before
    with (run_dir / "gradients.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(float(r["step"])) for r in rows] == list(range(1, steps_before + summary["steps"] + 1))
    assert sorted({int(float(r["epoch"])) for r in rows}) == [0, 1, 2, 3]
    assert summary["gradient_health"]["steps_kept"] == len(rows)

    with pytest.raises(UsageError, match="has already finished"):
        train_tiny(corpus_file, tmp_path, "gru", epochs=4, run_id="resumable")


def test_a_backup_truncated_by_a_kill_resumes_from_the_epoch_before(corpus_file, tmp_path):
    with pytest.raises(Interrupt):
        train_tiny(corpus_file, tmp_path, "gru", epochs=4, run_id="torn", extra_callbacks=[InterruptAfterEpoch(1)])
    latest = tmp_path / "runs" / "torn" / "backup" / "latest.weights.h5"
    latest.write_bytes(latest.read_bytes()[:96])  # killed while writing the epoch-1 backup
    summary = train_tiny(corpus_file, tmp_path, "gru", epochs=4, run_id="torn")
    assert summary["resumed"] and summary["epochs_run"] == 3  # from the epoch-0 copy: epochs 1, 2 and 3


class CountSteps(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1


def test_a_run_interrupted_after_training_is_not_trained_again(corpus_file, tmp_path, monkeypatch):
    import model.text_export

    def die(*args, **kwargs):  # the process dies while exporting
        raise Interrupt()

    with monkeypatch.context() as patch:
        patch.setattr(model.text_export, "export_text_model", die)
        with pytest.raises(Interrupt):
            train_tiny(corpus_file, tmp_path, "gru", epochs=2, run_id="exporting")
    run_dir = tmp_path / "runs" / "exporting"
    trained = json.loads((run_dir / "trained.json").read_text())
    assert trained["epochs_run"] == 2 and not (run_dir / "summary.json").exists()

    counter = CountSteps()
    summary = train_tiny(corpus_file, tmp_path, "gru", epochs=2, run_id="exporting", extra_callbacks=[counter])
    assert counter.steps == 0  # not trained again
    assert summary["resumed"] and summary["epochs_run"] == 2 and history_epochs(run_dir) == [0, 1]
    assert (Path(summary["export_path"]) / "saved_model.pb").is_file()


def test_time_budget_stops_training(corpus_file, tmp_path):
    summary = train_tiny(corpus_file, tmp_path, "simple_rnn", epochs=50,
                         training={"time_budget_minutes": 0.02})
    assert summary["stopped_by_time_budget"] and summary["epochs_run"] < 50
    assert Path(summary["export_path"]).is_dir()  # a budgeted run still evaluates and exports


def test_cli_end_to_end_in_a_real_process(corpus_file, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.text", "--corpus", str(corpus_file), "--cell", "gru", "--units", "16",
         "--seq-len", "16", "--epochs", "1", "--output", str(tmp_path / "saved_models" / "cli"),
         "--runs-dir", str(tmp_path / "runs"), "--run-id", "e2e", "--lr-schedule", "cosine",
         "--global-clipnorm", "5", "--max-tokens", "30", "--prompt", "The"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "nats/char" in result.stdout and "Most likely next tokens after 'The'" in result.stdout
    summary = json.loads((tmp_path / "runs" / "e2e" / "summary.json").read_text())
    assert summary["config"]["optimizer"] == {
        "learning_rate": 0.002, "clip": "global_clipnorm", "clip_value": 5.0, "lr_schedule": "cosine",
        "lr_half_life_steps": 1000}
    assert summary["export_path"] == str(tmp_path / "saved_models" / "cli" / "1")


def test_new_runs_never_share_a_directory(tmp_path):
    from model.run_directory import RunDirectory

    first = RunDirectory.open(str(tmp_path), None, "model")
    second = RunDirectory.open(str(tmp_path), None, "model")  # same second, most likely
    assert first.path != second.path and first.path.is_dir() and second.path.is_dir()


def test_standard_callbacks_watch_the_validation_loss(tmp_path):
    from model.config import OptimizerConfig, TrainingConfig
    from model.run_directory import RunDirectory
    from model.training import standard_callbacks

    run = RunDirectory.open(str(tmp_path), "r", "model")
    callbacks = standard_callbacks(run, TrainingConfig(patience=4), OptimizerConfig(lr_schedule="plateau"))
    by_type = {type(c).__name__: c for c in callbacks}
    assert {"BackupAndRestore", "ModelCheckpoint", "CSVLogger", "TensorBoard", "EarlyStopping",
            "ReduceLROnPlateau", "TerminateOnNaN"} <= set(by_type)
    assert by_type["EarlyStopping"].monitor == "val_loss" and by_type["EarlyStopping"].patience == 4
    assert "EarlyStopping" not in {type(c).__name__ for c in
                                   standard_callbacks(run, TrainingConfig(patience=0), OptimizerConfig())}


def test_cosine_over_a_time_budget_decays_to_zero_as_time_runs_out():
    import time

    from model.builders import build_next_token_model, compile_next_token_model, make_optimizer
    from model.config import ModelConfig, OptimizerConfig
    from model.learning_rate import CosineOverTime

    model = build_next_token_model(5, ModelConfig(cell="gru", units=2, embedding_dim=2))
    optimizer = make_optimizer(OptimizerConfig(learning_rate=0.5, lr_schedule="cosine"), total_steps=None)
    compile_next_token_model(model, optimizer)
    schedule = CosineOverTime(0.5, minutes=1.0)
    schedule.set_model(model)
    for elapsed, expected in ((0.0, 0.5), (30.0, 0.25), (60.0, 0.0), (90.0, 0.0)):
        schedule._start = time.perf_counter() - elapsed
        schedule.on_train_batch_begin(0)
        assert float(model.optimizer.learning_rate) == pytest.approx(expected, abs=2e-3)
