"""Benchmarks of the text pipeline: training throughput (also against PyTorch), generation speed, quality.

    python -m bench.text                         # all four (about 25 minutes on 2 cores)
    python -m bench.text --only throughput,peers,generation
    python -m bench.text --quality-minutes 15

Every speed is measured against a baseline run in the same process, and
reported as a ratio: these machines are noisy, ratios much less so. Results
go to `bench/results/text_<benchmark>.json`; the README's table is printed.
The PyTorch peer (`peers`) needs `pip install -r bench/requirements-peers.txt`;
without it, that benchmark says so and is skipped.

Corpus: tiny Shakespeare from `../shared/data/tinyshakespeare.txt` when it is
there; otherwise throughput and generation use CPython's reference docs and
the quality benchmark is skipped (its target is defined on Shakespeare).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from model import builders
from model.config import ModelConfig, OptimizerConfig, TrainingConfig
from model.vocabulary import id_space_size
from pipelines.text import train_text_model
from pipelines.text_data import default_corpus, prepare_text, read_corpus

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
SEQ_LEN = 100
BATCH = 64


def load_corpus() -> tuple[str, str]:
    if SHAKESPEARE.is_file():
        return "tinyshakespeare", read_corpus(SHAKESPEARE)
    print(f"note: {SHAKESPEARE} not found; using pydoc_data.topics", file=sys.stderr)
    return "pydoc_data.topics", default_corpus()


def environment() -> dict:
    return {"cpus": os.cpu_count(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "python": platform.python_version(), "machine": platform.machine(),
            "date": time.strftime("%Y-%m-%d %H:%M")}


def save(name: str, result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": name, "environment": environment(), **result}
    (RESULTS / f"text_{name}.json").write_text(json.dumps(result, indent=2) + "\n")


# -- 1. training throughput: the pipeline against a bare Model.fit ------------------

def bare_fit_chars_per_second(data, model_config: ModelConfig, steps: int) -> float:
    """A bare `keras.Model.fit` on numpy windows of the same model: the baseline."""
    n = (len(data.train_ids) - 1) // SEQ_LEN
    x = data.train_ids[:n * SEQ_LEN].reshape(n, SEQ_LEN)
    y = data.train_ids[1:n * SEQ_LEN + 1].reshape(n, SEQ_LEN)
    model = builders.build_next_token_model(id_space_size(data.vocabulary), model_config)
    model.monitor_gradients = False  # Keras's own training step: the pipeline's monitor is part of its cost
    builders.compile_next_token_model(model, builders.make_optimizer(OptimizerConfig()))
    model.fit(x, y, batch_size=BATCH, epochs=1, steps_per_epoch=2, verbose=0)  # trace the graph first
    start = time.perf_counter()
    model.fit(x, y, batch_size=BATCH, epochs=1, steps_per_epoch=steps, verbose=0)
    return steps * BATCH * SEQ_LEN / (time.perf_counter() - start)


def pipeline_chars_per_second(data, model_config: ModelConfig, steps: int, workdir: Path) -> float:
    """The whole pipeline (tf.data windows, every callback); its steady-state training speed."""
    summary = train_text_model(
        data, model_config, OptimizerConfig(),
        TrainingConfig(epochs=1, batch_size=BATCH, steps_per_epoch=steps, runs_dir=str(workdir / "runs")),
        SEQ_LEN, workdir / "saved_models" / "throughput")
    return summary["tokens_per_second"]


def bench_throughput(corpus_name: str, text: str, repeats: int = 3, steps: int = 60) -> dict:
    data = prepare_text(text, "char", SEQ_LEN)
    model_config = ModelConfig(cell="lstm", units=256)
    pipeline, bare = [], []
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(repeats):  # interleaved, so drifts in machine speed hit both alike
            # Each from a clean slate: functions left by earlier runs make a new dataset iterator
            # slower to create (seconds, inside the bare fit's timing).
            keras.backend.clear_session(free_memory=True)
            bare.append(bare_fit_chars_per_second(data, model_config, steps))
            keras.backend.clear_session(free_memory=True)
            pipeline.append(pipeline_chars_per_second(data, model_config, steps, Path(workdir)))
    result = {
        "corpus": corpus_name, "model": "LSTM-256, 1 layer, seq-len 100, batch 64", "steps": steps,
        "pipeline_chars_per_second": statistics.median(pipeline),
        "bare_fit_chars_per_second": statistics.median(bare),
        "ratio": statistics.median(pipeline) / statistics.median(bare),
        "target_ratio": 0.95, "runs": {"pipeline": pipeline, "bare_fit": bare},
    }
    save("throughput", result)
    return result


# -- 1b. training throughput against PyTorch, side by side ------------------------------

PEER_REQUIREMENTS = "bench/requirements-peers.txt"


def torch_training_step(data, cell: str):
    """The same model in PyTorch (`nn.Embedding` -> `nn.LSTM`/`nn.GRU` -> `nn.Linear`): a function of step i."""
    import torch

    vocab = id_space_size(data.vocabulary)
    rnn = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]

    class CharModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(vocab, 64)
            self.rnn = rnn(64, 256, batch_first=True)
            self.logits = torch.nn.Linear(256, vocab)

        def forward(self, x):
            return self.logits(self.rnn(self.embedding(x))[0])

    torch.manual_seed(0)
    model = CharModel()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    n = (len(data.train_ids) - 1) // SEQ_LEN
    x = torch.from_numpy(data.train_ids[:n * SEQ_LEN].reshape(n, SEQ_LEN).astype(np.int64))
    y = torch.from_numpy(data.train_ids[1:n * SEQ_LEN + 1].reshape(n, SEQ_LEN).astype(np.int64))

    def step(i: int) -> None:
        batch = slice(i * BATCH % (n - BATCH), i * BATCH % (n - BATCH) + BATCH)
        loss = torch.nn.functional.cross_entropy(model(x[batch]).reshape(-1, vocab), y[batch].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # clipping on, as in the pipelines
        optimizer.step()

    return step


def torch_chars_per_second(data, cell: str, steps: int) -> float:
    """PyTorch's training speed on the same model and batches (`torch_training_step`)."""
    step = torch_training_step(data, cell)
    for i in range(2):  # warm up, as the Keras side traces its graph first
        step(i)
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    return steps * BATCH * SEQ_LEN / (time.perf_counter() - start)


