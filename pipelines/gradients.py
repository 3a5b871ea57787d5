"""Gradient health: reports on training runs, gradients through time, and the demonstrations.

    python -m pipelines.gradients report RUN_DIR
    python -m pipelines.gradients through-time --kind text --seq-len 100
    python -m pipelines.gradients through-time --run runs/<run-id>
    python -m pipelines.gradients adding --lengths 10,50,100,200 --seeds 1
    python -m pipelines.gradients exploding --radius 3

`report` reads what the monitor wrote during training (`gradients.csv`), prints
the detectors' verdicts and plots the gradient and weight norms per layer.
`through-time` measures how the gradient of the last step's loss shrinks or
grows with each step back, for fresh SimpleRNN, LSTM and GRU models or for a
trained text model. `adding` and `exploding` are the experiments that show
why LSTM/GRU and clipping help (see `pipelines/adding_problem.py`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from model.config import CELLS, CLIP_KINDS, MonitorConfig, UsageError
from pipelines import cli

CELL_NAMES = {"simple_rnn": "SimpleRNN", "lstm": "LSTM", "gru": "GRU"}


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m pipelines.gradients", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", metavar="{report,through-time,adding,exploding}",
                                     parser_class=cli.ArgumentParser)
    commands.required = True
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("--verbose", action="store_true",
                         help="show TensorFlow's C++ start-up notices (as TF_CPP_MIN_LOG_LEVEL=0 does)")

    report = commands.add_parser("report", help="verdicts and plots of a training run's gradients")
    report.add_argument("run_dir", help="runs/<run-id> of a text or series training run")
    report.add_argument("--out", default=None, help="where the PNGs go (default: the run directory)")

    through = commands.add_parser("through-time", parents=[verbose], help="gradient of the last step's loss at every step")
    through.add_argument("--run", default=None, help="a finished text run (runs/<run-id>) instead of fresh models")
    through.add_argument("--kind", default="text", help="fresh models: text (next token) | series (next value)")
    through.add_argument("--cells", default=",".join(CELLS), help="fresh models: comma-separated cells")
    through.add_argument("--units", type=int, default=64)
    through.add_argument("--seq-len", type=int, default=100, help="T, the sequence length")
    through.add_argument("--batch", type=int, default=16, help="sequences averaged")
    through.add_argument("--corpus", default=None, help="--run: text to draw sequences from (default: pydoc topics)")
    through.add_argument("--seed", type=int, default=0)
    through.add_argument("--out", default="runs/gradients", help="where through_time.png and .json go")

    adding = commands.add_parser("adding", parents=[verbose], help="the adding-problem grid: cells x T x clipping")
    adding.add_argument("--cells", default=",".join(CELLS))
    adding.add_argument("--lengths", default="10,50,100,200", help="comma-separated T")
    adding.add_argument("--clips", default="clipnorm,none", help="comma-separated: " + " | ".join(CLIP_KINDS))
    adding.add_argument("--train-steps", type=int, default=1500, help="optimiser steps per configuration")
    adding.add_argument("--seeds", type=int, default=1, help="seeds per configuration (3 for the full grid)")
    adding.add_argument("--units", type=int, default=64)
    adding.add_argument("--out", default="runs/gradients", help="where adding.md, adding.json and plots go")

    exploding = commands.add_parser("exploding", parents=[verbose],
                                    help="SimpleRNN with a large recurrent kernel, clipped or not")
    exploding.add_argument("--radius", type=float, default=3.0, help="spectral radius of the recurrent kernel")
    exploding.add_argument("--seq-len", type=int, default=50)
    exploding.add_argument("--learning-rate", type=float, default=1e-2)
    exploding.add_argument("--train-steps", type=int, default=300)
    exploding.add_argument("--out", default="runs/gradients")
    return parser


def comma_list(value: str, allowed: Sequence[str], flag: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in items if v not in allowed]
    if not items or unknown:
        raise UsageError(f"{flag} takes a comma-separated list of {', '.join(allowed)}; got {value!r}")
    return items


def positive_ints(value: str, flag: str) -> list[int]:
    try:
        items = [int(v) for v in value.split(",")]
    except ValueError:
        items = []
    if not items or min(items) < 2:
        raise UsageError(f"{flag} takes comma-separated integers >= 2, e.g. 10,50,100; got {value!r}")
    return items


def require_positive(**values: int) -> None:
    for flag, value in values.items():
        if value <= 0:
            raise UsageError(f"--{flag.replace('_', '-')} must be a positive integer, got {value}")


def save_figure(figure, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return str(path)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


# -- report ------------------------------------------------------------------------
def read_run(run_dir: Path) -> tuple[list[dict[str, float]], dict[str, Any], MonitorConfig]:
    """The monitor's rows, layer layout and thresholds of a run directory."""
    import pandas as pd

    csv_path, layers_path = run_dir / "gradients.csv", run_dir / "gradient_layers.json"
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir} is not a directory; pass runs/<run-id> of a training run")
    if not csv_path.is_file() or not layers_path.is_file():
        raise UsageError(f"{run_dir} has no gradients.csv: it was trained with --no-grad-monitor, "
                         "or before its first epoch ended")
    rows = pd.read_csv(csv_path).to_dict("records")
    if not rows:
        raise UsageError(f"{csv_path} holds no steps yet; wait for the first epoch to end")
    config = MonitorConfig()
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        monitor = json.loads(summary_path.read_text()).get("config", {}).get("training", {}).get("monitor")
        if monitor:
            config = MonitorConfig(**monitor)
    return rows, json.loads(layers_path.read_text()), config


