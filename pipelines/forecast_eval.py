"""Forecast evaluation: honest baselines, the usual error measures, a verdict.

Next-day prices are hard to forecast, and "tomorrow = today" (the random walk)
is rarely beaten. Every model figure is therefore reported beside the same
figure for the baselines, and the verdict says whether the model beats the
random walk, backed by a Diebold-Mariano test rather than by a raw ratio.

Conventions: a forecast made at day t (the last observed day) predicts days
t+1..t+H. Arrays are `[n, H]`: n forecast origins, H horizons.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

# -- baselines -------------------------------------------------------------------------

def naive_forecast(series: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
    """Random walk: every future day equals the last observed one."""
    return np.repeat(series[origins][:, None], horizon, axis=1)


def drift_forecast(series: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
    """Random walk with drift: the average daily change since the first day, extrapolated."""
    slope = (series[origins] - series[0]) / np.maximum(origins, 1)
    return series[origins][:, None] + slope[:, None] * np.arange(1, horizon + 1)[None, :]


def moving_average_forecast(series: np.ndarray, origins: np.ndarray, horizon: int, k: int) -> np.ndarray:
    """Every future day equals the mean of the last k observed days."""
    cumulative = np.concatenate([[0.0], np.cumsum(series)])
    start = np.maximum(origins + 1 - k, 0)
    means = (cumulative[origins + 1] - cumulative[start]) / (origins + 1 - start)
    return np.repeat(means[:, None], horizon, axis=1)


def baselines(series: np.ndarray, origins: np.ndarray, horizon: int, ma_days: int) -> dict[str, np.ndarray]:
    return {"naive": naive_forecast(series, origins, horizon),
            "drift": drift_forecast(series, origins, horizon),
            f"moving_average_{ma_days}": moving_average_forecast(series, origins, horizon, ma_days)}


# -- measures ----------------------------------------------------------------------------

def naive_scale(train_series: np.ndarray) -> float:
    """MASE's denominator: the in-sample MAE of the one-day naive forecast on the training span."""
    return float(np.mean(np.abs(np.diff(train_series))))


def point_metrics(actual: np.ndarray, forecast: np.ndarray, last: np.ndarray, naive_rmse: float,
                  scale: float) -> dict[str, Optional[float]]:
    """MAE, RMSE, MAPE (%), MASE, Theil's U2 and directional accuracy of one forecast.

    Args:
        actual, forecast: `[n, H]` prices.
        last: `[n]`, the last observed price of each origin.
        naive_rmse: RMSE of the random walk on the same points (for U2).
        scale: `naive_scale` of the training span (for MASE).

    Returns:
        The measures; directional accuracy is None for a forecast that never
        moves (the random walk predicts no direction).
    """
    error = forecast - actual
    rmse = float(np.sqrt(np.mean(error ** 2)))
    predicted_move = np.sign(forecast - last[:, None])
    actual_move = np.sign(actual - last[:, None])
    moved = actual_move != 0
    directional = (float(np.mean(predicted_move[moved] == actual_move[moved]))
                   if moved.any() and np.any(predicted_move != 0) else None)
    return {
        "mae": float(np.mean(np.abs(error))),
        "rmse": rmse,
        "mape_percent": float(100 * np.mean(np.abs(error) / actual)),
        "mase": float(np.mean(np.abs(error)) / scale),
        "theil_u2": rmse / naive_rmse if naive_rmse > 0 else None,
        "directional_accuracy": directional,
    }


def up_share(actual: np.ndarray, last: np.ndarray) -> float:
    """Share of (origin, horizon) points where the price went up: what always guessing "up" scores."""
    moved = actual != last[:, None]
    return float(np.mean(actual[moved] > np.broadcast_to(last[:, None], actual.shape)[moved]))


def diebold_mariano(actual: np.ndarray, forecast: np.ndarray, reference: np.ndarray, horizon: int) -> dict:
    """Diebold-Mariano test of equal squared error, one-sided: is `forecast` better than `reference`?

    Uses the errors of the last horizon H: consecutive H-step forecasts
    overlap, so the long-run variance has Newey-West weights over H - 1 lags.

    Returns:
        `{"statistic": DM, "p_value": P(DM <= observed) under equal accuracy}`;
        a small p-value means the forecast has significantly lower error.
    """
    d = (forecast[:, -1] - actual[:, -1]) ** 2 - (reference[:, -1] - actual[:, -1]) ** 2
    n = len(d)
    if n < 3:
        return {"statistic": None, "p_value": None}
    centred = d - d.mean()
    variance = centred @ centred / n
    for lag in range(1, horizon):
        weight = 1 - lag / horizon
        variance += 2 * weight * (centred[lag:] @ centred[:-lag]) / n
    if variance <= 0:
        return {"statistic": None, "p_value": None}
    statistic = float(d.mean() / math.sqrt(variance / n))
    return {"statistic": statistic, "p_value": 0.5 * (1 + math.erf(statistic / math.sqrt(2)))}


def verdict(name: str, model_rmse: float, naive_rmse: float, p_value: Optional[float]) -> str:
    """One line that never overstates: a lower RMSE counts only when it is significant."""
    ratio = model_rmse / naive_rmse
    head = f"{name}: RMSE {ratio:.3f}× naive"
    if ratio >= 1:
        return f"{head} — does not beat the random walk on this span"
    if p_value is None or p_value >= 0.05:
        shown = "n/a" if p_value is None else f"{p_value:.2f}"
        return (f"{head} — lower, but not significantly (Diebold-Mariano p = {shown}): "
                "no evidence that it beats the random walk on this span")
    return f"{head} — beats the random walk on this span (Diebold-Mariano p = {p_value:.3f})"