def profile_torch_step(data, cell: str, steps: int = 5, top: int = 6) -> dict:
    """Where PyTorch's step spends its time (torch.profiler, self CPU time by op), to set beside Keras's.

    It shows which kernels PyTorch picks: on CPU its LSTM runs oneDNN's fused
    RNN primitive (`aten::mkldnn_rnn_layer`, `..._backward`), its GRU does not.
    """
    from torch.profiler import ProfilerActivity, profile

    step = torch_training_step(data, cell)
    for i in range(2):
        step(i)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for i in range(steps):
            step(i)
    ops = sorted(profiler.key_averages(), key=lambda event: event.self_cpu_time_total, reverse=True)
    total = sum(event.self_cpu_time_total for event in ops)
    return {"cell": cell, "self_cpu_ms_per_step": total / 1e3 / steps,
            "top_ops": [{"op": event.key, "ms_per_step": event.self_cpu_time_total / 1e3 / steps,
                         "share": event.self_cpu_time_total / total} for event in ops[:top]]}


def profile_keras_step(data, cell: str, steps: int = 5, top: int = 12) -> dict:
    """Where a Keras training step spends its time: TensorFlow's profiler, op time summed by op type.

    Returns:
        Wall milliseconds per step, op milliseconds per step (ops on different
        threads overlap; between ops the executor runs the while loop), and the
        `top` op types by time with their share of all op time.
    """
    import collections
    import glob

    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    n = (len(data.train_ids) - 1) // SEQ_LEN
    x = data.train_ids[:n * SEQ_LEN].reshape(n, SEQ_LEN)
    y = data.train_ids[1:n * SEQ_LEN + 1].reshape(n, SEQ_LEN)
    model = builders.build_next_token_model(id_space_size(data.vocabulary), ModelConfig(cell=cell, units=256))
    model.monitor_gradients = False
    builders.compile_next_token_model(model, builders.make_optimizer(OptimizerConfig()))
    model.fit(x, y, batch_size=BATCH, epochs=1, steps_per_epoch=2, verbose=0)
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        start = time.perf_counter()
        model.fit(x, y, batch_size=BATCH, epochs=1, steps_per_epoch=steps, verbose=0)
        wall = time.perf_counter() - start
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        space.ParseFromString(Path(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0]).read_bytes())
    by_type = collections.Counter()
    for plane in (p for p in space.planes if p.name == "/host:CPU"):
        for line in (line for line in plane.lines if line.name.startswith("tf_Compute")):
            for event in line.events:  # kernels are named "<node>:<OpType>"
                name = plane.event_metadata[event.metadata_id].name
                if ":" in name and not name.startswith(("Threadpool", "Executor")):
                    by_type[name.rsplit(":", 1)[1]] += event.duration_ps / 1e9 / steps
    total = sum(by_type.values())
    return {"cell": cell, "wall_ms_per_step": wall * 1e3 / steps, "op_ms_per_step": total,
            "top_ops": [{"op": op, "ms_per_step": ms, "share": ms / total} for op, ms in by_type.most_common(top)]}


