"""Benchmarks of the stock pipeline: forecasts against the random walk, calibration, speed.

    python -m bench.series                    # about 15 minutes on 2 cores
    python -m bench.series --only speed

- accuracy: on three packaged series (MSFT, the default, then IBM and AAPL), for
  SimpleRNN, LSTM and GRU, with and without clipnorm: the test-span RMSE ratio
  to the naive forecast, MASE, directional accuracy beside the share of up
  days, the coverage of the 80% interval, and the verdict. The table is true
  whatever it shows.
- speed: the pipeline's time per epoch against a bare `Model.fit` on the same
  arrays, interleaved in the same run (target ratio >= 0.95; here the ratio is
  bare time / pipeline time, so higher is better).

Results: `bench/results/series_<name>.json`; the README's table is printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.text import RESULTS, environment
from model.config import ForecastConfig, ModelConfig, OptimizerConfig, TrainingConfig
from pipelines.series import prepare_examples, train_series_model
from pipelines.series_data import chronological_split, default_prices, load_prices, windows_at

TICKERS = ("MSFT", "IBM", "AAPL")
CELLS = ("simple_rnn", "lstm", "gru")
FORECAST = ForecastConfig(window=30, horizon=1, quantiles=(0.1, 0.5, 0.9))
MODEL_UNITS = 64


def save(name: str, result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"series_{name}.json").write_text(
        json.dumps({"benchmark": name, "environment": environment(), **result}, indent=2) + "\n")


def bench_accuracy(epochs: int) -> dict:
    frame = default_prices()
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for ticker in TICKERS:
            series = load_prices(frame, "bokeh_sampledata.stocks", ticker=ticker)
            split = chronological_split(len(series.dates), FORECAST.window, FORECAST.horizon)
            for cell in CELLS:
                for clip in ("clipnorm", "none"):
                    summary = train_series_model(
                        series, split, FORECAST, ModelConfig(cell=cell, units=MODEL_UNITS),
                        OptimizerConfig(learning_rate=1e-3, clip=clip),
                        TrainingConfig(epochs=epochs, batch_size=32, patience=5,
                                       runs_dir=str(Path(workdir) / "runs"), run_id=f"{ticker}-{cell}-{clip}"),
                        Path(workdir) / "saved_models" / f"{ticker}-{cell}-{clip}")
                    e = summary["evaluation"]
                    model, naive = e["metrics"]["model"], e["metrics"]["naive"]
                    adaptive = e["interval_coverage"]["adaptive"]
                    rows.append({
                        "ticker": ticker, "cell": cell, "clip": clip, "test_span": e["test_span"],
                        "rmse_ratio_to_naive": model["rmse"] / naive["rmse"], "mase": model["mase"],
                        "naive_mase": naive["mase"], "directional_accuracy": model["directional_accuracy"],
                        "up_share": e["up_share"], "coverage_80": e["interval_coverage"]["observed"],
                        "coverage_80_adaptive": adaptive["observed"], "adaptive_rate": adaptive["rate"],
                        "adaptive_guaranteed_within": adaptive["guaranteed_within"],
                        "adaptive_unbounded_points": adaptive["unbounded_points"],
                        "adaptive_median_width_vs_exported": adaptive["median_width_vs_exported"],
                        "dm_p_value": e["diebold_mariano_vs_naive"]["p_value"], "verdict": e["verdict"],
                        "epochs_run": summary["epochs_run"],
                    })
                    print(rows[-1]["verdict"], f"({ticker}, clip {clip})", flush=True)
    result = {"forecast": FORECAST.__dict__, "units": MODEL_UNITS, "max_epochs": epochs, "rows": rows,
              "calibration_goal": "80% interval covers 77-83% of test points",
              "calibration_methods": {
                  "coverage_80": "as exported: conformal margin fitted once, on the validation span",
                  "coverage_80_adaptive": "recalibrated day by day through the test span from past days only "
                                          "(adaptive conformal inference, rate set by its guarantee)"}}
    save("accuracy", result)
    return result


def bench_speed(repeats: int = 3, epochs: int = 3) -> dict:
    """Seconds per epoch: the pipeline's fit (tf.data, all callbacks) vs a bare Model.fit on the same arrays."""
    import keras

    from model import builders
    from model.series_model import build_next_value_model, compile_next_value_model, fit_scaling, price_scaling

    series = load_prices(default_prices(), "bokeh_sampledata.stocks", ticker="MSFT")
    split = chronological_split(len(series.dates), FORECAST.window, FORECAST.horizon)
    point = ForecastConfig(window=30, horizon=1)
    config = ModelConfig(cell="lstm", units=MODEL_UNITS)
    pipeline, bare = [], []
    with tempfile.TemporaryDirectory() as workdir:
        for repeat in range(repeats):
            model = build_next_value_model(30, [True], 0, 1, config)
            scaling = price_scaling(model)
            scaling.set_stats(fit_scaling(series.values[:split.train_end], 0, "log_returns", [True]))
            origins, z = prepare_examples(series, split, point, scaling)["train"]
            x = windows_at(series.values, origins, 30).astype(np.float32)
            compile_next_value_model(model, builders.make_optimizer(OptimizerConfig()))
            model.fit(x[:64], z[:64], batch_size=32, verbose=0)  # trace first
            start = time.perf_counter()
            model.fit(x, z, batch_size=32, epochs=epochs, shuffle=True, verbose=0)
            bare.append((time.perf_counter() - start) / epochs)

            summary = train_series_model(
                series, split, point, config, OptimizerConfig(),
                TrainingConfig(epochs=epochs + 1, batch_size=32, patience=0,
                               runs_dir=str(Path(workdir) / "runs"), run_id=f"speed-{repeat}"),
                Path(workdir) / "saved_models" / "speed")
            # Steady state, as for the bare fit: the first (tracing) step and validation are not timed.
            steps_per_epoch = -(-len(x) // 32)
            pipeline.append(summary["train_seconds"] / summary["timed_steps"] * steps_per_epoch)
            keras.backend.clear_session()
    result = {"model": f"LSTM-{MODEL_UNITS}, window 30, batch 32, MSFT",
              "pipeline_seconds_per_epoch": statistics.median(pipeline),
              "bare_fit_seconds_per_epoch": statistics.median(bare),
              "ratio": statistics.median(bare) / statistics.median(pipeline), "target_ratio": 0.95,
              "runs": {"pipeline": pipeline, "bare_fit": bare}}
    save("speed", result)
    return result


def adaptive_cell(row: dict) -> str:
    """The recalibrated interval's coverage, with the days it was unbounded (results older than ACI: —)."""
    if "coverage_80_adaptive" not in row:
        return "—"
    unbounded = row["adaptive_unbounded_points"]
    return f"**{row['coverage_80_adaptive']:.1%}**" + (f" ({unbounded} unbounded)" if unbounded else "")


def table() -> str:
    results = {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("series_*.json"))}
    lines = []
    if "series_accuracy" in results:
        r = results["series_accuracy"]
        lines += ["| series (test span) | cell | clip | RMSE / naive | MASE (naive) | direction (up days) "
                  "| 80% interval covers: exported / recalibrated daily | verdict |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in r["rows"]:
            direction = "—" if row["directional_accuracy"] is None else f"{row['directional_accuracy']:.1%}"
            lines.append(
                f"| {row['ticker']} ({row['test_span'][0][:4]}–{row['test_span'][1][:4]}) | {row['cell']} | "
                f"{row['clip']} | {row['rmse_ratio_to_naive']:.3f} | {row['mase']:.3f} ({row['naive_mase']:.3f}) | "
                f"{direction} ({row['up_share']:.1%}) | {row['coverage_80']:.1%} / {adaptive_cell(row)} | "
                f"{row['verdict'].split(' — ', 1)[1]} |")
    if "series_speed" in results:
        r = results["series_speed"]
        lines += ["", f"Time per epoch, {r['model']}: pipeline {r['pipeline_seconds_per_epoch']:.2f} s, bare "
                      f"`Model.fit` {r['bare_fit_seconds_per_epoch']:.2f} s: ratio **{r['ratio']:.2f}** "
                      f"(target ≥ {r['target_ratio']})."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.series", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="accuracy,speed")
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args(argv)
    chosen = set(args.only.split(","))
    if "speed" in chosen:
        bench_speed()
    if "accuracy" in chosen:
        bench_accuracy(args.epochs)
    print("\n" + table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
