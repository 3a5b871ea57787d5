"""Benchmarks of gradient health: the monitor's cost, and the demonstration experiments.

    python -m bench.gradients                 # about 20 minutes on 2 cores
    python -m bench.gradients --only overhead

- overhead: the median training-step time with the gradient monitor (the
  `MonitoredModel` step and its callback) against Keras's own training step
  on the same model and batches, interleaved in the same process. Target: the
  monitor costs at most 10% of step time.
- adding: the adding-problem grid, cell x T in {10, 50, 100, 200} x clipnorm
  1.0 or none, one seed, a fixed step budget.
- exploding: a SimpleRNN whose recurrent kernel has spectral radius 3, trained
  with Adam and with plain SGD, each clipped or not.
- through-time: the gradient of the last step's loss at every step for
  SimpleRNN, LSTM and GRU, at initialisation (the stock model, T = 200) and
  after learning the adding problem (T = 100), plotted for the README.

Results: `bench/results/gradients_<name>.json` (and `.md`, `.png`); the
README's tables are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.text import RESULTS, environment  # noqa: E402
from model import builders  # noqa: E402
from model.config import ModelConfig, MonitorConfig, OptimizerConfig  # noqa: E402
from model.gradient_monitor import GradientMonitor  # noqa: E402
from pipelines import gradients  # noqa: E402
from pipelines.adding_problem import markdown_table, train_adding  # noqa: E402

GRID_CELLS = ("simple_rnn", "lstm", "gru")
GRID_LENGTHS = (10, 50, 100, 200)
GRID_STEPS = 1500


def save(name: str, result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"gradients_{name}.json").write_text(
        json.dumps({"benchmark": name, "environment": environment(), **result}, indent=2) + "\n")


class StepTimer(keras.callbacks.Callback):
    """Wall time of every training step, including the callbacks listed before it."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def step_seconds(model_config: ModelConfig, monitored: bool, steps: int, batch: int = 64,
                 seq_len: int = 100, vocab: int = 67) -> list[float]:
    """Per-step wall times of a next-token model's training, with or without the monitor."""
    keras.utils.set_random_seed(0)
    model = builders.build_next_token_model(vocab, model_config)
    model.monitor_gradients = monitored
    builders.compile_next_token_model(model, builders.make_optimizer(OptimizerConfig()))
    rng = np.random.default_rng(0)
    x = rng.integers(2, vocab, size=(batch * steps, seq_len)).astype(np.int32)
    y = np.roll(x, -1, axis=1)
    timer = StepTimer()
    callbacks = [GradientMonitor(MonitorConfig(), verbose=False), timer] if monitored else [timer]
    model.fit(x[:2 * batch], y[:2 * batch], batch_size=batch, epochs=1, verbose=0, callbacks=callbacks)  # trace
    timer.seconds.clear()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0, callbacks=callbacks)
    return timer.seconds


def bench_overhead(repeats: int = 4) -> dict:
    """Median step time with and without the monitor, over interleaved runs.

    The median of every step is robust to this machine's slow spells (the same
    plain-Keras model has run at 6.0 and then 3.9 steps/s), which a ratio of
    run totals is not.
    """
    rows = []
    for name, config, steps in (("LSTM-256, seq-len 100, batch 64", ModelConfig("lstm", 256), 40),
                                ("GRU-64x2, seq-len 100, batch 64", ModelConfig("gru", 64, layers=2), 100)):
        on, off = [], []
        for _ in range(repeats):  # interleaved: both see the same machine state
            off += step_seconds(config, False, steps)
            on += step_seconds(config, True, steps)
        off_ms, on_ms = 1e3 * float(np.median(off)), 1e3 * float(np.median(on))
        rows.append({"model": name, "median_step_ms_monitor_off": off_ms, "median_step_ms_monitor_on": on_ms,
                     "steps_each": len(on), "overhead": on_ms / off_ms - 1.0, "target_overhead": 0.10})
        print(f"{name}: median step {off_ms:.1f} ms plain, {on_ms:.1f} ms monitored: "
              f"overhead {on_ms / off_ms - 1:.1%}", flush=True)
    result = {"rows": rows}
    save("overhead", result)
    return result


def bench_adding(train_steps: int) -> dict:
    start = time.perf_counter()
    results = []
    for cell in GRID_CELLS:
        for steps in GRID_LENGTHS:
            for clip in ("clipnorm", "none"):
                result, _, _ = train_adding(cell, steps, clip, train_steps)
                print(f"{cell:10s} T={steps:<4d} {clip:9s}: test MSE {result.final_test_mse:.4f}, solved at "
                      f"{result.steps_to_solve}, {result.seconds:.0f} s", flush=True)
                results.append(result)
    grid_seconds = time.perf_counter() - start
    table = markdown_table(results)
    (RESULTS / "gradients_adding.md").write_text(table + "\n")
    result = {"train_steps": train_steps, "grid_seconds": grid_seconds, "target_grid_seconds": 1200,
              "rows": [r.as_row() for r in results], "table": table}
    save("adding", result)
    print("\n" + table)
    return result


def bench_exploding() -> dict:
    rows = gradients.exploding_rows(radius=3.0, seq_len=50, train_steps=300, learning_rate=1e-2)
    result = {"radius": 3.0, "seq_len": 50, "train_steps": 300, "learning_rate": 1e-2, "rows": rows}
    save("exploding", result)
    return result


def bench_through_time(train_steps: int = GRID_STEPS, seq_len: int = 100) -> dict:
    """Through-time curves of each cell at initialisation and after learning the adding problem."""
    from model.through_time import fit_decay, gradient_through_time, next_value_loss
    from pipelines.adding_problem import adding_batch

    fresh = gradients.fresh_through_time("series", GRID_CELLS, units=64, seq_len=200, batch=32, seed=0)
    trained = {}
    x, y = adding_batch(tf.constant([7, 7], tf.int64), 32, seq_len)
    for cell in GRID_CELLS:
        result, _, model = train_adding(cell, seq_len, "clipnorm", train_steps)
        name = f"{gradients.CELL_NAMES[cell]} (test MSE {result.final_test_mse:.3f})"
        trained[name] = gradient_through_time(model, x, next_value_loss(y))
    plots = {
        "fresh": gradients.plot_through_time(fresh, "at initialisation (stock model, random-walk prices), T = 200",
                                             RESULTS / "gradients_through_time_fresh.png"),
        "trained": gradients.plot_through_time(
            trained, f"after {train_steps:,} steps on the adding problem, T = {seq_len}",
            RESULTS / "gradients_through_time_trained.png")}
    lines = {stage: [fit_decay(curve).describe(name) for name, curve in curves.items()]
             for stage, curves in (("fresh", fresh), ("trained", trained))}
    for stage, stage_lines in lines.items():
        print(f"{stage}:\n  " + "\n  ".join(stage_lines))
    result = {"plots": {k: str(v) for k, v in plots.items()}, "lines": lines,
              "first_to_last": {stage: {name: float(curve[0] / curve[-1]) for name, curve in curves.items()}
                                for stage, curves in (("fresh", fresh), ("trained", trained))}}
    save("through_time", result)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gradients", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="overhead,through-time,exploding,adding")
    parser.add_argument("--train-steps", type=int, default=GRID_STEPS)
    args = parser.parse_args(argv)
    chosen = set(args.only.split(","))
    if "overhead" in chosen:
        bench_overhead()
    if "through-time" in chosen:
        bench_through_time()
    if "exploding" in chosen:
        bench_exploding()
    if "adding" in chosen:
        bench_adding(args.train_steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