def bench_peers(corpus_name: str, text: str, repeats: int = 3, steps: int = 30) -> dict:
    """Keras (Keras's own training step, as `bare_fit_chars_per_second`) against PyTorch, interleaved.

    PyTorch is optional (`pip install -r bench/requirements-peers.txt`, a CPU
    build); without it this benchmark says so and records nothing.
    """
    try:
        import torch
    except ImportError:
        print(f"peer benchmark skipped: PyTorch is not installed (pip install -r {PEER_REQUIREMENTS})",
              file=sys.stderr)
        return {"skipped": f"torch not importable; pip install -r {PEER_REQUIREMENTS}"}
    data = prepare_text(text, "char", SEQ_LEN)
    cells = {}
    for cell in ("lstm", "gru"):
        keras_runs, torch_runs = [], []
        for _ in range(repeats):  # interleaved: drifts in machine speed hit both alike
            keras.backend.clear_session(free_memory=True)
            keras_runs.append(bare_fit_chars_per_second(data, ModelConfig(cell=cell, units=256), steps))
            torch_runs.append(torch_chars_per_second(data, cell, steps))
        cells[cell] = {"keras_profile": profile_keras_step(data, cell), "torch_profile": profile_torch_step(data, cell),
                       "keras_chars_per_second": statistics.median(keras_runs),
                       "torch_chars_per_second": statistics.median(torch_runs),
                       "ratio": statistics.median(keras_runs) / statistics.median(torch_runs),
                       "runs": {"keras": keras_runs, "torch": torch_runs}}
    result = {"corpus": corpus_name, "model": "embedding 64 -> {cell}-256 -> dense, seq-len 100, batch 64, "
              "Adam 2e-3, clipping 1.0", "steps": steps, "torch": torch.__version__,
              "torch_threads": torch.get_num_threads(), "cells": cells, "target_ratio": 1.0}
    save("peers", result)
    return result


# -- 2. generation speed: in-graph loop vs a Python loop vs re-feeding a window -------

