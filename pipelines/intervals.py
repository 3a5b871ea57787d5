"""Prediction intervals of the next-value model: scores, calibration, adaptation, coverage.

With quantiles (`--quantiles 0.1,0.5,0.9`) the network is trained by quantile
regression (the pinball loss), and its interval runs from the first predicted
quantile to the last: here a nominal 80% interval. Quantile regression alone is
often over- or under-confident, so the interval is then made honest in two steps:

1. Calibrated once, on the validation span (`calibrate`): a conformal margin
   per horizon, scaled by each window's volatility relative to the training
   span's, so that a margin fitted in one regime carries over to another. The
   model's `IntervalMargin` layer holds it, and the exported model answers with it.
2. Recalibrated day by day through the walk-forward test span (`adapt`), by
   adaptive conformal inference (ACI), from each day's past only: it reports how
   an interval that keeps learning as the truth comes in would have covered.

Both rest on one score (`nonconformity`), and both are judged by the share of
test points they cover (`coverage_report`). Everything is in z units, the
network's standardised space, until the bounds are turned into prices.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import math
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from model.config import ForecastConfig
from pipelines.series_data import PriceSeries, Split, windows_at

if TYPE_CHECKING:  # backtest imports this module: the type only, to keep the import one-way
    import keras

    from model.series_model import IntervalMargin  # TensorFlow: loaded once the CLI's input is known to be good
    from pipelines.backtest import Backtest

# The calibration goal of the stock issue: an 80% interval covering 77-83% of test days.
DEFAULT_TOLERANCE = 0.03


def nominal_level(quantiles: Sequence[float]) -> float:
    """The interval's nominal coverage, from the first quantile level to the last (0.8 for 0.1, 0.5, 0.9)."""
    return float(quantiles[-1] - quantiles[0])


# -- the model's interval layer -------------------------------------------------------------

def interval_layer(model: keras.Model) -> IntervalMargin | None:
    """The model's `IntervalMargin` layer, or None when it predicts no interval (a point, or one quantile)."""
    from model.series_model import INTERVAL_LAYER

    return next((layer for layer in model.layers if layer.name == INTERVAL_LAYER), None)


@contextlib.contextmanager
def margin_off(model: keras.Model) -> Iterator[None]:
    """Zero the conformal margin inside the block, then restore it.

    Refits run inside it, so that the pinball loss does not learn to undo the
    margin; and the raw quantiles ACI starts from are read inside it. A model
    without an interval is left as it is.
    """
    layer = interval_layer(model)
    if layer is None:
        yield
        return
    margin = layer.margin.numpy()
    layer.margin.assign(np.zeros_like(margin))
    try:
        yield
    finally:
        layer.margin.assign(margin)


# -- scores ---------------------------------------------------------------------------------

