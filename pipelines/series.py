"""Next-value pipeline: prices -> train a SimpleRNN/LSTM/GRU -> judge it against baselines -> export.

    python -m pipelines.series --csv FILE --target Close --window 30 --horizon 1 \\
        --cell lstm --epochs 20 --output saved_models/NAME

Without `--csv` it trains on real daily prices shipped in the bokeh-sampledata
package (MSFT 2000-2013 by default; `--write-default-csv prices.csv` writes
them out to show the expected format). Every figure on the test span is shown
beside the naive "tomorrow = today" forecast, and the verdict line says
whether the model beats it, with a significance test, never more.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from model.config import ForecastConfig, ModelConfig, OptimizerConfig, TrainingConfig, UsageError
from model.export import check_export_base
from pipelines import adaptive_interval, backtest, cli, forecast_eval
from pipelines.series_data import (
    DEFAULT_SOURCE,
    DEFAULT_TICKER,
    PriceSeries,
    Split,
    chronological_split,
    default_prices,
    future_at,
    is_price_column,
    load_prices,
    make_dataset,
    origins_in,
    read_csv,
    windows_at,
)


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m pipelines.series", description=__doc__.split("\n\n")[0])
    data = parser.add_argument_group("data")
    data.add_argument("--csv", default=None, help=f"CSV of daily prices (default: {DEFAULT_SOURCE})")
    data.add_argument("--ticker", default=None,
                      help=f"series to use when the CSV holds several (default data: {DEFAULT_TICKER})")
    data.add_argument("--target", default=None, help="predicted column (default: Adj Close, else Close)")
    data.add_argument("--features", default=None, help="comma-separated input columns (default: the target)")
    data.add_argument("--val-fraction", type=float, default=0.15)
    data.add_argument("--test-fraction", type=float, default=0.15)
    data.add_argument("--write-default-csv", metavar="PATH", default=None,
                      help="write the packaged prices to PATH as CSV, then exit")
    task = parser.add_argument_group("forecast")
    task.add_argument("--window", type=int, default=30, help="W: days per input window")
    task.add_argument("--horizon", type=int, default=1, help="H: days predicted at once")
    task.add_argument("--transform", default="log_returns", help="log_returns (default) | scaled")
    task.add_argument("--loss", default="mse", help="mse | huber")
    task.add_argument("--quantiles", default=None, help="e.g. 0.1,0.5,0.9: predict an interval")
    task.add_argument("--bidirectional", action="store_true", help="Bidirectional recurrent layers")
    task.add_argument("--ma-days", type=int, default=5, help="k of the moving-average baseline")
    task.add_argument("--refit-every", type=int, default=0,
                      help="walk-forward test: train further every k steps on all data known by then (0: never)")
    task.add_argument("--refit-epochs", type=int, default=1, help="epochs per walk-forward refit")
    task.add_argument("--interval-adapt-rate", type=float, default=None,
                      help="with --quantiles: step size of the interval's adaptive recalibration through the "
                           "test span (default: the rate that guarantees coverage within 3 points)")
    cli.add_model_flags(parser, default_units=64)
    cli.add_optimizer_flags(parser)
    cli.add_training_flags(parser)
    parser.add_argument("--output", default="saved_models/stock", help="model directory (default saved_models/stock)")
    parser.set_defaults(epochs=20, batch_size=32, learning_rate=1e-3, patience=5)
    return parser


def forecast_config(args: argparse.Namespace) -> ForecastConfig:
    try:
        quantiles = tuple(float(q) for q in args.quantiles.split(",")) if args.quantiles else ()
    except ValueError:
        raise UsageError(f"--quantiles must be comma-separated numbers such as 0.1,0.5,0.9, "
                         f"got {args.quantiles!r}") from None
    config = ForecastConfig(window=args.window, horizon=args.horizon, transform=args.transform, loss=args.loss,
                            quantiles=quantiles, bidirectional=args.bidirectional, ma_days=args.ma_days)
    config.validate()
    return config


def load_series(args: argparse.Namespace) -> PriceSeries:
    features = [name.strip() for name in args.features.split(",")] if args.features else None
    if args.csv:
        return load_prices(read_csv(args.csv), args.csv, args.ticker, args.target, features)
    return load_prices(default_prices(), DEFAULT_SOURCE, args.ticker or DEFAULT_TICKER, args.target, features)


def prepare_examples(series: PriceSeries, split: Split, forecast: ForecastConfig,
                     scaling) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Forecast origins and standardised targets of each span.

    Args:
        series: The prices.
        split: The chronological split.
        forecast: Window and horizon.
        scaling: The model's `PriceScaling` layer, already fitted.

    Returns:
        `{"train" | "validation" | "test": (origins [n], z [n, H])}`. Training
        examples read rows [0, train_end) only: no validation or test value.
    """
    spans = {"train": (0, split.train_end), "validation": (split.train_end, split.val_end),
             "test": (split.val_end, split.total)}
    target = series.target_values.astype(np.float32)
    examples = {}
    for name, (start, end) in spans.items():
        origins = origins_in(start, end, forecast.window, forecast.horizon)
        z = np.asarray(scaling.to_z(future_at(target, origins, forecast.horizon), target[origins]))
        examples[name] = (origins, z)
    return examples


