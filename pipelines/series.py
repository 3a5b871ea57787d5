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

from model.config import (
    BacktestConfig,
    ForecastConfig,
    ModelConfig,
    OptimizerConfig,
    SeriesDataConfig,
    TrainingConfig,
    UsageError,
)
from model.export import check_export_base
from pipelines import backtest, cli, forecast_eval, intervals
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
)


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m pipelines.series", description=__doc__.split("\n\n")[0])
    cli.add_config_flags(parser, SeriesDataConfig, "data")
    parser.add_argument("--write-default-csv", metavar="PATH", default=None,
                        help="write the packaged prices to PATH as CSV, then exit")
    cli.add_config_flags(parser, ForecastConfig, "forecast")
    cli.add_config_flags(parser, BacktestConfig, "walk-forward test")
    cli.add_model_flags(parser, default_units=64)
    cli.add_optimizer_flags(parser, OptimizerConfig(learning_rate=1e-3))
    cli.add_training_flags(parser, TrainingConfig(epochs=20, batch_size=32, patience=5))
    parser.add_argument("--output", default="saved_models/stock", help="model directory (default saved_models/stock)")
    return parser


def load_series(config: SeriesDataConfig) -> PriceSeries:
    features = list(config.features) or None
    if config.csv:
        return load_prices(read_csv(config.csv), config.csv, config.ticker, config.target, features)
    return load_prices(default_prices(), DEFAULT_SOURCE, config.ticker or DEFAULT_TICKER, config.target, features)


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


# -- train, evaluate, export -----------------------------------------------------------