def bench_generation(corpus_name: str, text: str, chars: int = 2000, batch: int = 32) -> dict:
    from model.text_export import export_text_model

    data = prepare_text(text, "char", SEQ_LEN)
    model = builders.build_next_token_model(id_space_size(data.vocabulary), ModelConfig(cell="lstm", units=256))
    # Speed does not depend on what the weights are: an untrained model is timed.
    with tempfile.TemporaryDirectory() as workdir:
        version = export_text_model(model, Path(workdir) / "gen", data.vocabulary, "char",
                                    data.unigram_counts, SEQ_LEN)
        generate = tf.saved_model.load(str(version)).signatures["generate"]

        def in_graph(n_prompts: int) -> float:
            inputs = dict(text=tf.constant(["ROMEO:\n"] * n_prompts),
                          max_tokens=tf.constant([chars] * n_prompts, tf.int32),
                          temperature=tf.constant([0.8] * n_prompts), seed=tf.constant(range(n_prompts), tf.int64))
            generate(**{**inputs, "max_tokens": tf.constant([10] * n_prompts, tf.int32)})  # warm up
            timings = []
            for _ in range(3):
                start = time.perf_counter()
                generate(**inputs)
                timings.append(time.perf_counter() - start)
            return n_prompts * chars / min(timings)

        graph_one, graph_batch = in_graph(1), in_graph(batch)

    # A Python loop calling a one-step tf.function, carrying the LSTM state.
    cell = model.get_layer("lstm_0").cell
    embedding, dense = model.get_layer("embedding"), model.get_layer("logits")

    @tf.function
    def one_step(token, h, c):
        out, (h, c) = cell(embedding(token), [h, c])
        logits = dense(out)
        return tf.random.categorical(logits / 0.8, 1, dtype=tf.int32)[:, 0], h, c

    token, h, c = tf.constant([2]), tf.zeros([1, 256]), tf.zeros([1, 256])
    one_step(token, h, c)
    python_chars = 500
    start = time.perf_counter()
    for _ in range(python_chars):
        token, h, c = one_step(token, h, c)
    python_loop = python_chars / (time.perf_counter() - start)

    # The keras-io text-generation example: re-feed the last 40 characters to predict().
    window = np.asarray(data.train_ids[:40])[None, :]
    model.predict(window, verbose=0)
    refeed_chars = 40
    start = time.perf_counter()
    for _ in range(refeed_chars):
        logits = model.predict(window, verbose=0)[0, -1]
        window = np.concatenate([window[:, 1:], [[int(np.argmax(logits))]]], axis=1)
    refeed = refeed_chars / (time.perf_counter() - start)

    result = {
        "corpus": corpus_name, "model": "LSTM-256, 1 layer", "chars_per_prompt": chars,
        "in_graph_one_prompt_chars_per_second": graph_one,
        f"in_graph_{batch}_prompts_chars_per_second": graph_batch,
        "python_loop_one_step_function_chars_per_second": python_loop,
        "refeed_40_char_window_predict_chars_per_second": refeed,
        "ms_per_char": {"in_graph": 1e3 / graph_one, "python_loop": 1e3 / python_loop, "refeed": 1e3 / refeed},
        "speedup_vs_python_loop": graph_one / python_loop, "speedup_vs_refeed": graph_one / refeed,
        "target_one_prompt_chars_per_second": 20_000,
    }
    save("generation", result)
    return result


# -- 3. quality: validation loss on tiny Shakespeare after a fixed time budget --------

# LSTM-512 at batch 128 saw only 10M characters in the budget and reached 1.58 nats/char here;
# a GRU-384 sees three times as many and reaches 1.53 (more dropout, 0.25, gave 1.54); two
# GRU-256 layers reach 1.49 (1.488 once the training windows move every epoch, 1.484 once no
# epoch waits for a new dataset iterator). The learning rate decays (cosine) over the time budget.
QUALITY_MODEL = ModelConfig(cell="gru", units=256, layers=2, dropout=0.1, embedding_dim=64)
QUALITY_OPTIMIZER = OptimizerConfig(learning_rate=4e-3, lr_schedule="cosine")
QUALITY_BATCH = 128
QUALITY_SEQ_LEN = 100
QUALITY_STEPS_PER_EPOCH = 100
QUALITY_TARGET = 1.43  # nats/char over 256-char windows (issue 16); nanoGPT's 10M-parameter GPT on a GPU: 1.4697