def calibrate_interval(model, series: PriceSeries, split: Split, origins: np.ndarray, z_true: np.ndarray,
                       forecast: ForecastConfig) -> tuple[dict[str, Any], np.ndarray]:
    """Conformal calibration of the prediction interval on the validation span.

    Quantile regression alone is often over- or under-confident; the margin
    (in z units, per horizon, scaled by each window's volatility relative to
    the training span's) makes the first-to-last-quantile interval cover its
    nominal share of the validation span. The model keeps the margin.

    Returns:
        The level, the margins and the validation coverage before and after;
        and the validation span's nonconformity scores `[n, H]`, from which
        the test span's adaptive intervals start.
    """
    from model.series_model import conformal_margin, nonconformity

    layer = model.get_layer("interval_margin")
    layer.margin.assign(np.zeros(forecast.horizon, np.float32))
    # Volatility is measured relative to the training span's (and only it: no later value).
    train_returns = np.diff(np.log(series.target_values[:split.train_end]))
    layer.reference_volatility.assign(np.float32(np.std(train_returns)))
    windows = windows_at(series.values, origins, forecast.window).astype(np.float32)
    z = model.predict(windows, verbose=0)
    volatility = np.asarray(layer.relative_volatility(windows), np.float64)
    level = forecast.quantiles[-1] - forecast.quantiles[0]
    margin = conformal_margin(z[:, :, 0], z[:, :, -1], z_true, level, volatility)
    layer.margin.assign(margin.astype(np.float32))
    widen = margin[None, :] * volatility[:, None]
    inside = lambda m: float(np.mean((z[:, :, 0] - m <= z_true) & (z_true <= z[:, :, -1] + m)))  # noqa: E731
    report = {"level": level, "margin_z": margin.tolist(), "validation_coverage_before": inside(0.0),
              "validation_coverage_after": inside(widen)}
    return report, nonconformity(z[:, :, 0], z[:, :, -1], z_true, volatility)


def adapt_interval(walked: backtest.Backtest, scaling, series: PriceSeries, forecast: ForecastConfig,
                   z_true: np.ndarray, calibration_scores: np.ndarray,
                   rate: Optional[float]) -> tuple[np.ndarray, dict[str, Any]]:
    """Recalibrate the interval through the test span with ACI, from each day's past only.

    Args:
        z_true: `[n, H]` what happened after each walk-forward origin, in z units.

    Returns:
        The walk-forward quantiles in prices `[n, H, Q]` with ACI's bounds in
        place of the exported ones, and `AdaptiveIntervals.summary`.
    """
    target = series.target_values.astype(np.float32)
    level = forecast.quantiles[-1] - forecast.quantiles[0]
    aci = adaptive_interval.adaptive_intervals(calibration_scores, walked.raw_z[:, :, 0], walked.raw_z[:, :, -1],
                                               z_true, walked.volatility, level, rate)
    z = np.concatenate([aci.lower[:, :, None], walked.raw_z[:, :, 1:-1], aci.upper[:, :, None]], axis=2)
    with np.errstate(over="ignore", invalid="ignore"):  # unbounded days stay unbounded in prices
        prices = np.asarray(scaling.to_prices(z.astype(np.float32), target[walked.origins]), np.float64)
    return prices, aci.summary(level)


# -- train, evaluate, export -----------------------------------------------------------