def evaluate(series: PriceSeries, split: Split, forecast: ForecastConfig, predictions: np.ndarray,
             origins: np.ndarray, name: str, adaptive: Optional[tuple[np.ndarray, dict]] = None) -> dict[str, Any]:
    """Model and baselines on the test span: every measure, the verdict, interval coverage.

    Args:
        predictions: `[n, H]` point forecasts in prices, or `[n, H, Q]` quantiles.
        origins: The test origins the predictions were made at.
        name: The model's name in the verdict (e.g. "LSTM").
        adaptive: With quantiles, `intervals.adapt`'s prices and summary: the
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
        coverage = intervals.coverage_report(actual, predictions, forecast.quantiles, adaptive)
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


class SeriesTask:
    """Next-value prediction on a price series (a `model.training.Task`).

    The scaling statistics are fitted on the training span only; after the
    export, the test span is walked forward (with refits, if asked) and judged
    against the baselines; a quantile model's interval is calibrated on the
    validation span before the export and adapted through the test span.

    Args:
        series: The prices.
        split: The chronological split.
        forecast: Window, horizon, transform, loss, quantiles.
        backtest_config: Refits and the interval's adaptation rate.
        optimizer_config: What the walk-forward refits train with.
        name: The model directory's name.

    Attributes:
        model_config, scaling, examples, batch_size, seed: What `build` and
            `datasets` were given or fitted, in the job's order (`run_job`):
            the export names the cell, the walk-forward refits train with the
            same batch and seed on the same scaling.
    """

    def __init__(self, series: PriceSeries, split: Split, forecast: ForecastConfig, backtest_config: BacktestConfig,
                 optimizer_config: OptimizerConfig, name: str):
        self.series, self.split, self.forecast, self.backtest = series, split, forecast, backtest_config
        self.optimizer_config = optimizer_config
        self.name = name
        self.log_features = [is_price_column(column, series.target) for column in series.features]
        self.model_config: Optional[ModelConfig] = None  # set by build
        self.scaling = self.examples = None  # set by datasets, with batch_size and seed
        self.batch_size: Optional[int] = None
        self.seed: Optional[int] = None

    def build(self, model_config: ModelConfig):
        from model.series_model import build_next_value_model

        self.model_config = model_config
        f = self.forecast
        return build_next_value_model(f.window, self.log_features, self.series.target_index, f.horizon,
                                      model_config, f.transform, f.quantiles, f.bidirectional)

    def datasets(self, model, config: TrainingConfig):
        from model.series_model import fit_scaling, price_scaling
        from model.training import Datasets

        series, W = self.series, self.forecast.window
        self.scaling = price_scaling(model)
        # The statistics see the training span and nothing after it.
        self.scaling.set_stats(fit_scaling(series.values[:self.split.train_end], series.target_index,
                                           self.forecast.transform, self.log_features))
        self.examples = prepare_examples(series, self.split, self.forecast, self.scaling)
        (train_origins, train_z), (val_origins, val_z) = self.examples["train"], self.examples["validation"]
        self.batch_size, self.seed = config.batch_size, config.seed
        return Datasets(
            train=make_dataset(series.values, train_z, train_origins, W, config.batch_size, True, config.seed).repeat(),
            validation=make_dataset(series.values, val_z, val_origins, W, config.batch_size, False),
            steps_per_pass=int(np.ceil(len(train_origins) / config.batch_size)),
            batch_size=config.batch_size, steps_per_example=W)

    def compile(self, model, optimizer) -> None:
        from model.series_model import compile_next_value_model

        compile_next_value_model(model, optimizer, self.forecast.loss, self.forecast.quantiles)

    def probe(self, model, validation):
        from model import through_time

        x, y = next(iter(validation))  # the monitor's through-time check reads these windows
        return x[:16], through_time.compiled_loss(model, y[:16])

    def evaluate(self, model, validation) -> dict[str, Any]:
        if len(self.forecast.quantiles) < 2:
            return {"interval_calibration": None, "calibration_scores": None}
        origins, z = self.examples["validation"]
        calibration, scores = intervals.calibrate(model, self.series, self.split, origins, z, self.forecast)
        return {"interval_calibration": calibration, "calibration_scores": scores}

    def export(self, model, output: Path, run_id: str, evaluation: dict[str, Any]) -> Path:
        from model.series_export import export_series_model

        series, split, f = self.series, self.split, self.forecast
        return export_series_model(model, output, {
            "cell": self.model_config.cell, "window": f.window, "horizon": f.horizon, "features": series.features,
            "log_features": self.log_features, "target": series.target, "transform": f.transform,
            "quantile_levels": list(f.quantiles), "interval_calibration": evaluation["interval_calibration"],
            "ticker": series.ticker, "source": series.source,
            "train_span": [str(series.dates[0])[:10], str(series.dates[split.train_end - 1])[:10]],
            "run_id": run_id}, warmup_window=series.values[split.train_end - f.window:split.train_end])

    def test(self, model, run, evaluation: dict[str, Any]) -> dict[str, Any]:
        series, split, forecast, refits = self.series, self.split, self.forecast, self.backtest
        # The test span, walked forward after the export (refits never reach the exported model).
        walked = backtest.walk_forward(model, self.scaling, series, split, forecast, refits.refit_every,
                                       refits.refit_epochs, self.batch_size, self.seed, self.optimizer_config)
        adaptive = None
        if evaluation["calibration_scores"] is not None:
            test_z = self.examples["test"][1]  # the test origins are the ones the walk went through
            adaptive = intervals.adapt(walked, self.scaling, series, forecast, test_z,
                                       evaluation["calibration_scores"], refits.interval_adapt_rate)
        name = self.model_config.cell.upper().replace("SIMPLE_RNN", "SimpleRNN")
        result = evaluate(series, split, forecast, walked.predictions, walked.origins, name, adaptive)
        metrics = result["metrics"]
        headline = f"RMSE {metrics['model']['rmse'] / metrics['naive']['rmse']:.3f}× naive"
        plots = backtest.plot_backtest(series, walked, forecast,
                                       f"{name} on {series.ticker or series.source}: {headline}",
                                       run.path, adaptive[0] if adaptive else None)
        result["interval_calibration"] = evaluation["interval_calibration"]
        result["walk_forward"] = {"refit_every": refits.refit_every, "refit_epochs": refits.refit_epochs,
                                  "refits": walked.refits, "plots": plots}
        return {"test_windows": len(walked.origins), "evaluation": result}

    def describe(self) -> dict[str, Any]:
        series, split = self.series, self.split
        return {"config": {"forecast": dataclasses.asdict(self.forecast),
                           "data": {"source": series.source, "ticker": series.ticker, "target": series.target,
                                    "features": series.features}},
                "rows": split.total, "missing_filled": series.missing_filled,
                "split": {"train_end": split.train_end, "val_end": split.val_end, "total": split.total},
                "train_windows": len(self.examples["train"][0]), "val_windows": len(self.examples["validation"][0])}


def train_series_model(series: PriceSeries, split: Split, forecast: ForecastConfig, model_config: ModelConfig,
                       optimizer_config: OptimizerConfig, training_config: TrainingConfig, output: str | Path,
                       refit_every: int = 0, refit_epochs: int = 1,
                       extra_callbacks: Iterable[Any] = (), adapt_rate: Optional[float] = None,
                       setting_names: dict[str, str] | None = None) -> dict[str, Any]:
    """Fit the scaling on the training span, train, export, then walk forward through the test span.

    Args:
        refit_every: In the walk-forward evaluation, train further every k
            test steps on everything known by then (0: never).
        refit_epochs: Epochs per refit.
        adapt_rate: With an interval, the step size of its adaptive
            recalibration through the test span (`pipelines.intervals`);
            None: the rate that guarantees the coverage within 3 points.
        setting_names: How messages name settings (`model.config.name_settings`).

    Returns:
        The summary written to `runs/<run-id>/summary.json`.
    """
    from model import training

    task = SeriesTask(series, split, forecast, BacktestConfig(refit_every, refit_epochs, adapt_rate), optimizer_config,
                      Path(output).name)
    return training.run_job(task, model_config, optimizer_config, training_config, output, extra_callbacks,
                            setting_names)


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
    data_config = cli.config_from_args(SeriesDataConfig, args)
    forecast = cli.config_from_args(ForecastConfig, args)
    refits = cli.config_from_args(BacktestConfig, args)
    model_config = cli.model_config(args)
    optimizer_config = cli.optimizer_config(args)
    training_config = cli.training_config(args)
    check_export_base(args.output)
    series = load_series(data_config)
    split = chronological_split(len(series.dates), forecast.window, forecast.horizon,
                                data_config.val_fraction, data_config.test_fraction)
    print(f"{series.source}{' ' + series.ticker if series.ticker else ''}: {split.total:,} days, "
          f"target {series.target}, features {', '.join(series.features)}; "
          f"{series.missing_filled} missing cells forward-filled")

    cli.import_tensorflow(args.verbose)
    summary = train_series_model(series, split, forecast, model_config, optimizer_config, training_config,
                                 args.output, refits.refit_every, refits.refit_epochs,
                                 adapt_rate=refits.interval_adapt_rate, setting_names=cli.SETTING_FLAGS)
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
