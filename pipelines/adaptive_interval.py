"""Adaptive conformal inference (ACI; Gibbs & Candès, 2021) through the walk-forward test span.

The exported model's interval is calibrated once, on the validation span
(`model.series_model.conformal_margin`). Markets change regime, and a margin
that covered 80% of the validation days may cover 75% or 85% of the next
year's. ACI recalibrates as the truth comes in, using only the past:

- A day's nonconformity score is how far the truth fell outside the model's
  raw interval, in units of that window's volatility:
  s = max(lower - y, y - upper) / v (negative inside the interval).
- The interval for day t is {y : s(y) <= q_t}, with q_t the conformal
  (1 - alpha_t) quantile of every score known at t: the validation span's
  and those of test days already realised.
- Once day t's truth is known, alpha moves: alpha_{t+1} = alpha_t + rate *
  (alpha - err_t), err_t = 1 when day t fell outside. Misses widen the next
  intervals, runs of hits narrow them.

Whatever the data do, over T days |miss rate - alpha| <= (max(alpha_1,
1 - alpha_1) + rate) / (rate * T) (Gibbs & Candès, Proposition 4.1; with
truths arriving L days late, `coverage_bound`). The default rate is the smallest
that makes this bound the stated tolerance over the test span: a guarantee,
not a value tuned on the test days. The price of
a large rate is intervals that breathe: after a few misses in a row
alpha_t <= 0 and the interval is unbounded for a day (reported, never
hidden).

With H > 1 the h-day-ahead forecast made at day t is realised at day t + h,
so each horizon keeps its own alpha and its scores join the pool h days late.

The interval is the conformal set itself, [lower - q_t v, upper + q_t v]:
unlike the exported model's, whose negative margin stops at the inner
quantiles, it may narrow past the median forecast on a day the raw
quantiles were far too wide, and is empty once alpha_t >= 1 (the guarantee
needs both). Empty days are counted and reported.
"""

from __future__ import annotations

import bisect
import dataclasses
import math

import numpy as np

from model.series_model import nonconformity  # the score conformal calibration on validation uses

# The calibration goal of the stock issue: an 80% interval covering 77-83% of test days.
DEFAULT_TOLERANCE = 0.03


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
    """Walk ACI through consecutive forecast days.

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