def validation_loss_by_context(model: keras.Model, val_ids: np.ndarray,
                               contexts: tuple[int, ...] = (100, 256), streams: int = 16) -> dict[str, float]:
    """Validation loss (nats/char) when the model reads longer stretches of text.

    Keras's `val_loss` cuts the validation text into windows of the training
    seq-len, each starting from a zero state, so its first characters are
    predicted with almost no context. nanoGPT reports its loss over windows
    of its block size (256); char-rnn carries the state through the whole
    validation text. Both are measured here, on the same trained weights.

    Args:
        model: A trained next-token model.
        val_ids: The validation token ids.
        contexts: Window lengths to measure.
        streams: The whole text is also read as this many contiguous streams,
            the state carried from the first character of each to its last.

    Returns:
        `{"windows_100": ..., "windows_256": ..., "carried_state": ...}`.
    """
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def mean_loss(windows: np.ndarray, batch: int) -> float:
        total = 0.0
        for start in range(0, len(windows), batch):
            chunk = windows[start:start + batch]
            total += float(loss(chunk[:, 1:], model(chunk[:, :-1], training=False))) * len(chunk)
        return total / len(windows)

    result = {}
    for context in contexts:
        count = (len(val_ids) - 1) // context
        windows = np.lib.stride_tricks.sliding_window_view(val_ids, context + 1)[::context][:count]
        result[f"windows_{context}"] = mean_loss(np.ascontiguousarray(windows), 64)
    length = (len(val_ids) - 1) // streams
    result["carried_state"] = mean_loss(np.stack([val_ids[i * length:(i + 1) * length + 1]
                                                  for i in range(streams)]), streams)
    return result


def bench_quality(minutes: float, seq_len: int = QUALITY_SEQ_LEN, batch: int = QUALITY_BATCH) -> dict | None:
    if not SHAKESPEARE.is_file():
        print(f"quality benchmark skipped: {SHAKESPEARE} is not there", file=sys.stderr)
        return None
    data = prepare_text(read_corpus(SHAKESPEARE), "char", seq_len)
    with tempfile.TemporaryDirectory() as workdir:
        summary = train_text_model(
            data, QUALITY_MODEL, QUALITY_OPTIMIZER,
            TrainingConfig(epochs=100_000, batch_size=batch, steps_per_epoch=QUALITY_STEPS_PER_EPOCH,
                           patience=0, time_budget_minutes=minutes, runs_dir=str(Path(workdir) / "runs")),
            seq_len, Path(workdir) / "saved_models" / "quality",
            data_config={"corpus": "tinyshakespeare", "val_fraction": 0.1})
        model = builders.build_next_token_model(id_space_size(data.vocabulary), QUALITY_MODEL)
        model.load_weights(str(Path(summary["run_dir"]) / "best.weights.h5"))
        by_context = validation_loss_by_context(model, data.val_ids)
    result = {
        "corpus": "tinyshakespeare (last 10% validation)", "budget_minutes": minutes,
        "model": QUALITY_MODEL.__dict__, "optimizer": QUALITY_OPTIMIZER.__dict__, "batch_size": batch,
        "seq_len": seq_len,
        "val_nats_per_char": summary["val_loss_nats_per_token"],
        "val_bits_per_char": summary["val_bits_per_token"],
        "val_nats_per_char_by_context": by_context,
        "epochs_run": summary["epochs_run"], "steps_per_epoch": QUALITY_STEPS_PER_EPOCH,
        "train_chars_per_second": summary["tokens_per_second"],
        "wall_seconds": summary["wall_seconds"], "target_nats_per_char": QUALITY_TARGET,
        "earlier_runs": EARLIER_QUALITY_RUNS,
    }
    save("quality", result)
    return result


