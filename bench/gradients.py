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
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from bench.text import RESULTS, environment
from model import builders
from model.config import ModelConfig, MonitorConfig, OptimizerConfig
from model.gradient_callbacks import gradient_callbacks
from pipelines import gradients
from pipelines.adding_problem import markdown_table, train_adding

ROOT = Path(__file__).resolve().parents[1]

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


class OverheadPair:
    """The same next-token model twice, one monitored, trained in alternating short bursts.

    Each burst of `steps` steps is timed step by step; a burst of the plain
    model and one of the monitored model make a pair, and the overhead of a
    pair is the ratio of their median step times. This machine's speed comes
    in spells of seconds to minutes (the same plain-Keras model has run at 6.0
    and then 3.9 steps/s); a pair spans about a second, so a spell slows both
    of its halves alike, which a ratio of whole runs does not.
    """

    def __init__(self, model_config: ModelConfig, batch: int = 64, seq_len: int = 100, vocab: int = 67,
                 steps: int = 10):
        rng = np.random.default_rng(0)
        self.x = rng.integers(2, vocab, size=(batch * steps, seq_len)).astype(np.int32)
        self.y = np.roll(self.x, -1, axis=1)
        self.batch = batch
        self.models, self.callbacks = {}, {}
        for monitored in (False, True):
            keras.utils.set_random_seed(0)
            model = builders.build_next_token_model(vocab, model_config)
            model.monitor_gradients = monitored
            builders.compile_next_token_model(model, builders.make_optimizer(OptimizerConfig()))
            timer = StepTimer()
            # The timer comes last: a monitored step's time includes the monitor's callback.
            monitor = gradient_callbacks(MonitorConfig(), verbose=False) if monitored else ()
            self.callbacks[monitored] = [*monitor, timer]
            self.models[monitored] = model
            self.burst(monitored)  # traces the step

    def burst(self, monitored: bool) -> float:
        """Train one burst; return its median step time in seconds."""
        timer = self.callbacks[monitored][-1]
        timer.seconds.clear()
        self.models[monitored].fit(self.x, self.y, batch_size=self.batch, epochs=1, verbose=0,
                                   callbacks=self.callbacks[monitored])
        return float(np.median(timer.seconds))


OVERHEAD_MODELS = {"LSTM-256, seq-len 100, batch 64": ("lstm", 256, 1),
                   "GRU-64x2, seq-len 100, batch 64": ("gru", 64, 2)}


def overhead_in_this_process(name: str, pairs: int) -> dict:
    """One process's estimate: the median over `pairs` of (monitored / plain median step time)."""
    cell, units, layers = OVERHEAD_MODELS[name]
    pair = OverheadPair(ModelConfig(cell, units, layers=layers))
    off, on = [], []
    for i in range(pairs):  # alternate which goes first, so neither always follows the other
        first = bool(i % 2)
        times = {first: pair.burst(first), not first: pair.burst(not first)}
        off.append(times[False])
        on.append(times[True])
    return {"overhead": float(np.median(np.array(on) / np.array(off))) - 1.0,
            "off_ms": 1e3 * float(np.median(off)), "on_ms": 1e3 * float(np.median(on))}


def bench_overhead(processes: int = 5, pairs: int = 12) -> dict:
    """Monitor overhead, estimated in several fresh processes; the median of their estimates.

    Within one process the paired bursts agree closely, but two processes can
    disagree by ±15% on the LSTM (the same code: where each model's buffers land
    matters to this CPU's vector units). Each process builds both models anew.
    """
    rows = []
    for name in OVERHEAD_MODELS:
        estimates = []
        for _ in range(processes):
            result = subprocess.run([sys.executable, "-m", "bench.gradients", "--overhead-process", name,
                                     "--pairs", str(pairs)], cwd=ROOT, capture_output=True, text=True, check=True)
            estimates.append(json.loads(result.stdout.strip().splitlines()[-1]))
        overheads = [e["overhead"] for e in estimates]
        rows.append({"model": name, "processes": processes, "pairs_per_process": pairs,
                     "median_step_ms_monitor_off": float(np.median([e["off_ms"] for e in estimates])),
                     "median_step_ms_monitor_on": float(np.median([e["on_ms"] for e in estimates])),
                     "overhead": float(np.median(overheads)), "overhead_per_process": overheads,
                     "target_overhead": 0.10})
        print(f"{name}: median step {rows[-1]['median_step_ms_monitor_off']:.1f} ms plain, "
              f"{rows[-1]['median_step_ms_monitor_on']:.1f} ms monitored: overhead {rows[-1]['overhead']:.1%} "
              f"(per process: {', '.join(f'{o:+.1%}' for o in overheads)})", flush=True)
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
    parser.add_argument("--overhead-process", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--pairs", type=int, default=12, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.overhead_process:  # one fresh process's estimate, for bench_overhead
        print(json.dumps(overhead_in_this_process(args.overhead_process, args.pairs)))
        return 0
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