def report(run_dir: Path, out: Optional[Path]) -> dict[str, Any]:
    from model import gradient_health

    rows, layout, config = read_run(run_dir)
    out = out or run_dir
    summary_path = run_dir / "summary.json"
    measured = json.loads(summary_path.read_text()).get("gradient_health", {}).get("through_time") \
        if summary_path.is_file() else None
    findings = gradient_health.diagnose(rows, layout["layers"], layout["initial_weight_norms"], config,
                                        measured[-1] if measured else None, cli.SETTING_FLAGS)
    summary = gradient_health.summarize(rows, layout["layers"], layout["initial_weight_norms"], findings, None)
    plt = pyplot()
    steps = [row["step"] for row in rows]
    plots = {}
    for kind, title in (("grad", "gradient norm"), ("weight", "weight norm")):
        figure, axis = plt.subplots(figsize=(9, 5))
        for layer in layout["layers"]:
            for label in layer["labels"]:
                axis.plot(steps, [max(row[f"{kind}/{label}"], 1e-30) for row in rows], label=label, linewidth=1)
        if kind == "grad":
            axis.plot(steps, [row["grad_norm"] for row in rows], color="black", linewidth=1.5,
                      label="global, before clipping")
            axis.axhline(config.exploding_norm, color="red", linestyle="--", linewidth=1,
                         label=f"exploding threshold {config.exploding_norm:g}")
        axis.set(yscale="log", xlabel="training step", ylabel=title,
                 title=f"{run_dir.name}: {title} per variable")
        axis.legend(fontsize=7, ncol=2)
        plots[kind] = save_figure(figure, out / f"{kind}_norms.png")
        plt.close(figure)
    print(f"{run_dir}: {len(rows)} steps kept; pre-clip global norm median "
          f"{summary['grad_norm_pre_clip']['median']:.3g} (max {summary['grad_norm_pre_clip']['max']:.3g}); "
          f"clipped on {summary['clipped_share']:.0%} of steps; "
          f"loss improved {summary['loss_improvement']:.1%} over the second half")
    for label, figures in summary["per_variable"].items():
        print(f"  {label:40s} grad {figures['median_grad_norm']:10.3g}   weight "
              f"{figures['weight_norm_start']:8.3g} -> {figures['weight_norm_end']:8.3g}")
    for finding in findings:
        print(f"warning: {finding.message}")
    print(f"verdict: {summary['verdict']}")
    print(f"plots: {plots['grad']}, {plots['weight']}")
    return {**summary, "plots": plots}


# -- through time ------------------------------------------------------------------
def fresh_through_time(kind: str, cells: Sequence[str], units: int, seq_len: int, batch: int,
                       seed: int) -> dict[str, np.ndarray]:
    """Through-time curves of freshly initialised models, one per cell, on random inputs.

    Args:
        kind: `"text"`: next-token models on random tokens (67 symbols, like
            tiny Shakespeare); `"series"`: next-value models on random-walk
            prices (their recurrent layer reads the T − 1 log returns).
        cells: Which cells.
        units: Hidden width.
        seq_len: T.
        batch: Sequences averaged.
        seed: Weights and inputs.

    Returns:
        `{"SimpleRNN": curve, ...}`, each from `model.through_time.gradient_through_time`.
    """
    import keras

    from model import builders, through_time
    from model.config import ModelConfig
    from model.series_model import build_next_value_model, fit_scaling, price_scaling

    rng = np.random.default_rng(seed)
    curves = {}
    for cell in cells:
        keras.utils.set_random_seed(seed)
        if kind == "text":
            model = builders.build_next_token_model(67, ModelConfig(cell=cell, units=units))
            inputs = rng.integers(2, 67, size=(batch, seq_len)).astype(np.int32)
            loss = through_time.next_token_loss(rng.integers(2, 67, size=batch))
        else:  # the stock pipeline's model, on random-walk prices, scaled as the pipeline scales them
            model = build_next_value_model(seq_len, [True], 0, 1, ModelConfig(cell=cell, units=units))
            prices = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.01, size=(batch, seq_len, 1)), axis=1))
            price_scaling(model).set_stats(fit_scaling(prices[0], 0, "log_returns", [True]))
            inputs = prices.astype(np.float32)
            loss = through_time.next_value_loss(rng.normal(size=(batch, 1)))
        curves[CELL_NAMES[cell]] = through_time.gradient_through_time(model, inputs, loss)
    return curves


