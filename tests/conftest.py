"""Shared fixtures: a small corpus and one tiny trained, exported model per cell.

Training is the slow part of the suite, so the exported models are built once
per session and shared; every model is tiny (a few thousand parameters).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly "
         "hex jolly bakers and the rain in spain falls mainly on the plain").split()


def make_corpus(n_words: int = 1500, seed: int = 0) -> str:
    """Deterministic pseudo-English: enough structure for a model to learn a little."""
    rng = random.Random(seed)
    lines, line = [], []
    for _ in range(n_words):
        line.append(rng.choice(WORDS))
        if len(line) == 8:
            lines.append(" ".join(line).capitalize() + ".")
            line = []
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(make_corpus(), encoding="utf-8")
    return path


def train_tiny(corpus: Path, workdir: Path, cell: str = "lstm", token_level: str = "char",
               epochs: int = 1, output_name: str = "tiny", **overrides):
    """Train and export a tiny model through the pipeline's own function; return its summary."""
    from model.config import ModelConfig, OptimizerConfig, TrainingConfig
    from pipelines.text import train_text_model
    from pipelines.text_data import prepare_text, read_corpus

    seq_len = overrides.pop("seq_len", 20)
    data = prepare_text(read_corpus(corpus), token_level, seq_len=seq_len)
    model_config = ModelConfig(cell=cell, units=overrides.pop("units", 32), layers=overrides.pop("layers", 1),
                               embedding_dim=16)
    optimizer_config = OptimizerConfig(learning_rate=overrides.pop("learning_rate", 1e-2))
    training_config = TrainingConfig(epochs=epochs, batch_size=32, runs_dir=str(workdir / "runs"),
                                     run_id=overrides.pop("run_id", None), patience=0,
                                     **overrides.pop("training", {}))
    extra_callbacks = overrides.pop("extra_callbacks", ())
    assert not overrides, f"unknown overrides {overrides}"
    return train_text_model(data, model_config, optimizer_config, training_config, seq_len,
                            workdir / "saved_models" / output_name, extra_callbacks=extra_callbacks)


@pytest.fixture(scope="session")
def exported_lstm(corpus_file, tmp_path_factory):
    """(summary, version directory) of a tiny character-level LSTM, trained 2 epochs."""
    workdir = tmp_path_factory.mktemp("lstm")
    summary = train_tiny(corpus_file, workdir, "lstm", epochs=2)
    return summary, Path(summary["export_path"])


@pytest.fixture(scope="session")
def loaded_lstm(exported_lstm):
    import tensorflow as tf

    return tf.saved_model.load(str(exported_lstm[1]))


@pytest.fixture(scope="session")
def exported_stock(tmp_path_factory):
    """(summary, version directory) of a tiny LSTM on the last 400 MSFT days: window 10, quantiles 0.1/0.5/0.9."""
    from model.config import ForecastConfig, ModelConfig, OptimizerConfig, TrainingConfig
    from pipelines.series import train_series_model
    from pipelines.series_data import chronological_split, default_prices, load_prices

    workdir = tmp_path_factory.mktemp("stock")
    series = load_prices(default_prices(), "default", ticker="MSFT")
    series.values, series.dates = series.values[-400:], series.dates[-400:]
    summary = train_series_model(
        series, chronological_split(400, 10, 1), ForecastConfig(window=10, quantiles=(0.1, 0.5, 0.9)),
        ModelConfig(units=4), OptimizerConfig(),
        TrainingConfig(epochs=1, batch_size=32, patience=0, runs_dir=str(workdir / "runs")),
        workdir / "saved_models" / "stock")
    return summary, Path(summary["export_path"]), series


def with_cudnn_kernels(model):
    """The same model with every LSTM/GRU set to cuDNN kernels, as a GPU training run uses them."""
    from model.series_model import with_cudnn

    return with_cudnn(model, True)


def copy_version(source: Path, base: Path, version: int) -> Path:
    """Publish a version the way the exporter does: copy aside, then rename into place."""
    base.mkdir(parents=True, exist_ok=True)
    staging = base / f".copy-{version}"
    shutil.copytree(source, staging)
    target = base / str(version)
    os.rename(staging, target)
    return target


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(config: Path, *flags: str, port: int = 0, stderr=subprocess.DEVNULL,
                 env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """`python -m serving.server` as another process; returns it and its `host:port` once it serves.

    `stderr` and `env` are passed to Popen (default: stderr discarded, this process's environment).
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.server", "--model_config_file", str(config), "--port", str(port), *flags],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, env=env, text=True)
    watchdog = threading.Timer(180, process.kill)  # a server that never comes up fails the test, not hangs it
    watchdog.start()
    try:
        line = process.stdout.readline()
    finally:
        watchdog.cancel()
    assert line.startswith("serving on "), line
    return process, line.split()[2].rstrip(":")


def publish_text_and_stock(root: Path, text_version: Path, stock_version: Path) -> tuple[Path, Path]:
    """Version 1 of a text and a stock model under `root/saved_models`; returns that and a models.config."""
    models = root / "saved_models"
    copy_version(text_version, models / "text", 1)
    copy_version(stock_version, models / "stock", 1)
    config = root / "models.config"
    config.write_text(f"""model_config_list {{
      config {{ name: "text" base_path: "{models / 'text'}" model_platform: "tensorflow"
               version_labels {{ key: "stable" value: 1 }} }}
      config {{ name: "stock" base_path: "{models / 'stock'}" model_platform: "tensorflow" }}
    }}""")
    return models, config


class LoopingClients:
    """Clients sending next-token requests in a loop, from threads, until the `with` block ends.

    Attributes:
        answers: `(time, prompt, top_k_probabilities)` of every answer.
        errors: The message of every failed request.
    """

    def __init__(self, target, prompts: list[str], count: int = 4, timeout: float = 60):
        import numpy as np

        from serving.prediction_client import PredictionClient, ServingCallError

        self.answers, self.errors, self._stop = [], [], threading.Event()

        def client_loop(index: int) -> None:
            with PredictionClient(target, "text", timeout=timeout) as client:
                while not self._stop.is_set():
                    prompt = prompts[(index + len(self.answers)) % len(prompts)]
                    try:
                        out = client.predict({"text": np.array([prompt.encode()], dtype=object)})
                    except ServingCallError as error:
                        self.errors.append(str(error))
                        continue
                    self.answers.append((time.monotonic(), prompt, out["top_k_probabilities"][0]))

        self._threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(count)]

    def answered_after(self, moment: float) -> int:
        return sum(t > moment for t, _, _ in self.answers)

    def __enter__(self) -> "LoopingClients":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:  # also after a failed wait: no client may keep looping
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=90)