# What other configurations reached here, for the record (same 2-core machine, same budget).
EARLIER_QUALITY_RUNS = [
    {"model": "LSTM-512x1, dropout 0.1, batch 128, cosine over 800 steps (10.5 min used)",
     "val_nats_per_char": 1.584},
    {"model": "GRU-384x1, dropout 0.1, batch 128, lr 4e-3 cosine over 15 min (2026-11-30)",
     "val_nats_per_char": 1.529},
    {"model": "GRU-384x1, dropout 0.25, batch 128, lr 4e-3 cosine over 15 min (2026-11-30)",
     "val_nats_per_char": 1.536},
    {"model": "GRU-256x3, dropout 0.1, batch 128, lr 4e-3 cosine over 15 min (tests shared the CPU)",
     "val_nats_per_char": 1.525},
    {"model": "GRU-256x2, dropout 0.1, batch 128, lr 4e-3 cosine over 15 min, windows fixed at "
              "multiples of 100 every epoch (2026-11-30)", "val_nats_per_char": 1.493},
    {"model": "GRU-256x2 as now, before the gradient monitor existed (commit 4d1b989, 2026-11-30 23:36); "
              "23.1k chars/s, 18 epochs", "val_nats_per_char": 1.488,
     "val_nats_per_char_by_context": {"windows_100": 1.488, "windows_256": 1.464, "carried_state": 1.452}},
    {"model": "GRU-256x2 as now, monitor on, first version (2026-12-01 00:52); the machine ran at 16.1k chars/s",
     "val_nats_per_char": 1.526,
     "val_nats_per_char_by_context": {"windows_100": 1.526, "windows_256": 1.504, "carried_state": 1.493}},
    {"model": "GRU-256x2 as now, monitor on (2026-12-01 01:15); the machine ran at 13.8k chars/s, 13 epochs",
     "val_nats_per_char": 1.528,
     "val_nats_per_char_by_context": {"windows_100": 1.528, "windows_256": 1.507, "carried_state": 1.496}},
    {"model": "GRU-256x2 as now but trained on 256-char windows, batch 64 (2026-12-01 03:31): 14 epochs",
     "val_nats_per_char": 1.518,
     "val_nats_per_char_by_context": {"windows_256": 1.518, "carried_state": 1.506}},
    {"model": "GRU-256x2 as now, monitor on (2026-11-30 23:50 session end); 15.0k chars/s, 14 epochs",
     "val_nats_per_char": 1.513,
     "val_nats_per_char_by_context": {"windows_100": 1.513, "windows_256": 1.491, "carried_state": 1.480}},
    {"model": "GRU-256x2 as now, monitor on (2026-12-01 02:41), before the endless dataset: each epoch's "
              "first step waited 30-40 s for a new iterator; 16.0k chars/s, 15 epochs",
     "val_nats_per_char": 1.517,
     "val_nats_per_char_by_context": {"windows_100": 1.517, "windows_256": 1.496, "carried_state": 1.484}},
    {"model": "GRU-256x2 as now, endless dataset (2026-12-01 05:16): 23.9k chars/s, 16 epochs",
     "val_nats_per_char": 1.484,
     "val_nats_per_char_by_context": {"windows_100": 1.484, "windows_256": 1.460, "carried_state": 1.448}},
    {"model": "GRU-256x2 as now, oneDNN on, on a slow day (2026-12-02 05:02): 12.9k chars/s, 9 epochs; the line "
              "of loss against speed through the runs above predicted 1.513 over 256-char windows",
     "val_nats_per_char": 1.540,
     "val_nats_per_char_by_context": {"windows_100": 1.540, "windows_256": 1.518, "carried_state": 1.507}},
    {"model": "GRU-256x2 as now, without oneDNN (2026-12-01 06:41; the table's run until 2026-12-02): 23.3k chars/s, "
              "16 epochs", "val_nats_per_char": 1.483,
     "val_nats_per_char_by_context": {"windows_100": 1.483, "windows_256": 1.459, "carried_state": 1.447}},
    {"model": "GRU-256x2 as now but batch 64, oneDNN on (2026-12-02 13:51, after the table's run): 21.9k chars/s, "
              "28 epochs of 100 steps; the loss-against-speed line predicted 1.470 at that speed for batch 128",
     "val_nats_per_char": 1.485,
     "val_nats_per_char_by_context": {"windows_100": 1.485, "windows_256": 1.461, "carried_state": 1.449}},
]