def run_through_time(run_dir: Path, corpus: Optional[str], batch: int, seed: int) -> dict[str, np.ndarray]:
    """The through-time curve of a finished text run, on windows of real text."""
    import tensorflow as tf

    from model import builders, through_time
    from model.config import ModelConfig
    from model.vocabulary import encode, id_space_size, tokenize
    from pipelines.text_data import default_corpus, read_corpus

    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise UsageError(f"{run_dir} has no summary.json; pass a finished text run (runs/<run-id>)")
    summary = json.loads(summary_path.read_text())
    if "vocabulary_size" not in summary:
        raise UsageError(f"{run_dir} is not a text run; through-time on series models: --kind series")
    metadata = tf.saved_model.load(summary["export_path"]).signatures["metadata"](rows=tf.constant([0]))
    vocabulary = [t.decode("utf-8") for t in metadata["vocabulary"].numpy()[0]]
    seq_len = int(metadata["seq_len"].numpy()[0])
    config = summary["config"]
    model = builders.build_next_token_model(id_space_size(vocabulary), ModelConfig(**config["model"]))
    model.load_weights(str(run_dir / "best.weights.h5"))
    ids = encode(tokenize(read_corpus(corpus) if corpus else default_corpus(), config["data"]["token_level"]),
                 vocabulary)
    if len(ids) < seq_len + 2:
        raise UsageError(f"the corpus has {len(ids)} tokens; through-time needs more than {seq_len + 1}")
    starts = np.random.default_rng(seed).integers(0, len(ids) - seq_len - 1, size=batch)
    windows = np.stack([ids[s:s + seq_len + 1] for s in starts])
    curve = through_time.gradient_through_time(model, windows[:, :-1],
                                               through_time.next_token_loss(windows[:, -1]))
    return {f"{CELL_NAMES[config['model']['cell']]} ({run_dir.name})": curve}


def plot_through_time(curves: dict[str, np.ndarray], title: str, path: Path) -> str:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(8, 5))
    for name, curve in curves.items():
        steps_back = np.arange(len(curve))[::-1]
        axis.plot(steps_back, np.maximum(curve, 1e-45), label=name)
    axis.set(yscale="log", xlabel="steps back from the last step (T − t)",
             ylabel="‖∂ loss_T / ∂ x_t‖", title=title)
    axis.legend()
    written = save_figure(figure, path)
    plt.close(figure)
    return written


def through_time_command(args: argparse.Namespace) -> dict[str, Any]:
    require_positive(units=args.units, batch=args.batch)
    if args.seq_len < 2:
        raise UsageError(f"--seq-len must be >= 2, got {args.seq_len}")
    if args.kind not in ("text", "series"):
        raise UsageError(f"--kind must be text or series, got {args.kind!r}")
    cells = comma_list(args.cells, CELLS, "--cells")
    cli.import_tensorflow(args.verbose)  # TensorFlow loads once the flags are known to be good
    from model.through_time import fit_decay

    if args.run:
        curves = run_through_time(Path(args.run), args.corpus, args.batch, args.seed)
    else:
        curves = fresh_through_time(args.kind, cells, args.units, args.seq_len, args.batch, args.seed)
    fits = {name: fit_decay(curve) for name, curve in curves.items()}
    steps = len(next(iter(curves.values())))
    print(f"Gradient of the last step's loss at each step (T = {steps}), batch-averaged norm:")
    print(f"  {'steps back':>10s} " + " ".join(f"{name:>14s}" for name in curves))
    for back in sorted({0, 1, 2, 5, 10, 20, 50, 100, 200, steps - 1} & set(range(steps))):
        print(f"  {back:10d} " + " ".join(f"{curve[steps - 1 - back]:14.3e}" for curve in curves.values()))
    for name, fit in fits.items():
        print(fit.describe(name))
    out = Path(args.out)
    title = f"gradient through time, T = {steps}" + ("" if args.run else f", fresh {args.kind} models")
    plot = plot_through_time(curves, title, out / "through_time.png")
    result = {"curves": {k: v.tolist() for k, v in curves.items()},
              "fits": {k: {"factor_per_step": f.factor_per_step, "first_to_last": f.first_to_last,
                           "underflowed": f.underflowed} for k, f in fits.items()}, "plot": plot}
    (out / "through_time.json").write_text(json.dumps(result) + "\n")
    print(f"plot: {plot}")
    return result


