"""Walk-forward backtest over the test span, with an expanding window, and its plots.

The model steps through the test span in time order. Each forecast uses only
the past; every `refit_every` steps the model is first trained further, for
`refit_epochs` epochs, on every example whose targets are known by then (an
expanding window). `refit_every=0` never refits: the model trained on the
training span forecasts the whole test span.

Plots (PNG): actual vs model vs naive, with the prediction interval when
quantiles are trained; and the residuals of the model and of the naive
forecast.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from model.config import ForecastConfig, OptimizerConfig
from pipelines import intervals
from pipelines.series_data import PriceSeries, Split, future_at, make_dataset, origins_in, windows_at


@dataclasses.dataclass
class Backtest:
    """Forecasts of a walk-forward run.

    Attributes:
        origins: `[n]` forecast origins (the test span, in time order).
        predictions: `[n, H]` prices, or `[n, H, Q]` with quantiles.
        refits: How many times the model was trained further.
        raw_z: With an interval: `[n, H, Q]` the quantiles in z units before
            the calibration margin (what adaptive recalibration starts from).
        volatility: With an interval: `[n]` each window's volatility relative
            to the training span's.
    """

    origins: np.ndarray
    predictions: np.ndarray
    refits: int
    raw_z: np.ndarray | None = None
    volatility: np.ndarray | None = None


def predict_prices(model, scaling, series: PriceSeries, origins: np.ndarray, window: int) -> np.ndarray:
    """The model's forecasts, in prices, at the given origins."""
    z = model.predict(windows_at(series.values, origins, window).astype(np.float32), verbose=0)
    last = series.target_values[origins].astype(np.float32)
    return np.asarray(scaling.to_prices(z, last), np.float64)


def walk_forward(model, scaling, series: PriceSeries, split: Split, forecast: ForecastConfig,
                 refit_every: int = 0, refit_epochs: int = 1, batch_size: int = 32, seed: int = 0,
                 optimizer_config: OptimizerConfig | None = None) -> Backtest:
    """Forecast the test span step by step, refitting on an expanding window.

    Args:
        model: The trained, compiled model (refits continue its training).
        scaling: Its `PriceScaling` layer (statistics stay those of the training span).
        series, split, forecast: As in training.
        refit_every: Refit before every k-th forecast (0: never).
        refit_epochs: Epochs per refit.
        batch_size, seed: For the refits.
        optimizer_config: Learning rate and clipping of the refits. They get a
            fresh optimizer at a constant rate: the training run's schedule may
            have decayed to 0, and refits must still learn.

    Returns:
        A `Backtest`.
    """
    W, H = forecast.window, forecast.horizon
    origins = origins_in(split.val_end, split.total, W, H)
    if refit_every > 0:
        from model import builders  # TensorFlow: imported once the CLI's input is known to be good

        refit_config = dataclasses.replace(optimizer_config or OptimizerConfig(), lr_schedule="constant")
        model.compile(optimizer=builders.make_optimizer(refit_config), loss=model.loss)
        model.monitor_gradients = False  # refits run Keras's own step: no monitor reads the measurements
    step = refit_every if refit_every > 0 else len(origins)
    target = series.target_values.astype(np.float32)
    interval = intervals.interval_layer(model)
    chunks, raw_chunks, refits = [], [], 0
    for start in range(0, len(origins), step):
        chunk = origins[start:start + step]
        if refit_every > 0 and start > 0:
            # Everything whose H targets are known at the first origin of this chunk.
            known = origins_in(0, int(chunk[0]) + 1, W, H)
            z = np.asarray(scaling.to_z(future_at(target, known, H), target[known]))
            with intervals.margin_off(model):  # refit the raw quantiles; keep the calibration
                model.fit(make_dataset(series.values, z, known, W, batch_size, True, seed + start),
                          epochs=refit_epochs, shuffle=False, verbose=0)  # the dataset shuffles itself
            refits += 1
        chunks.append(predict_prices(model, scaling, series, chunk, W))
        if interval is not None:
            with intervals.margin_off(model):
                raw_chunks.append(model.predict(windows_at(series.values, chunk, W).astype(np.float32), verbose=0))
    backtest = Backtest(origins=origins, predictions=np.concatenate(chunks), refits=refits)
    if interval is not None:
        backtest.raw_z = np.concatenate(raw_chunks).astype(np.float64)
        windows = windows_at(series.values, origins, W).astype(np.float32)
        backtest.volatility = np.asarray(interval.relative_volatility(windows), np.float64)
    return backtest


def plot_backtest(series: PriceSeries, backtest: Backtest, forecast: ForecastConfig, title: str,
                  directory: Path, adaptive: np.ndarray | None = None) -> dict[str, str]:
    """Write `backtest_forecasts.png` and `backtest_residuals.png` (one-day-ahead forecasts).

    Args:
        adaptive: Optional `[n, H, Q]` prices whose outermost quantiles are the
            adaptively recalibrated interval, drawn as lines over the band.

    Returns:
        `{"forecasts": path, "residuals": path}`.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    origins, predictions = backtest.origins, backtest.predictions
    dates = series.dates[origins + 1]
    actual = series.target_values[origins + 1]
    naive = series.target_values[origins]
    if predictions.ndim == 3:
        levels = np.asarray(forecast.quantiles)
        point = predictions[:, 0, int(np.argmin(np.abs(levels - 0.5)))]
        interval = (predictions[:, 0, 0], predictions[:, 0, -1],
                    f"{intervals.nominal_level(forecast.quantiles):.0%} interval")
    else:
        point, interval = predictions[:, 0], None

    paths = {"forecasts": directory / "backtest_forecasts.png", "residuals": directory / "backtest_residuals.png"}
    fig, ax = plt.subplots(figsize=(11, 4.5))
    ax.plot(dates, actual, color="black", linewidth=1.2, label=f"actual {series.target}")
    ax.plot(dates, point, color="tab:blue", linewidth=1, label="model, 1 day ahead")
    ax.plot(dates, naive, color="tab:orange", linewidth=1, linestyle="--", label="naive (yesterday)")
    if interval:
        ax.fill_between(dates, interval[0], interval[1], color="tab:blue", alpha=0.2, label=interval[2])
    if adaptive is not None:
        # Unbounded or empty days are left out of the lines rather than drawn at infinity.
        drawn = np.isfinite(adaptive[:, 0, 0]) & np.isfinite(adaptive[:, 0, -1]) & (
            adaptive[:, 0, 0] <= adaptive[:, 0, -1])
        for column, label in ((0, "recalibrated day by day (ACI)"), (-1, None)):
            ax.plot(dates, np.where(drawn, adaptive[:, 0, column], np.nan), color="tab:green", linewidth=0.7,
                    label=label)
    ax.set_title(title)
    ax.set_ylabel(series.target)
    ax.legend(loc="best")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(paths["forecasts"], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(11, 3.5))
    ax.axhline(0, color="black", linewidth=0.8)
    ax.plot(dates, point - actual, color="tab:blue", linewidth=0.9, label="model − actual")
    ax.plot(dates, naive - actual, color="tab:orange", linewidth=0.9, alpha=0.7, label="naive − actual")
    ax.set_title("Residuals, 1 day ahead")
    ax.legend(loc="best")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(paths["residuals"], dpi=110)
    plt.close(fig)
    return {key: str(path) for key, path in paths.items()}