def evaluate(series: PriceSeries, split: Split, forecast: ForecastConfig, predictions: np.ndarray,
             origins: np.ndarray, name: str, adaptive: Optional[tuple[np.ndarray, dict]] = None) -> dict[str, Any]:
    """Model and baselines on the test span: every measure, the verdict, interval coverage.

    Args:
        predictions: `[n, H]` point forecasts in prices, or `[n, H, Q]` quantiles.
        origins: The test origins the predictions were made at.
        name: The model's name in the verdict (e.g. "LSTM").
        adaptive: With quantiles, `adapt_interval`'s prices and summary: the
            coverage of the adaptively recalibrated interval is reported too.
    """
    target = series.target_values
    actual = future_at(target, origins, forecast.horizon)
    last = target[origins]
    point = predictions
    coverage = None
    if predictions.ndim == 3:
        levels = np.asarray(forecast.quantiles)
        point = predictions[:, :, int(np.argmin(np.abs(levels - 0.5)))]
        coverage = {"nominal": float(levels[-1] - levels[0]),
                    "observed": forecast_eval.interval_coverage(actual, predictions[:, :, 0], predictions[:, :, -1])}
        if adaptive is not None:
            bounds, summary = adaptive
            exported_width = predictions[:, :, -1] - predictions[:, :, 0]
            adaptive_width = bounds[:, :, -1] - bounds[:, :, 0]
            bounded = np.isfinite(adaptive_width) & (adaptive_width >= 0) & (exported_width > 0)
            coverage["adaptive"] = {
                **summary, "observed": forecast_eval.interval_coverage(actual, bounds[:, :, 0], bounds[:, :, -1]),
                "median_width_vs_exported": (float(np.median(adaptive_width[bounded] / exported_width[bounded]))
                                             if bounded.any() else None)}
    forecasts = {"model": point, **forecast_eval.baselines(target, origins, forecast.horizon, forecast.ma_days)}
    scale = forecast_eval.naive_scale(target[:split.train_end])
    naive_rmse = float(np.sqrt(np.mean((forecasts["naive"] - actual) ** 2)))
    metrics = {key: forecast_eval.point_metrics(actual, value, last, naive_rmse, scale)
               for key, value in forecasts.items()}
    test = forecast_eval.diebold_mariano(actual, point, forecasts["naive"], forecast.horizon)
    return {
        "test_points": int(actual.size),
        "test_span": [str(series.dates[split.val_end])[:10], str(series.dates[-1])[:10]],
        "metrics": metrics,
        "up_share": forecast_eval.up_share(actual, last),
        "diebold_mariano_vs_naive": test,
        "interval_coverage": coverage,
        "verdict": forecast_eval.verdict(name, metrics["model"]["rmse"], naive_rmse, test["p_value"]),
    }


def train_series_model(series: PriceSeries, split: Split, forecast: ForecastConfig, model_config: ModelConfig,
                       optimizer_config: OptimizerConfig, training_config: TrainingConfig, output: str | Path,
                       refit_every: int = 0, refit_epochs: int = 1,
                       extra_callbacks: Iterable[Any] = (), adapt_rate: Optional[float] = None) -> dict[str, Any]:
    """Fit the scaling on the training span, train, export, then walk forward through the test span.

    Args:
        refit_every: In the walk-forward evaluation, train further every k
            test steps on everything known by then (0: never).
        refit_epochs: Epochs per refit.
        adapt_rate: With an interval, the step size of its adaptive
            recalibration through the test span (`pipelines.adaptive_interval`);
            None: the rate that guarantees the coverage within 3 points.

    Returns:
        The summary written to `runs/<run-id>/summary.json`.
    """
    from model import distribute

    with distribute.placement(training_config.strategy) as place:
        return _train_series_model(place, series, split, forecast, model_config, optimizer_config, training_config,
                                   output, refit_every, refit_epochs, extra_callbacks, adapt_rate)