# -- the demonstrations ----------------------------------------------------------------
def adding_command(args: argparse.Namespace) -> dict[str, Any]:
    cells = comma_list(args.cells, CELLS, "--cells")
    clips = comma_list(args.clips, CLIP_KINDS, "--clips")
    lengths = positive_ints(args.lengths, "--lengths")
    require_positive(train_steps=args.train_steps, seeds=args.seeds, units=args.units)
    cli.import_tensorflow(args.verbose)
    from pipelines.adding_problem import markdown_table, train_adding

    results = []
    for cell in cells:
        for steps in lengths:
            for clip in clips:
                for seed in range(args.seeds):
                    result, _, _ = train_adding(cell, steps, clip, args.train_steps, seed, units=args.units)
                    print(f"{cell:10s} T={steps:<4d} {clip:9s} seed {seed}: test MSE {result.final_test_mse:.4f}, "
                          f"solved at {result.steps_to_solve}, {result.share_above_1:.0%} steps > 1.0, "
                          f"{result.seconds:.0f} s", flush=True)
                    results.append(result)
    table = markdown_table(results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "adding.md").write_text(table + "\n")
    (out / "adding.json").write_text(json.dumps([r.as_row() for r in results], indent=2) + "\n")
    print("\n" + table)
    return {"results": [r.as_row() for r in results], "table": table}


def exploding_rows(radius: float, seq_len: int, train_steps: int, learning_rate: float) -> list[dict[str, Any]]:
    """A SimpleRNN whose recurrent kernel has spectral radius `radius`, trained with Adam and with plain
    SGD, each with clipnorm 1.0 and without: the figures of the exploding-gradient demonstration."""
    from pipelines.adding_problem import train_adding

    rows = []
    for optimizer in ("adam", "sgd"):
        for clip in ("clipnorm", "none"):
            result, health, _ = train_adding("simple_rnn", seq_len, clip, train_steps, seed=0,
                                              learning_rate=learning_rate, recurrent_scale=radius,
                                              eval_every=min(100, train_steps), optimizer=optimizer)
            rows = health.recorder.rows
            norms = [row["grad_norm"] for row in rows]
            kernel = "simple_rnn_0/recurrent_kernel"
            growth = rows[-1][f"weight/{kernel}"] / health.recorder.initial_weight_norms[kernel] if norms else math.nan
            rows.append({**result.as_row(), "optimizer": optimizer,
                         "median_grad_norm": float(np.median(norms)) if norms else math.nan,
                         "max_grad_norm": float(np.max(norms)) if norms else math.nan,
                         "recurrent_kernel_growth": growth, "findings": [f.message for f in health.findings]})
            print(f"SimpleRNN, radius {radius:g}, T={seq_len}, {optimizer} {clip}: test MSE {result.final_test_mse:.4g}; "
                  f"pre-clip norm median {rows[-1]['median_grad_norm']:.3g}, max {rows[-1]['max_grad_norm']:.3g}, "
                  f"> 1.0 on {result.share_above_1:.0%} of steps; W_hh x{growth:.2f}; diverged: {result.diverged}; "
                  f"monitor: {result.verdict}", flush=True)
    return rows


def exploding_command(args: argparse.Namespace) -> dict[str, Any]:
    require_positive(train_steps=args.train_steps)
    if not args.radius > 0 or args.seq_len < 2:
        raise UsageError(f"--radius must be > 0 and --seq-len >= 2, got {args.radius} and {args.seq_len}")
    cli.import_tensorflow(args.verbose)
    rows = exploding_rows(args.radius, args.seq_len, args.train_steps, args.learning_rate)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "exploding.json").write_text(json.dumps(rows, indent=2) + "\n")
    return {"rows": rows}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "report":
        report(Path(args.run_dir), Path(args.out) if args.out else None)
    elif args.command == "through-time":
        through_time_command(args)
    elif args.command == "adding":
        adding_command(args)
    else:
        exploding_command(args)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
