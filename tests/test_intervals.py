"""Prediction intervals: scores, conformal calibration, ACI through the test span, coverage, the model's layer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from model.config import ModelConfig
from model.series_model import build_next_value_model
from pipelines.intervals import (
    adaptive_intervals,
    conformal_margin,
    conformal_quantile,
    coverage_bound,
    interval_coverage,
    interval_layer,
    margin_off,
    nonconformity,
    rate_for_tolerance,
)


def shifted_regime(seed: int, n_calibration: int = 250, n_test: int = 250, test_spread: float = 0.5,
                   horizon: int = 1):
    """Calibration days in one regime, test days in another the volatility does not explain."""
    rng = np.random.default_rng(seed)
    calibration = rng.normal(size=(n_calibration, horizon))
    lower, upper = np.full((n_test, horizon), -1.28), np.full((n_test, horizon), 1.28)  # N(0,1)'s 10%-90%
    actual = rng.normal(size=(n_test, horizon)) * test_spread
    volatility = np.ones(n_test)
    scores = nonconformity(np.full_like(calibration, -1.28), np.full_like(calibration, 1.28), calibration,
                           np.ones(n_calibration))
    return scores, lower, upper, actual, volatility


def test_conformal_quantile_is_infinite_beyond_the_data_and_empty_below_zero():
    scores = sorted([0.3, -0.1, 0.7, 0.2])
    assert conformal_quantile(scores, 0.5) == 0.3  # ceil(0.5 * 5) = 3rd smallest
    assert conformal_quantile(scores, 0.8) == 0.7  # 4th
    assert conformal_quantile(scores, 0.81) == math.inf  # ceil(0.81 * 5) = 5 > 4 scores
    assert conformal_quantile(scores, 0.0) == -math.inf


def test_the_default_rate_makes_the_guarantee_the_tolerance():
    for delay in (1, 3):
        rate = rate_for_tolerance(0.8, 245, delay, 0.03)
        assert coverage_bound(0.8, rate, 245, delay) == pytest.approx(0.03)
        assert coverage_bound(0.8, rate * 0.9, 245, delay) > 0.03  # and no smaller rate reaches it
    # With one day's delay the bound is Gibbs & Candès' (max(alpha, 1 - alpha) + rate) / (rate T), or tighter.
    assert coverage_bound(0.8, 0.05, 245) <= (0.8 + 0.05) / (0.05 * 245)
    assert rate_for_tolerance(0.8, 30, 1, 0.03) == 1.0  # over 30 days no rate guarantees ±3 points
    scores, lower, upper, actual, volatility = shifted_regime(0, n_test=30)
    aci = adaptive_intervals(scores, lower, upper, actual, volatility, 0.8)
    assert aci.rate == 1.0 and aci.guarantee == pytest.approx(1.0 / 29)  # and the looser bound is reported


@pytest.mark.parametrize("test_spread", [0.4, 2.5])  # the regime calms down / turns turbulent
def test_coverage_returns_to_nominal_where_the_static_margin_fails(test_spread):
    scores, lower, upper, actual, volatility = shifted_regime(0, test_spread=test_spread)
    static_margin = conformal_quantile(sorted(scores[:, 0]), 0.8)
    static = np.mean((lower - static_margin <= actual) & (actual <= upper + static_margin))
    assert abs(static - 0.8) > 0.1  # calibrated once, the interval is far off in the new regime
    aci = adaptive_intervals(scores, lower, upper, actual, volatility, 0.8)
    coverage = float(np.mean(aci.covered))
    assert abs(coverage - 0.8) <= aci.guarantee + 1 / len(actual)
    assert abs(coverage - 0.8) <= 0.03 + 1 / len(actual)
    # the bounds are the ones whose coverage is reported
    np.testing.assert_array_equal(aci.covered, (aci.lower <= actual) & (actual <= aci.upper))


@pytest.mark.parametrize("horizon", [1, 3])
def test_the_guarantee_holds_whatever_the_sequence(horizon):
    """Proposition 4.1 of Gibbs & Candès, for any sequence, adversarial ones included; with H-day-late truths."""
    rng = np.random.default_rng(3)
    n = 300
    for trial, rate in enumerate([1.0, 0.5, *rng.uniform(0.02, 0.3, 18)]):
        actual = np.where(rng.random((n, horizon)) < 0.5, rng.normal(size=(n, horizon)) * 5, 0.0)  # bursts, calm
        actual[rng.integers(0, n, 10)] = 1e6  # and shocks
        if trial % 2:  # and long runs of misses, then of hits
            actual[50:90] = 1e6
            actual[150:200] = 0.0
        scores = nonconformity(np.zeros((50, horizon)), np.zeros((50, horizon)), rng.normal(size=(50, horizon)),
                               np.ones(50))
        zeros = np.zeros((n, horizon))
        aci = adaptive_intervals(scores, zeros, zeros, actual, np.ones(n), 0.8, rate)
        fed_back = aci.covered[:n - horizon]
        assert np.all(np.abs(fed_back.mean(axis=0) - 0.8) <= aci.guarantee + 1e-12), (trial, rate)


def test_each_interval_uses_only_the_past():
    scores, lower, upper, actual, volatility = shifted_regime(5, n_test=120, horizon=2)
    first = adaptive_intervals(scores, lower, upper, actual, volatility, 0.8, rate=0.1)
    changed = actual.copy()
    changed[60:] = 50.0  # a different future
    second = adaptive_intervals(scores, lower, upper, changed, volatility, 0.8, rate=0.1)
    # Day 60's 1-day-ahead truth is first used for day 61, its 2-day-ahead truth for day 62.
    np.testing.assert_array_equal(first.lower[:61, 0], second.lower[:61, 0])
    np.testing.assert_array_equal(first.lower[:62, 1], second.lower[:62, 1])
    assert first.lower[61, 0] != second.lower[61, 0] and first.lower[62, 1] != second.lower[62, 1]


def test_misses_widen_and_hits_narrow_in_units_of_volatility():
    scores = nonconformity(np.zeros((99, 1)), np.zeros((99, 1)), np.linspace(-1, 1, 99)[:, None], np.ones(99))
    n = 40
    volatility = np.full(n, 2.0)
    zeros = np.zeros((n, 1))
    # A shock that lasts: misses widen the interval until it covers the new regime.
    shocked = adaptive_intervals(scores, zeros, zeros, np.full((n, 1), 100.0), volatility, 0.8, rate=0.05)
    widths = (shocked.upper - shocked.lower)[:, 0]
    assert widths[1] > widths[0] and not shocked.covered[0, 0] and shocked.covered[-10:, 0].mean() >= 0.8
    # Each day worse than every day before: alpha_t drops below 0 and the interval is unbounded.
    worsening = adaptive_intervals(scores, zeros, zeros, 10.0 ** np.arange(n)[:, None], volatility, 0.8, rate=0.2)
    assert worsening.summary(0.8)["unbounded_points"] > 0 and np.isinf(worsening.upper[-1, 0])
    # Calm days: hits narrow the interval.
    calm = adaptive_intervals(scores, zeros, zeros, zeros, volatility, 0.8, rate=0.05)
    assert (calm.upper - calm.lower)[-1, 0] < (calm.upper - calm.lower)[0, 0]
    # Day 0 is the validation span's conformal margin, scaled by the window's volatility.
    assert calm.upper[0, 0] == pytest.approx(conformal_quantile(sorted(scores[:, 0]), 0.8) * 2.0)


def test_conformal_margin_reaches_the_nominal_coverage_both_ways():
    rng = np.random.default_rng(0)
    actual = rng.normal(size=(500, 2))
    for half_width in (0.2, 3.0):  # far too narrow, far too wide
        lower, upper = actual * 0 - half_width, actual * 0 + half_width
        margin = conformal_margin(lower, upper, actual, 0.8)
        covered = np.mean((lower - margin <= actual) & (actual <= upper + margin), axis=0)
        assert np.all(covered >= 0.8) and np.all(covered <= 0.8 + 2 / 500)
        assert (margin > 0).all() if half_width < 1 else (margin < 0).all()


def test_volatility_scaled_margin_keeps_coverage_when_the_regime_calms_down():
    """Calibrated in a turbulent span, used in a calm one: scaling by volatility keeps the nominal share."""
    rng = np.random.default_rng(1)
    calm, turbulent = 0.5, 2.0
    calibration = rng.normal(size=(2000, 1)) * turbulent
    test = rng.normal(size=(2000, 1)) * calm
    zeros = np.zeros((2000, 1))
    plain = conformal_margin(zeros, zeros, calibration, 0.8)
    scaled = conformal_margin(zeros, zeros, calibration, 0.8, np.full(2000, turbulent))
    plain_coverage = np.mean(np.abs(test) <= plain)
    scaled_coverage = np.mean(np.abs(test) <= scaled * calm)
    assert plain_coverage > 0.99  # far too wide once the market calms down
    assert abs(scaled_coverage - 0.8) < 0.03


def test_interval_coverage():
    actual = np.array([[1.0], [2.0], [3.0], [4.0]])
    assert interval_coverage(actual, actual - 1, actual + 1) == 1.0
    assert interval_coverage(actual, actual * 0 + 1.5, actual * 0 + 3.5) == 0.5


def test_interval_layer_is_found_by_name_and_margin_off_restores_the_margin():
    config = ModelConfig(cell="gru", units=4)
    assert interval_layer(build_next_value_model(10, [True], 0, 2, config)) is None  # a point forecast
    assert interval_layer(build_next_value_model(10, [True], 0, 2, config, quantiles=(0.5,))) is None
    model = build_next_value_model(10, [True], 0, 2, config, quantiles=(0.1, 0.5, 0.9))
    layer = interval_layer(model)
    assert layer is model.get_layer("interval_margin")
    layer.margin.assign(np.array([0.5, -0.25], np.float32))
    with margin_off(model):
        np.testing.assert_array_equal(layer.margin.numpy(), [0.0, 0.0])
    np.testing.assert_array_equal(layer.margin.numpy(), [0.5, -0.25])
