"""The stock pipeline: no look-ahead, training, evaluation beside baselines, export, CLI errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from model.config import ForecastConfig, ModelConfig, OptimizerConfig, TrainingConfig
from model.series_model import build_next_value_model, fit_scaling, price_scaling
from pipelines import cli
from pipelines.intervals import rate_for_tolerance
from pipelines.series import format_report, main, prepare_examples, train_series_model
from pipelines.series_data import chronological_split, default_prices, load_prices, windows_at

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def msft():
    series = load_prices(default_prices(), "default", ticker="MSFT")
    series.values, series.dates = series.values[-900:], series.dates[-900:]  # keep the suite quick
    return series


def train(series, tmp_path, forecast=ForecastConfig(window=20), cell="lstm", epochs=2, refit_every=0):
    split = chronological_split(len(series.dates), forecast.window, forecast.horizon)
    return train_series_model(
        series, split, forecast, ModelConfig(cell=cell, units=8), OptimizerConfig(learning_rate=3e-3),
        TrainingConfig(epochs=epochs, batch_size=32, patience=0, runs_dir=str(tmp_path / "runs")),
        tmp_path / "saved_models" / "stock", refit_every=refit_every)


@pytest.fixture(scope="module")
def trained(msft, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("series")
    return train(msft, workdir)


def test_no_validation_or_test_value_reaches_training_or_the_scaling(msft):
    forecast = ForecastConfig(window=20, horizon=3)
    split = chronological_split(len(msft.dates), forecast.window, forecast.horizon)
    log_features = [True]

    def training_view(series):
        model = build_next_value_model(20, log_features, 0, 3, ModelConfig(units=4), "log_returns")
        scaling = price_scaling(model)
        stats = fit_scaling(series.values[:split.train_end], 0, "log_returns", log_features)
        scaling.set_stats(stats)
        origins, z = prepare_examples(series, split, forecast, scaling)["train"]
        return stats, origins, z, windows_at(series.values, origins, 20)

    stats, origins, z, windows = training_view(msft)
    assert origins.max() + forecast.horizon < split.train_end  # targets stay in the training span
    tampered = load_prices(default_prices(), "default", ticker="MSFT")
    tampered.values, tampered.dates = msft.values.copy(), msft.dates
    tampered.values[split.train_end:] *= 7.0  # change every validation and test value
    stats2, origins2, z2, windows2 = training_view(tampered)
    np.testing.assert_array_equal(stats.feature_mean, stats2.feature_mean)
    assert (stats.target_mean, stats.target_std) == (stats2.target_mean, stats2.target_std)
    np.testing.assert_array_equal(origins, origins2)
    np.testing.assert_array_equal(z, z2)
    np.testing.assert_array_equal(windows, windows2)


def test_summary_reports_every_baseline_and_an_honest_verdict(trained):
    evaluation = trained["evaluation"]
    assert set(evaluation["metrics"]) == {"model", "naive", "drift", "moving_average_5"}
    assert evaluation["metrics"]["naive"]["theil_u2"] == pytest.approx(1.0)
    assert evaluation["metrics"]["naive"]["directional_accuracy"] is None
    for measures in evaluation["metrics"].values():
        assert {"mae", "rmse", "mape_percent", "mase", "theil_u2", "directional_accuracy"} <= set(measures)
    ratio = evaluation["metrics"]["model"]["rmse"] / evaluation["metrics"]["naive"]["rmse"]
    assert evaluation["verdict"].startswith(f"LSTM: RMSE {ratio:.3f}× naive")
    assert ("beats the random walk on this span (" in evaluation["verdict"]) == (
        ratio < 1 and evaluation["diebold_mariano_vs_naive"]["p_value"] < 0.05)
    assert 0 < evaluation["up_share"] < 1
    assert json.loads((Path(trained["run_dir"]) / "summary.json").read_text())["evaluation"] == evaluation


def test_export_answers_in_price_units_in_another_process(trained, msft, tmp_path):
    version = Path(trained["export_path"])
    metadata = json.loads((version / "assets" / "metadata.json").read_text())
    assert (metadata["window"], metadata["horizon"], metadata["features"], metadata["target"]) == (
        20, 1, ["Adj Close"], "Adj Close")
    windows = msft.values[-40:-20][None].astype(np.float32)
    script = textwrap.dedent("""
        import json, sys
        import numpy as np, tensorflow as tf
        model = tf.saved_model.load(sys.argv[1])
        window = np.array(json.loads(sys.argv[2]), np.float32)
        out = model.signatures["serving_default"](window=tf.constant(window))
        meta = model.signatures["metadata"](rows=tf.constant([0]))
        print(json.dumps({"next_value": out["next_value"].numpy().tolist(),
                          "window": int(meta["window"][0]), "transform": meta["transform"].numpy()[0].decode()}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", script, str(version), json.dumps(windows.tolist())],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["window"] == 20 and answer["transform"] == "log_returns"
    next_value = answer["next_value"][0][0]
    last = float(windows[0, -1, 0])
    assert 0.8 * last < next_value < 1.2 * last  # a price, near the last one: not a scaled number
    loaded = tf.saved_model.load(str(version))
    here = loaded.signatures["serving_default"](window=tf.constant(windows))["next_value"].numpy()[0, 0]
    assert here == pytest.approx(next_value, rel=1e-6)


@pytest.mark.parametrize("window, message", [
    (lambda w: np.where(np.arange(20)[None, :, None] == 5, np.nan, w), "window holds NaN or Inf"),
    (lambda w: -w, "window holds a price <= 0"),
])
def test_served_windows_with_bad_values_are_refused(trained, msft, window, message):
    loaded = tf.saved_model.load(trained["export_path"])
    bad = window(msft.values[-20:][None].astype(np.float32)).astype(np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        loaded.signatures["serving_default"](window=tf.constant(bad))


@pytest.mark.parametrize("shape", [(1, 19, 1), (1, 20, 2), (20, 1)])
def test_served_window_of_the_wrong_length_or_feature_count_is_refused(trained, shape):
    loaded = tf.saved_model.load(trained["export_path"])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"window must have shape \[batch, 20, 1\]"):
        loaded.signatures["serving_default"](window=tf.constant(np.full(shape, 30.0, np.float32)))


@pytest.mark.parametrize("loss, expected", [("mse", "MeanSquaredError"), ("huber", "Huber")])
def test_loss_is_selectable(loss, expected):
    import keras

    from model.series_model import PinballLoss, compile_next_value_model

    model = build_next_value_model(5, [True], 0, 1, ModelConfig(units=2))
    compile_next_value_model(model, keras.optimizers.Adam(), loss)
    assert type(model.loss).__name__ == expected
    quantile_model = build_next_value_model(5, [True], 0, 2, ModelConfig(units=2), quantiles=(0.1, 0.9))
    compile_next_value_model(quantile_model, keras.optimizers.Adam(), loss, quantiles=(0.1, 0.9))
    assert isinstance(quantile_model.loss, PinballLoss)


def test_pinball_loss_is_minimised_by_the_quantile():
    from model.series_model import PinballLoss

    values = np.random.default_rng(0).normal(size=(2000, 1)).astype(np.float32)
    loss = PinballLoss([0.9])
    candidates = np.linspace(-2, 3, 101)
    losses = [float(loss(values, np.full((2000, 1, 1), c, np.float32))) for c in candidates]
    assert candidates[int(np.argmin(losses))] == pytest.approx(np.quantile(values, 0.9), abs=0.06)


def test_quantiles_multi_step_scaled_bidirectional_with_refits(msft, tmp_path):
    forecast = ForecastConfig(window=20, horizon=3, transform="scaled", quantiles=(0.1, 0.5, 0.9),
                              bidirectional=True)
    summary = train(msft, tmp_path, forecast, cell="gru", epochs=2, refit_every=40)
    walk = summary["evaluation"]["walk_forward"]
    assert walk["refits"] == -(-summary["test_windows"] // 40) - 1  # before every chunk but the first
    for path in walk["plots"].values():
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    coverage = summary["evaluation"]["interval_coverage"]
    assert coverage["nominal"] == pytest.approx(0.8) and 0 <= coverage["observed"] <= 1
    # Recalibrated day by day through the test span, with the rate that guarantees ±3 points.
    adaptive = coverage["adaptive"]
    assert adaptive["rate"] == pytest.approx(rate_for_tolerance(0.8, summary["test_windows"] - 3, 3))
    assert adaptive["guaranteed_within"] == pytest.approx(0.03)
    assert 0 <= adaptive["observed"] <= 1 and adaptive["median_width_vs_exported"] > 0
    assert "recalibrated day by day (adaptive conformal" in format_report(summary)
    calibration = summary["evaluation"]["interval_calibration"]
    n = summary["val_windows"]
    assert 0.8 <= calibration["validation_coverage_after"] <= 0.8 + 2.0 / n + 1e-9
    loaded = tf.saved_model.load(summary["export_path"])
    out = loaded.signatures["serving_default"](window=tf.constant(msft.values[-20:][None].astype(np.float32)))
    assert out["next_value"].shape == (1, 3) and out["quantiles"].shape == (1, 3, 3)
    np.testing.assert_allclose(out["next_value"].numpy(), out["quantiles"].numpy()[:, :, 1])
    # The gradient monitor watched the bidirectional layers too, and its through-time probe ran.
    health = summary["gradient_health"]
    assert "bidirectional_0/forward_gru_0/recurrent_kernel" in health["per_variable"]
    assert len(health["through_time"]) == 2 and health["verdict"] in ("healthy", "exploding", "vanishing")


def test_the_gradient_monitor_watches_series_training(trained):
    health = trained["gradient_health"]
    assert health["steps_kept"] == trained["steps"] and health["diverged"] is None
    assert {"lstm_0/input_kernel", "lstm_0/recurrent_kernel", "lstm_0/bias", "z/kernel"} <= set(health["per_variable"])
    # clipnorm 1.0 caps each variable's gradient, so the global norm is at most sqrt(#variables)
    assert health["grad_norm_post_clip"]["max"] <= len(health["per_variable"]) ** 0.5 + 1e-5
    assert all(0 <= epoch["first_to_last"] for epoch in health["through_time"])


def test_the_export_holds_no_cudnn_op(trained):
    from tensorflow.core.protobuf import saved_model_pb2

    graph = saved_model_pb2.SavedModel.FromString(
        (Path(trained["export_path"]) / "saved_model.pb").read_bytes()).meta_graphs[0].graph_def
    ops = {node.op for node in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
    assert not [op for op in ops if "Cudnn" in op]


@pytest.mark.parametrize("argv, message", [
    (["--csv", "missing.csv"], "does not exist"),
    (["--ticker", "ZZZZ"], "unknown --ticker 'ZZZZ'; bokeh_sampledata.stocks has: AAPL, FB, GOOG, IBM, MSFT"),
    (["--target", "Price"], "unknown --target column 'Price'"),
    (["--window", "0"], "--window must be >= 2"),
    (["--horizon", "0"], "--horizon >= 1"),
    (["--ticker", "FB", "--window", "100"], "too few rows: 196"),
    (["--transform", "diff"], "unknown --transform 'diff'"),
    (["--quantiles", "0.9,0.1"], "--quantiles must be increasing"),
    (["--quantiles", "a,b"], "--quantiles must be comma-separated numbers"),
    (["--cell", "tcn"], "unknown --cell 'tcn'"),
    (["--quantiles", "0.1,0.9", "--interval-adapt-rate", "0"], "--interval-adapt-rate must be in (0, 1], got 0.0"),
])
def test_bad_cli_input_is_one_line_exit_2_nothing_written(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert cli.run_main(main, argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_write_default_csv_then_train_on_it_from_the_command_line(tmp_path):
    csv = tmp_path / "prices.csv"
    assert cli.run_main(main, ["--write-default-csv", str(csv)]) == 0
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.series", "--csv", str(csv), "--ticker", "IBM", "--window", "10",
         "--units", "4", "--epochs", "1", "--steps-per-epoch", "5", "--output", str(tmp_path / "sm" / "ibm"),
         "--runs-dir", str(tmp_path / "runs")],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "naive" in result.stdout and "× naive" in result.stdout
    assert (tmp_path / "sm" / "ibm" / "1" / "saved_model.pb").is_file()


def test_a_negative_margin_never_crosses_the_quantiles():
    from model.series_model import IntervalMargin

    layer = IntervalMargin(horizon=1, n_quantiles=3)
    layer.margin.assign(np.array([-5.0], np.float32))  # far narrower than the predicted spread
    z = np.array([[[-1.0, 0.2, 1.0]]], np.float32)
    window = np.array([[[10.0], [10.5], [10.2], [10.8]]], np.float32)
    out = np.asarray(layer([z, window]))
    assert out[0, 0, 0] <= out[0, 0, 1] <= out[0, 0, 2]
    assert out[0, 0, 1] == pytest.approx(0.2)
