"""Baselines, error measures, the Diebold-Mariano test and the verdict line."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines import forecast_eval as fe

SERIES = np.array([10.0, 11.0, 13.0, 12.0, 14.0, 15.0])


def test_baselines_by_hand():
    origins = np.array([2, 4])
    np.testing.assert_allclose(fe.naive_forecast(SERIES, origins, 2), [[13, 13], [14, 14]])
    # drift: (13 - 10) / 2 = 1.5 per day; (14 - 10) / 4 = 1 per day
    np.testing.assert_allclose(fe.drift_forecast(SERIES, origins, 2), [[14.5, 16], [15, 16]])
    # moving average of 3: (10 + 11 + 13) / 3, (13 + 12 + 14) / 3
    np.testing.assert_allclose(fe.moving_average_forecast(SERIES, origins, 1, 3), [[34 / 3], [13]])
    # fewer than k days of history: the mean of what there is
    np.testing.assert_allclose(fe.moving_average_forecast(SERIES, np.array([1]), 1, 5), [[10.5]])


def test_point_metrics_by_hand():
    actual = np.array([[11.0], [9.0]])
    last = np.array([10.0, 10.0])
    forecast = np.array([[12.0], [10.0]])  # errors +1, +1; predicts up, flat
    naive_rmse = float(np.sqrt(np.mean((10.0 - actual) ** 2)))  # 1.0
    m = fe.point_metrics(actual, forecast, last, naive_rmse, scale=2.0)
    assert m["mae"] == 1.0 and m["rmse"] == 1.0 and m["theil_u2"] == 1.0 and m["mase"] == 0.5
    assert m["mape_percent"] == pytest.approx(100 * (1 / 11 + 1 / 9) / 2)
    assert m["directional_accuracy"] == 0.5  # right on the rise, wrong (flat) on the fall
    naive = fe.point_metrics(actual, np.array([[10.0], [10.0]]), last, naive_rmse, 2.0)
    assert naive["directional_accuracy"] is None  # the random walk predicts no direction
    assert fe.up_share(actual, last) == 0.5
    assert fe.naive_scale(SERIES) == pytest.approx(np.mean([1, 2, 1, 2, 1]))


def test_diebold_mariano_detects_a_better_forecast():
    rng = np.random.default_rng(0)
    actual = rng.normal(size=(300, 1))
    good = actual + rng.normal(scale=0.1, size=actual.shape)
    bad = actual + rng.normal(scale=1.0, size=actual.shape)
    assert fe.diebold_mariano(actual, good, bad, 1)["p_value"] < 0.001
    assert fe.diebold_mariano(actual, bad, good, 1)["p_value"] > 0.999
    same = fe.diebold_mariano(actual, bad, bad + rng.normal(scale=1e-3, size=actual.shape), 1)["p_value"]
    assert 0.001 < same < 0.999


@pytest.mark.parametrize("rmse, p, expected", [
    (1.02, 0.01, "LSTM: RMSE 1.020× naive — does not beat the random walk on this span"),
    (1.00, 0.50, "does not beat the random walk"),
    (0.97, 0.40, "lower, but not significantly (Diebold-Mariano p = 0.40): no evidence"),
    (0.97, None, "no evidence"),
    (0.90, 0.01, "beats the random walk on this span (Diebold-Mariano p = 0.010)"),
])
def test_the_verdict_never_overstates(rmse, p, expected):
    line = fe.verdict("LSTM", rmse, 1.0, p)
    assert expected in line
    assert ("beats the random walk on this span (" in line) == (rmse < 1 and p is not None and p < 0.05)