def nonconformity(lower: np.ndarray, upper: np.ndarray, actual: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """How far the truth fell outside the interval, per unit of each point's scale.

    Args:
        lower, upper: `[n, H]` bounds.
        actual: `[n, H]` what happened.
        scale: `[n]` positive scale of each point (its relative volatility).

    Returns:
        `[n, H]` scores max(lower - actual, actual - upper) / scale: negative
        inside the interval, positive outside.
    """
    scale = np.maximum(np.asarray(scale, np.float64), 1e-12)[:, None]
    return np.maximum(lower - actual, actual - upper) / scale


# -- calibration on the validation span -----------------------------------------------------

def conformal_margin(lower: np.ndarray, upper: np.ndarray, actual: np.ndarray, level: float,
                     scale: np.ndarray | None = None) -> np.ndarray:
    """Conformalized quantile regression (Romano et al., 2019): the margin per horizon.

    With scores E = max(lower - actual, actual - upper) / scale, the interval
    [lower - m·scale, upper + m·scale] with m the ceil(level * (n + 1))-th
    smallest score covers at least `level` of the calibration points (and of
    future ones, if they behave alike once scaled). A negative margin narrows
    an interval that was too wide.

    Args:
        lower, upper: `[n, H]` predicted bounds on the calibration span.
        actual: `[n, H]` what happened.
        level: Nominal coverage, e.g. 0.8 for the 0.1-0.9 interval.
        scale: Optional `[n]` positive scale of each point (e.g. its relative volatility).

    Returns:
        `[H]` margins, in the units of the inputs divided by `scale`. With
        fewer than level / (1 - level) calibration points the largest score is
        used, and the guarantee no longer holds.
    """
    scores = np.sort(nonconformity(lower, upper, actual, np.ones(len(actual)) if scale is None else scale), axis=0)
    n = scores.shape[0]
    rank = min(n, int(np.ceil(level * (n + 1))))
    return scores[rank - 1]


def calibrate(model: keras.Model, series: PriceSeries, split: Split, origins: np.ndarray, z_true: np.ndarray,
              forecast: ForecastConfig) -> tuple[dict[str, Any], np.ndarray]:
    """Conformal calibration of the model's interval on the validation span; the model keeps the margin.

    Args:
        model: A trained model with an interval layer (two quantiles or more).
        series, split, forecast: As in training.
        origins: `[n]` the validation span's forecast origins.
        z_true: `[n, H]` what happened after each, in z units.

    Returns:
        The level, the margins (z units, per horizon) and the validation
        coverage before and after; and the validation span's nonconformity
        scores `[n, H]`, from which the test span's adaptive intervals start.
    """
    layer = interval_layer(model)
    if layer is None:
        raise ValueError(f"model {model.name!r} predicts no interval: it has no interval layer")
    layer.margin.assign(np.zeros(forecast.horizon, np.float32))
    # Volatility is measured relative to the training span's (and only it: no later value).
    train_returns = np.diff(np.log(series.target_values[:split.train_end]))
    layer.reference_volatility.assign(np.float32(np.std(train_returns)))
    windows = windows_at(series.values, origins, forecast.window).astype(np.float32)
    z = model.predict(windows, verbose=0)
    volatility = np.asarray(layer.relative_volatility(windows), np.float64)
    level = nominal_level(forecast.quantiles)
    margin = conformal_margin(z[:, :, 0], z[:, :, -1], z_true, level, volatility)
    layer.margin.assign(margin.astype(np.float32))
    widen = margin[None, :] * volatility[:, None]
    report = {"level": level, "margin_z": margin.tolist(),
              "validation_coverage_before": interval_coverage(z_true, z[:, :, 0], z[:, :, -1]),
              "validation_coverage_after": interval_coverage(z_true, z[:, :, 0] - widen, z[:, :, -1] + widen)}
    return report, nonconformity(z[:, :, 0], z[:, :, -1], z_true, volatility)


# -- adaptation through the test span -------------------------------------------------------

@dataclasses.dataclass
class AdaptiveIntervals:
    """ACI's intervals over a span, in z units.

    Attributes:
        lower, upper: `[n, H]` bounds (±inf on unbounded days; lower > upper
            when alpha_t >= 1 and the set is empty).
        covered: `[n, H]` whether the truth fell inside.
        alphas: `[n, H]` the miscoverage target used for each day.
        rate: The step size gamma.
        guarantee: The bound on |miss rate - alpha| over the days whose
            truth fed back (the last H days' truths arrive after the span),
            for every horizon.
    """

    lower: np.ndarray
    upper: np.ndarray
    covered: np.ndarray
    alphas: np.ndarray
    rate: float
    guarantee: float

    def summary(self, level: float) -> dict:
        """JSON-ready figures: coverage, the guarantee, unbounded and empty days."""
        return {"method": "adaptive conformal inference (Gibbs & Candes 2021)", "level": level,
                "rate": self.rate, "observed": float(np.mean(self.covered)),
                "guaranteed_within": self.guarantee,
                "unbounded_points": int(np.sum(np.isinf(self.upper - self.lower) & (self.upper > self.lower))),
                "empty_points": int(np.sum(self.lower > self.upper)),
                "final_alpha": self.alphas[-1].tolist()}


def conformal_quantile(sorted_scores: list[float], level: float) -> float:
    """The ceil(level * (n + 1))-th smallest score: +inf beyond the data, -inf for level <= 0."""
    if level <= 0:
        return -math.inf
    rank = math.ceil(level * (len(sorted_scores) + 1))
    return math.inf if rank > len(sorted_scores) else sorted_scores[rank - 1]


def coverage_bound(level: float, rate: float, points: int, delay: int = 1) -> float:
    """ACI's bound on |miss rate - alpha| over `points` days whose truths fed back `delay` days later.

    alpha_t stays within [-delay * rate * (1 - alpha), 1 + delay * rate * alpha]:
    beyond either end every day misses (empty set) or hits (unbounded
    interval), though `delay - 1` older truths may still push it further.
    alpha_T - alpha_1 = rate * sum(alpha - err_t) then bounds the average.
    With `delay` 1 this is Gibbs & Candès' Proposition 4.1, slightly tightened.
    """
    alpha = 1 - level
    reach = max((1 - alpha) + delay * rate * alpha, alpha + delay * rate * (1 - alpha))
    return reach / (rate * max(points, 1))


def rate_for_tolerance(level: float, points: int, delay: int = 1, tolerance: float = DEFAULT_TOLERANCE) -> float:
    """The smallest rate whose ACI guarantee over `points` days is `tolerance`, at most 1.

    Solves `coverage_bound(level, rate, points, delay) = tolerance`. Over too few
    points no rate reaches the tolerance; the rate is then 1, and the
    guarantee reported beside the coverage says how loose it is.
    """
    alpha = 1 - level
    room_low, room_high = tolerance * points - delay * alpha, tolerance * points - delay * (1 - alpha)
    if min(room_low, room_high) <= 0:
        return 1.0
    return min(1.0, max((1 - alpha) / room_low, alpha / room_high))


def adaptive_intervals(calibration_scores: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                       actual: np.ndarray, volatility: np.ndarray, level: float,
                       rate: float | None = None) -> AdaptiveIntervals:
    """Walk adaptive conformal inference (ACI; Gibbs & Candès, 2021) through consecutive forecast days.

    Markets change regime, and a margin that covered 80% of the validation
    days may cover 75% or 85% of the next year's. ACI recalibrates as the
    truth comes in, using only the past:

    - The interval for day t is {y : s(y) <= q_t}, s the `nonconformity`
      score, q_t the conformal (1 - alpha_t) quantile of every score known at
      t: the validation span's and those of test days already realised.
    - Once day t's truth is known, alpha moves: alpha_{t+1} = alpha_t + rate *
      (alpha - err_t), err_t = 1 when day t fell outside. Misses widen the
      next intervals, runs of hits narrow them.

    Whatever the data do, over T days |miss rate - alpha| <= (max(alpha_1,
    1 - alpha_1) + rate) / (rate * T) (Gibbs & Candès, Proposition 4.1; with
    truths arriving L days late, `coverage_bound`). The default rate is the
    smallest that makes this bound the stated tolerance over the span: a
    guarantee, not a value tuned on the test days. The price of a large rate
    is intervals that breathe: after a few misses in a row alpha_t <= 0 and
    the interval is unbounded for a day (reported, never hidden).

    With H > 1 the h-day-ahead forecast made at day t is realised at day
    t + h, so each horizon keeps its own alpha and its scores join the pool h
    days late.

    The interval is the conformal set itself, [lower - q_t v, upper + q_t v]:
    unlike the exported model's, whose negative margin stops at the inner
    quantiles, it may narrow past the median forecast on a day the raw
    quantiles were far too wide, and is empty once alpha_t >= 1 (the guarantee
    needs both). Empty days are counted and reported.

    Args:
        calibration_scores: `[m, H]` nonconformity scores of the validation span.
        lower, upper: `[n, H]` the model's raw bounds (no calibration margin)
            on n consecutive days, in z units.
        actual: `[n, H]` what happened, in z units.
        volatility: `[n]` each window's volatility relative to the training span's.
        level: Nominal coverage, e.g. 0.8.
        rate: Step size gamma; None: `rate_for_tolerance(level, n - H, H)`.

    Returns:
        The intervals, what they covered, and the guarantee.
    """
    n, horizon = actual.shape
    scale = np.maximum(np.asarray(volatility, np.float64), 1e-12)
    scores = nonconformity(lower, upper, actual, volatility)
    # The H-day-ahead truth arrives H days late: the bound holds over the n - H days fed back.
    realised = max(n - horizon, 1)
    rate = rate_for_tolerance(level, realised, horizon) if rate is None else rate
    alpha = 1 - level
    margins = np.empty((n, horizon))
    alphas = np.empty((n, horizon))
    covered = np.empty((n, horizon), bool)
    for h in range(horizon):
        pool = sorted(calibration_scores[:, h].tolist())
        alpha_t = alpha
        for t in range(n):
            known = t - (h + 1)  # the (h+1)-day-ahead forecast of that day is realised by now
            if known >= 0:
                alpha_t += rate * (alpha - (0.0 if covered[known, h] else 1.0))
                bisect.insort(pool, scores[known, h])
            alphas[t, h] = alpha_t
            margins[t, h] = conformal_quantile(pool, 1 - alpha_t) if alpha_t < 1 else -math.inf
            covered[t, h] = scores[t, h] <= margins[t, h]
    offsets = margins * scale[:, None]
    with np.errstate(invalid="ignore"):  # ±inf margins give ±inf bounds
        widened_lower, widened_upper = lower - offsets, upper + offsets
    return AdaptiveIntervals(lower=widened_lower, upper=widened_upper, covered=covered, alphas=alphas, rate=rate,
                             guarantee=coverage_bound(level, rate, realised, horizon))


def adapt(walked: Backtest, scaling, series: PriceSeries, forecast: ForecastConfig, z_true: np.ndarray,
          calibration_scores: np.ndarray, rate: float | None) -> tuple[np.ndarray, dict[str, Any]]:
    """Recalibrate the interval through the walk-forward test span with ACI, from each day's past only.

    Args:
        walked: The walk-forward run, with its raw quantiles and volatilities.
        scaling: The model's `PriceScaling` layer (z back to prices).
        series, forecast: As in training.
        z_true: `[n, H]` what happened after each walk-forward origin, in z units.
        calibration_scores: `[m, H]` the validation span's scores, from `calibrate`.
        rate: ACI's step size; None: the rate that guarantees `DEFAULT_TOLERANCE`.

    Returns:
        The walk-forward quantiles in prices `[n, H, Q]` with ACI's bounds in
        place of the exported ones, and `AdaptiveIntervals.summary`.
    """
    target = series.target_values.astype(np.float32)
    level = nominal_level(forecast.quantiles)
    aci = adaptive_intervals(calibration_scores, walked.raw_z[:, :, 0], walked.raw_z[:, :, -1],
                             z_true, walked.volatility, level, rate)
    z = np.concatenate([aci.lower[:, :, None], walked.raw_z[:, :, 1:-1], aci.upper[:, :, None]], axis=2)
    with np.errstate(over="ignore", invalid="ignore"):  # unbounded days stay unbounded in prices
        prices = np.asarray(scaling.to_prices(z.astype(np.float32), target[walked.origins]), np.float64)
    return prices, aci.summary(level)


# -- coverage -------------------------------------------------------------------------------

def interval_coverage(actual: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """Share of actual values inside [lower, upper]."""
    return float(np.mean((actual >= lower) & (actual <= upper)))


def coverage_report(actual: np.ndarray, predictions: np.ndarray, quantiles: Sequence[float],
                    adaptive: tuple[np.ndarray, dict] | None = None) -> dict[str, Any]:
    """What the interval covered on the test span, as exported and, if given, as recalibrated by ACI.

    Args:
        actual: `[n, H]` prices that happened.
        predictions: `[n, H, Q]` the quantiles in prices, as exported.
        quantiles: The Q quantile levels.
        adaptive: Optional `adapt`'s prices and summary.

    Returns:
        `{"nominal", "observed"}`, and with `adaptive` an `"adaptive"` entry:
        the summary, its observed coverage in prices, and the median width
        beside the exported interval's (over days both are bounded and non-empty).
    """
    report = {"nominal": nominal_level(quantiles),
              "observed": interval_coverage(actual, predictions[:, :, 0], predictions[:, :, -1])}
    if adaptive is not None:
        bounds, summary = adaptive
        exported_width = predictions[:, :, -1] - predictions[:, :, 0]
        adaptive_width = bounds[:, :, -1] - bounds[:, :, 0]
        bounded = np.isfinite(adaptive_width) & (adaptive_width >= 0) & (exported_width > 0)
        report["adaptive"] = {
            **summary, "observed": interval_coverage(actual, bounds[:, :, 0], bounds[:, :, -1]),
            "median_width_vs_exported": (float(np.median(adaptive_width[bounded] / exported_width[bounded]))
                                         if bounded.any() else None)}
    return report