def _train_series_model(place, series, split, forecast, model_config, optimizer_config, training_config, output,
                        refit_every, refit_epochs, extra_callbacks, adapt_rate) -> dict[str, Any]:
    import keras

    from model import distribute, through_time, training
    from model.series_export import export_series_model
    from model.series_model import build_next_value_model, compile_next_value_model, fit_scaling, price_scaling

    keras.utils.set_random_seed(training_config.seed)
    W, H = forecast.window, forecast.horizon
    log_features = [is_price_column(name, series.target) for name in series.features]
    with place.strategy.scope():
        model = build_next_value_model(W, log_features, series.target_index, H, model_config, forecast.transform,
                                       forecast.quantiles, forecast.bidirectional)
    scaling = price_scaling(model)
    # The statistics see the training span and nothing after it.
    scaling.set_stats(fit_scaling(series.values[:split.train_end], series.target_index, forecast.transform,
                                  log_features))
    examples = prepare_examples(series, split, forecast, scaling)
    train_origins, train_z = examples["train"]
    val_origins, val_z = examples["validation"]
    train_data = distribute.shard_by_data(make_dataset(series.values, train_z, train_origins, W,
                                                       training_config.batch_size, True, training_config.seed))
    val_data = distribute.shard_by_data(make_dataset(series.values, val_z, val_origins, W,
                                                     training_config.batch_size, False))

    steps_per_epoch = training_config.steps_per_epoch or int(np.ceil(len(train_origins) / training_config.batch_size))
    with place.strategy.scope():
        optimizer = training.make_run_optimizer(optimizer_config, training_config, steps_per_epoch)
        compile_next_value_model(model, optimizer, forecast.loss, forecast.quantiles)
    run = training.RunDirectory.open(place.runs_dir(training_config.runs_dir), training_config.run_id,
                                     Path(output).name)
    probe_x, probe_y = next(iter(val_data))  # the monitor's through-time check reads these windows
    probe = (probe_x[:16], through_time.compiled_loss(model, probe_y[:16]))
    result = training.train(model, train_data, val_data, run, training_config, optimizer_config, extra_callbacks,
                            probe)

    calibration = calibration_scores = None
    if len(forecast.quantiles) >= 2:
        calibration, calibration_scores = calibrate_interval(model, series, split, val_origins, val_z, forecast)

    version_dir = export_series_model(model, place.output(output), {
        "cell": model_config.cell, "window": W, "horizon": H, "features": series.features,
        "log_features": log_features, "target": series.target, "transform": forecast.transform,
        "quantile_levels": list(forecast.quantiles), "interval_calibration": calibration,
        "ticker": series.ticker, "source": series.source,
        "train_span": [str(series.dates[0])[:10], str(series.dates[split.train_end - 1])[:10]],
        "run_id": run.run_id}, warmup_window=series.values[split.train_end - W:split.train_end])

    # The test span, walked forward after the export (refits never reach the exported model).
    walked = backtest.walk_forward(model, scaling, series, split, forecast, refit_every, refit_epochs,
                                   training_config.batch_size, training_config.seed, optimizer_config)
    adaptive = None
    if calibration_scores is not None:
        test_z = examples["test"][1]  # the test origins are the ones the walk went through
        adaptive = adapt_interval(walked, scaling, series, forecast, test_z, calibration_scores, adapt_rate)
    name = model_config.cell.upper().replace("SIMPLE_RNN", "SimpleRNN")
    evaluation = evaluate(series, split, forecast, walked.predictions, walked.origins, name, adaptive)
    metrics = evaluation["metrics"]
    headline = f"RMSE {metrics['model']['rmse'] / metrics['naive']['rmse']:.3f}× naive"
    plots = backtest.plot_backtest(series, walked, forecast, f"{name} on {series.ticker or series.source}: {headline}",
                                   run.path, adaptive[0] if adaptive else None)
    evaluation["interval_calibration"] = calibration
    evaluation["walk_forward"] = {"refit_every": refit_every, "refit_epochs": refit_epochs,
                                  "refits": walked.refits, "plots": plots}

    summary = {
        "run_id": run.run_id,
        "run_dir": str(run.path),
        "config": {"model": dataclasses.asdict(model_config), "optimizer": dataclasses.asdict(optimizer_config),
                   "training": dataclasses.asdict(training_config), "forecast": dataclasses.asdict(forecast),
                   "data": {"source": series.source, "ticker": series.ticker, "target": series.target,
                            "features": series.features}},
        "rows": split.total, "missing_filled": series.missing_filled,
        "split": {"train_end": split.train_end, "val_end": split.val_end, "total": split.total},
        "train_windows": len(train_origins), "val_windows": len(val_origins), "test_windows": len(walked.origins),
        "best_val_loss": result.best_val_loss, "epochs_run": result.epochs_run, "steps": result.steps,
        "timed_steps": result.timed_steps,
        "train_seconds": result.train_seconds, "wall_seconds": result.wall_seconds,
        "stopped_early": result.stopped_early, "stopped_by_time_budget": result.stopped_by_time_budget,
        "resumed": result.resumed,
        "gradient_health": result.gradient_health, "parameters": int(model.count_params()),
        "evaluation": evaluation, "export_path": str(version_dir),
        "worker": distribute.worker_name(place.strategy), "chief": place.chief,
    }
    run.write_summary(summary)
    return summary