def table() -> str:
    """The README's benchmark table, from whatever results are on disk."""
    rows = ["| benchmark | result | baseline / target |", "|---|---|---|"]
    results = {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("text_*.json"))}
    if "text_throughput" in results:
        r = results["text_throughput"]
        rows.append(f"| training throughput, {r['model']} | pipeline {r['pipeline_chars_per_second']:,.0f} chars/s "
                    f"| bare `Model.fit` {r['bare_fit_chars_per_second']:,.0f} chars/s: ratio **{r['ratio']:.2f}** "
                    f"(target ≥ {r['target_ratio']}) |")
    if "text_peers" in results and "cells" in results["text_peers"]:
        r = results["text_peers"]
        for cell, c in r["cells"].items():
            rows.append(f"| training throughput against PyTorch {r['torch']} (CPU), {cell.upper()}-256 | Keras "
                        f"{c['keras_chars_per_second']:,.0f} chars/s | PyTorch {c['torch_chars_per_second']:,.0f} "
                        f"chars/s: ratio **{c['ratio']:.2f}** (target ≥ {r['target_ratio']}) |")
    if "text_generation" in results:
        r = results["text_generation"]
        batch_key = next(k for k in r if k.startswith("in_graph_") and k.endswith("prompts_chars_per_second"))
        rows.append(f"| generation, {r['model']}, in-graph `generate`, 1 prompt | "
                    f"**{r['in_graph_one_prompt_chars_per_second']:,.0f} chars/s** "
                    f"({r['ms_per_char']['in_graph']:.3f} ms/char) | target ≥ 20,000 chars/s |")
        rows.append(f"| generation, in-graph, {batch_key.split('_')[2]} prompts | "
                    f"{r[batch_key]:,.0f} chars/s in aggregate | |")
        rows.append(f"| generation, Python loop over a one-step function | "
                    f"{r['python_loop_one_step_function_chars_per_second']:,.0f} chars/s "
                    f"({r['ms_per_char']['python_loop']:.3f} ms/char) | in-graph is "
                    f"{r['speedup_vs_python_loop']:.1f}× faster |")
        rows.append(f"| generation, re-feeding a 40-char window to `predict` | "
                    f"{r['refeed_40_char_window_predict_chars_per_second']:,.1f} chars/s "
                    f"({r['ms_per_char']['refeed']:.1f} ms/char) | in-graph is {r['speedup_vs_refeed']:,.0f}× faster |")
    if "text_quality" in results:
        r = results["text_quality"]
        m = r["model"]
        by_context = r.get("val_nats_per_char_by_context", {})
        rows.append(f"| quality, tiny Shakespeare, {r['budget_minutes']:g} min on {r['environment']['cpus']} CPU cores, "
                    f"{m['cell'].upper()}-{m['units']}×{m['layers']} dropout {m['dropout']}: validation loss over "
                    f"windows of {r.get('seq_len', SEQ_LEN)} chars (Keras's `val_loss`) | "
                    f"{r['val_nats_per_char']:.3f} nats/char ({r['val_bits_per_char']:.3f} bits/char) | |")
        if "windows_256" in by_context:
            rows.append(f"| quality, the same model, over windows of 256 chars (nanoGPT's measure: its block size) | "
                        f"**{by_context['windows_256']:.3f} nats/char** | target ≤ {QUALITY_TARGET} nats/char "
                        "(a 10M-parameter GPT, block size 256, on a GPU: 1.470) |")
            rows.append(f"| quality, the same model, state carried through the whole validation text (char-rnn's "
                        f"measure) | {by_context['carried_state']:.3f} nats/char | |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.text", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="throughput,peers,generation,quality")
    parser.add_argument("--quality-minutes", type=float, default=15.0)
    parser.add_argument("--quality-seq-len", type=int, default=QUALITY_SEQ_LEN)
    parser.add_argument("--quality-batch", type=int, default=QUALITY_BATCH)
    args = parser.parse_args(argv)
    chosen = set(args.only.split(","))
    corpus_name, text = load_corpus()
    if "throughput" in chosen:
        print(json.dumps(bench_throughput(corpus_name, text), indent=2))
    if "peers" in chosen:
        print(json.dumps(bench_peers(corpus_name, text), indent=2))
    if "generation" in chosen:
        print(json.dumps(bench_generation(corpus_name, text), indent=2))
    if "quality" in chosen:
        print(json.dumps(bench_quality(args.quality_minutes, args.quality_seq_len, args.quality_batch), indent=2))
    print("\n" + table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