def format_report(summary: dict[str, Any]) -> str:
    """The test-span table: the model beside every baseline."""
    evaluation = summary["evaluation"]
    lines = [f"Test span {evaluation['test_span'][0]} .. {evaluation['test_span'][1]} "
             f"({evaluation['test_points']} points; up days {evaluation['up_share']:.1%})",
             f"{'forecast':<20}{'MAE':>10}{'RMSE':>10}{'MAPE %':>9}{'MASE':>8}{'U2':>8}{'direction':>11}"]
    for name, m in evaluation["metrics"].items():
        direction = "—" if m["directional_accuracy"] is None else f"{m['directional_accuracy']:.1%}"
        u2 = "—" if m["theil_u2"] is None else f"{m['theil_u2']:.3f}"
        lines.append(f"{name:<20}{m['mae']:>10.4f}{m['rmse']:>10.4f}{m['mape_percent']:>9.3f}{m['mase']:>8.3f}"
                     f"{u2:>8}{direction:>11}")
    if evaluation["interval_coverage"]:
        c = evaluation["interval_coverage"]
        lines.append(f"{c['nominal']:.0%} interval (conformally calibrated on validation) covers "
                     f"{c['observed']:.1%} of test points")
        if "adaptive" in c:
            a = c["adaptive"]
            lines.append(f"{c['nominal']:.0%} interval recalibrated day by day (adaptive conformal, rate "
                         f"{a['rate']:.3f}) covers {a['observed']:.1%} (guaranteed within "
                         f"±{a['guaranteed_within']:.1%} of {c['nominal']:.0%}; unbounded on "
                         f"{a['unbounded_points']}, empty on {a['empty_points']} of {evaluation['test_points']} "
                         f"points)")
    lines.append(evaluation["verdict"])
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.write_default_csv:
        path = Path(args.write_default_csv)
        if path.is_dir():
            raise UsageError(f"--write-default-csv {path} is a directory; pass a file name such as prices.csv")
        frame = default_prices()
        frame.to_csv(path, index=False)
        print(f"Wrote {len(frame):,} rows ({', '.join(sorted(frame['Ticker'].unique()))}) to {path}")
        return 0
    forecast = forecast_config(args)
    if args.refit_every < 0 or args.refit_epochs <= 0:
        raise UsageError(f"--refit-every must be >= 0 and --refit-epochs >= 1, "
                         f"got {args.refit_every} and {args.refit_epochs}")
    if args.interval_adapt_rate is not None and not 0 < args.interval_adapt_rate <= 1:
        raise UsageError(f"--interval-adapt-rate must be in (0, 1], got {args.interval_adapt_rate}")
    model_config = cli.model_config(args)
    optimizer_config = cli.optimizer_config(args)
    training_config = cli.training_config(args)
    check_export_base(args.output)
    series = load_series(args)
    split = chronological_split(len(series.dates), forecast.window, forecast.horizon,
                                args.val_fraction, args.test_fraction)
    print(f"{series.source}{' ' + series.ticker if series.ticker else ''}: {split.total:,} days, "
          f"target {series.target}, features {', '.join(series.features)}; "
          f"{series.missing_filled} missing cells forward-filled")

    summary = train_series_model(series, split, forecast, model_config, optimizer_config, training_config,
                                 args.output, args.refit_every, args.refit_epochs,
                                 adapt_rate=args.interval_adapt_rate)
    print("\n" + format_report(summary))
    if not summary["chief"]:
        print(f"{summary['worker']} done: the chief writes the run directory and the export")
        return 0
    plots = summary["evaluation"]["walk_forward"]["plots"]
    print(f"\nRun: {summary['run_dir']}   Export: {summary['export_path']}\nPlots: {plots['forecasts']}, "
          f"{plots['residuals']}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
