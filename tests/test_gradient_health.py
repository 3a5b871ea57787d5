"""Gradient health: the monitor's measurements, the detectors, through-time gradients, the reference RNN."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from model import builders
from model.config import ModelConfig, MonitorConfig, TrainingDiverged
from model.gradient_callbacks import gradient_callbacks
from model.gradient_monitor import MonitoredModel, clip_like_optimizer, clipped_global_norm, dense_norm
from model.reference_rnn import VanillaRNN
from model.through_time import fit_decay, gradient_through_time, next_token_loss, next_value_loss
from pipelines import gradients
from pipelines.adding_problem import CONSTANT_GUESS_MSE, adding_batch, build_adding_model, train_adding

from conftest import ROOT, train_tiny


def tiny_text_model(cell: str = "lstm", vocab: int = 12, layers: int = 1) -> MonitoredModel:
    keras.utils.set_random_seed(3)
    return builders.build_next_token_model(vocab, ModelConfig(cell=cell, units=8, layers=layers, embedding_dim=4))


def token_batch(vocab: int = 12, batch: int = 6, steps: int = 7, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, vocab, size=(batch, steps + 1)).astype(np.int32)
    return ids[:, :-1], ids[:, 1:]


# -- the monitor's measurements --------------------------------------------------------
@pytest.mark.parametrize("clip", ["clipnorm", "global_clipnorm", "clipvalue", "none"])
def test_clipping_is_measured_exactly_as_the_optimizer_clips(clip):
    model = tiny_text_model("gru")
    x, y = token_batch()
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x)) * 50.0  # large gradients, so that clipping bites
    grads = tape.gradient(loss, model.trainable_variables)  # the embedding's is IndexedSlices, as in fit
    assert isinstance(grads[0], tf.IndexedSlices)
    clipping = {} if clip == "none" else {clip: 0.05}
    optimizer = keras.optimizers.SGD(learning_rate=1.0, **clipping)
    expected = [tf.convert_to_tensor(g) for g in clip_like_optimizer(optimizer, grads)]
    before = [v.numpy().copy() for v in model.trainable_variables]
    optimizer.apply(grads, model.trainable_variables)  # plain SGD at rate 1: the update is minus the clipped gradient
    updates = [old - variable.numpy() for old, variable in zip(before, model.trainable_variables)]
    for update, clipped in zip(updates, expected):
        np.testing.assert_allclose(update, clipped.numpy(), rtol=1e-4, atol=1e-7)
    # What the training step records: the norm of the update, computed without materialising it.
    norms = tf.stack([dense_norm(g) for g in grads])
    assert float(clipped_global_norm(optimizer, grads, norms)) == pytest.approx(
        math.sqrt(sum(np.sum(u ** 2) for u in updates)), rel=1e-4)
    if clip != "none":
        assert tf.linalg.global_norm(expected) < tf.linalg.global_norm([tf.convert_to_tensor(g) for g in grads])


def test_monitor_norms_agree_with_an_independent_gradient_tape():
    model = tiny_text_model("lstm", layers=2)
    builders.compile_next_token_model(model, keras.optimizers.Adam(1e-3, clipnorm=0.01))
    x, y = token_batch(batch=8)
    with tf.GradientTape() as tape:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, model(x, training=True))
    grads = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, model.trainable_variables)]
    recorder, health = gradient_callbacks(MonitorConfig(), verbose=False)
    model.fit(x, y, batch_size=8, epochs=1, callbacks=[recorder, health], verbose=0)

    row = recorder.rows[0]
    labels = model.gradient_labels()
    assert "lstm_0/recurrent_kernel" in labels and "lstm_1/input_kernel" in labels and "logits/bias" in labels
    for label, grad, variable in zip(labels, grads, model.trainable_variables):
        assert row[f"grad/{label}"] == pytest.approx(np.linalg.norm(grad), rel=1e-4)
        assert row[f"weight/{label}"] == pytest.approx(np.linalg.norm(variable.numpy()), rel=1e-5)
    global_norm = math.sqrt(sum(np.sum(g ** 2) for g in grads))
    assert row["grad_norm"] == pytest.approx(global_norm, rel=1e-4)
    per_variable_clipped = [g * min(1.0, 0.01 / np.linalg.norm(g)) for g in grads]
    assert row["grad_norm_clipped"] == pytest.approx(
        math.sqrt(sum(np.sum(g ** 2) for g in per_variable_clipped)), rel=1e-4)
    assert row["loss"] == pytest.approx(float(loss), rel=1e-5)


def test_a_non_finite_step_is_not_applied_and_stops_training_with_a_diagnosis():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5, 2))
    model = MonitoredModel(inputs, keras.layers.Dense(1, name="head")(keras.layers.GRU(4, name="gru_0")(inputs)))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    x = np.random.default_rng(0).normal(size=(40, 5, 2)).astype(np.float32)
    x[16:24] = np.nan  # the third batch of 8
    y = np.ones((40, 1), np.float32)
    seen = []

    class Weights(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append([v.numpy().copy() for v in self.model.trainable_variables])

    recorder, monitor = gradient_callbacks(MonitorConfig(), verbose=False)
    model.fit(x, y, batch_size=8, epochs=3, shuffle=False, callbacks=[recorder, monitor, Weights()], verbose=0)
    assert len(seen) == 3  # stopped right after the bad step
    assert "training diverged at step 3" in monitor.diagnosis
    assert "the loss is nan: the weights are finite, so the batch holds non-finite inputs" in monitor.diagnosis
    assert "the step was not applied" in monitor.diagnosis and "Remedy" in monitor.diagnosis
    for before, after in zip(seen[1], seen[2]):  # the bad step changed nothing
        np.testing.assert_array_equal(before, after)
    assert all(np.isfinite(v.numpy()).all() for v in model.trainable_variables)


def test_the_monitor_keeps_every_nth_step_but_counts_all_of_them():
    model = tiny_text_model("simple_rnn")
    builders.compile_next_token_model(model, keras.optimizers.Adam(1e-3, clipnorm=1e-4))
    x, y = token_batch(batch=40)
    recorder, health = gradient_callbacks(MonitorConfig(every=3), verbose=False)
    history = model.fit(x, y, batch_size=4, epochs=1, callbacks=[recorder, health], verbose=0)
    assert [row["step"] for row in recorder.rows] == [1, 3, 6, 9]  # the first step, then every third
    assert history.history["clipped_share"] == [1.0]  # all 10 steps clipped at so small a norm


# -- the detectors ----------------------------------------------------------------------
def test_detectors_stay_silent_on_a_healthy_small_lstm(exported_lstm):
    summary, _ = exported_lstm
    health = summary["gradient_health"]
    assert health["verdict"] == "healthy", health["findings"]
    assert health["steps_kept"] == summary["steps"]
    assert 0.0 <= health["clipped_share"] <= 1.0
    assert set(health["per_variable"]) >= {"lstm_0/input_kernel", "lstm_0/recurrent_kernel", "lstm_0/bias",
                                           "embedding/embeddings", "logits/kernel"}


def test_exploding_gradients_are_detected_without_clipping():
    result, monitor, _ = train_adding("simple_rnn", steps=40, clip="none", train_steps=60, learning_rate=1e-2,
                                      recurrent_scale=3.0, eval_every=20)
    assert [f.kind for f in monitor.findings] == ["exploding"], monitor.findings
    assert monitor.findings[0].evidence["share_steps_above"] > 0.5 and not result.diverged


def test_vanishing_gradients_are_detected_on_a_small_tanh_rnn_over_long_sequences():
    result, monitor, _ = train_adding("simple_rnn", steps=150, clip="clipnorm", train_steps=200,
                                      learning_rate=1e-2, recurrent_scale=0.3, input_scale=0.01, eval_every=50)
    vanishing = [f for f in monitor.findings if f.kind == "vanishing"]
    assert vanishing, monitor.findings
    assert not vanishing[0].evidence["first_step_to_last_step"] >= MonitorConfig().vanishing_time_ratio
    assert result.final_test_mse > 0.1


def test_training_that_diverges_raises_and_records_the_diagnosis(tmp_path, corpus_file):
    with pytest.raises(TrainingDiverged, match="training diverged at step"):
        train_tiny(corpus_file, tmp_path, "simple_rnn", learning_rate=1e38, run_id="diverging",
                   training={"monitor": MonitorConfig()})
    text = (tmp_path / "runs" / "diverging" / "summary.json").read_text()
    summary = json.loads(text, parse_constant=lambda constant: pytest.fail(f"{constant} in summary.json"))
    assert summary["status"] == "diverged" and "update left embedding/embeddings non-finite" in summary["diagnosis"]
    assert summary["gradient_health"]["findings"][0]["kind"] == "non_finite"
    assert not (tmp_path / "saved_models" / "tiny").exists()  # nothing exported


def test_the_monitor_writes_history_tensorboard_and_a_report(tmp_path, corpus_file, capsys):
    summary = train_tiny(corpus_file, tmp_path, "gru", epochs=2, run_id="watched")
    run_dir = tmp_path / "runs" / "watched"
    header = (run_dir / "history.csv").read_text().splitlines()[0].split(",")
    assert {"grad_norm", "grad_norm_max", "clipped_share"} <= set(header)
    assert (run_dir / "gradients.csv").read_text().count("\n") == summary["steps"] + 1
    assert list((run_dir / "tensorboard" / "gradients").glob("events.out.tfevents.*"))
    assert gradients.main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "verdict: healthy" in out and "gru_0/recurrent_kernel" in out
    assert (run_dir / "grad_norms.png").stat().st_size > 10_000
    assert (run_dir / "weight_norms.png").stat().st_size > 10_000


# -- through time ------------------------------------------------------------------------
def test_through_time_gradients_agree_with_finite_differences():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6, 3), dtype="float64")
    rnn = keras.layers.SimpleRNN(5, dtype="float64")
    model = keras.Model(inputs, keras.layers.Dense(1, dtype="float64")(rnn(inputs)))
    x = np.random.default_rng(1).normal(size=(2, 6, 3))
    target = np.array([[0.3], [-0.2]])
    curve = gradient_through_time(model, x, next_value_loss(target))

    def loss(values):
        return 0.5 * float(np.sum((model(values).numpy() - target) ** 2))

    eps = 1e-6
    numeric = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[index] = eps
        numeric[index] = (loss(x + step) - loss(x - step)) / (2 * eps)
    np.testing.assert_allclose(curve, np.linalg.norm(numeric, axis=2).mean(axis=0), rtol=1e-6)


def test_fit_decay_recovers_a_geometric_rate():
    norms = 2.0 * 0.8 ** np.arange(50)[::-1]  # the last step largest, x0.8 per step back
    fit = fit_decay(norms)
    assert fit.factor_per_step == pytest.approx(0.8)
    assert fit.first_to_last == pytest.approx(0.8 ** 49)
    assert "x0.8 per step" in fit.describe("SimpleRNN")


@pytest.mark.parametrize("radius", [0.5, 0.9])
def test_a_tanh_rnn_gradient_shrinks_by_its_spectral_radius_per_step(radius):
    # Near h = 0, tanh' = 1 and each step back multiplies the gradient by W_hh, a scaled
    # orthogonal matrix here: exactly `radius` per step.
    model = build_adding_model("simple_rnn", units=16, steps=40, recurrent_scale=radius, input_scale=1e-4)
    x, y = adding_batch(tf.constant([0, 0], tf.int64), 8, 40)
    fit = fit_decay(gradient_through_time(model, x, next_value_loss(y)))
    assert fit.factor_per_step == pytest.approx(radius, rel=0.02)


# -- the equations, checked ---------------------------------------------------------------
def test_the_numpy_vanilla_rnn_matches_keras_outputs_gradients_and_through_time():
    keras.utils.set_random_seed(2)
    vocab, hidden, steps = 4, 6, 5
    inputs = keras.Input((steps, vocab), dtype="float64")
    rnn = keras.layers.SimpleRNN(hidden, return_sequences=True, dtype="float64")
    dense = keras.layers.Dense(vocab, dtype="float64")
    model = keras.Model(inputs, dense(rnn(inputs)))
    ids = np.random.default_rng(2).integers(0, vocab, size=(3, steps + 1))
    xs, targets = np.eye(vocab)[ids[:, :-1]], ids[:, 1:]
    reference = VanillaRNN.from_keras(rnn, dense)

    np.testing.assert_allclose(reference.forward(xs)[1], model(xs).numpy(), atol=1e-10)
    x = tf.constant(xs)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64")(targets, model(x))
    keras_grads = tape.gradient(loss, [*rnn.trainable_weights, *dense.trainable_weights, x])
    ref_loss, ref = reference.loss_and_gradients(xs, targets)
    assert ref_loss == pytest.approx(float(loss), abs=1e-10)
    pairs = [(ref["W_xh"].T, keras_grads[0]), (ref["W_hh"].T, keras_grads[1]), (ref["b_h"], keras_grads[2]),
             (ref["W_hy"].T, keras_grads[3]), (ref["b_y"], keras_grads[4]), (ref["x"], keras_grads[5])]
    for mine, theirs in pairs:
        np.testing.assert_allclose(mine, theirs.numpy(), atol=1e-5, rtol=1e-5)

    curve = gradient_through_time(model, xs, next_token_loss(targets[:, -1]))
    np.testing.assert_allclose(reference.gradient_through_time(xs, targets[:, -1]), curve, rtol=1e-5)


# -- the adding problem and the command line --------------------------------------------------
def test_the_adding_problem_marks_one_step_in_each_half_and_sums_them():
    x, y = (t.numpy() for t in adding_batch(tf.constant([0, 1], tf.int64), 4000, 20))
    markers = x[:, :, 1]
    assert (markers.sum(axis=1) == 2).all()
    assert (markers[:, :10].sum(axis=1) == 1).all() and (markers[:, 10:].sum(axis=1) == 1).all()
    np.testing.assert_allclose(y[:, 0], (x[:, :, 0] * markers).sum(axis=1), rtol=1e-6)
    assert np.mean((y - 1.0) ** 2) == pytest.approx(CONSTANT_GUESS_MSE, rel=0.05)


@pytest.mark.parametrize("argv, message", [
    (["adding", "--cells", "lstm,tcn"], "--cells takes a comma-separated list"),
    (["adding", "--lengths", "1,50"], "--lengths takes comma-separated integers >= 2"),
    (["adding", "--train-steps", "0"], "--train-steps must be a positive integer"),
    (["through-time", "--kind", "audio"], "--kind must be text or series"),
    (["report", "/nonexistent/run"], "is not a directory"),
    (["exploding", "--radius", "-1"], "--radius must be > 0"),
])
def test_bad_gradient_commands_are_one_line_exit_2(argv, message):
    result = subprocess.run([sys.executable, "-m", "pipelines.gradients", *argv], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_through_time_command_prints_the_decay_and_plots(tmp_path, capsys):
    assert gradients.main(["through-time", "--kind", "text", "--seq-len", "30", "--units", "16",
                           "--batch", "4", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "SimpleRNN: x" in out and "LSTM: x" in out and "GRU: x" in out
    saved = json.loads((tmp_path / "through_time.json").read_text())
    assert len(saved["curves"]["GRU"]) == 30
    assert (tmp_path / "through_time.png").stat().st_size > 10_000


def test_through_time_of_a_trained_text_run(exported_lstm, corpus_file, capsys, tmp_path):
    summary, _ = exported_lstm
    assert gradients.main(["through-time", "--run", summary["run_dir"], "--corpus", str(corpus_file),
                           "--batch", "4", "--out", str(tmp_path)]) == 0
    assert "LSTM (" in capsys.readouterr().out


@pytest.mark.parametrize("flag, value, message", [
    ("--grad-every", "0", "--grad-every must be a positive integer"),
    ("--exploding-share", "1.5", "--exploding-share must be in (0, 1]"),
    ("--vanishing-time-ratio", "2", "--vanishing-time-ratio must be in (0, 1)"),
])
def test_bad_monitor_flags_are_refused_by_both_pipelines(flag, value, message):
    for pipeline in ("pipelines.text", "pipelines.series"):
        result = subprocess.run([sys.executable, "-m", pipeline, flag, value], cwd=ROOT,
                                capture_output=True, text=True)
        assert result.returncode == 2 and message in result.stderr


def test_a_huge_update_that_leaves_weights_non_finite_stops_training():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 2))
    model = MonitoredModel(inputs, keras.layers.Dense(1, name="head")(keras.layers.SimpleRNN(3, name="rnn_0")(inputs)))
    model.compile(optimizer=keras.optimizers.SGD(3e38), loss="mse")  # finite gradients, an infinite step
    x = np.random.default_rng(0).normal(size=(16, 4, 2)).astype(np.float32)
    recorder, monitor = gradient_callbacks(MonitorConfig(), verbose=False)
    model.fit(x, np.full((16, 1), 5.0, np.float32), batch_size=8, epochs=2, callbacks=[recorder, monitor], verbose=0)
    assert "training diverged at step 1" in monitor.diagnosis
    assert "this step's update left" in monitor.diagnosis and "non-finite" in monitor.diagnosis


def test_remedies_name_fields_and_the_command_line_names_its_flags():
    """model/ names settings by their fields; the pipelines' CLIs pass their flags instead."""
    from pipelines import cli

    diagnoses = {}
    for names in (None, cli.SETTING_FLAGS):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((4, 2))
        model = MonitoredModel(inputs, keras.layers.Dense(1, name="head")(keras.layers.SimpleRNN(3)(inputs)))
        model.compile(optimizer=keras.optimizers.SGD(3e38), loss="mse")  # no clipping, an infinite step
        x = np.random.default_rng(0).normal(size=(16, 4, 2)).astype(np.float32)
        callbacks = gradient_callbacks(MonitorConfig(), verbose=False, setting_names=names)
        model.fit(x, np.full((16, 1), 5.0, np.float32), batch_size=8, epochs=1, callbacks=list(callbacks), verbose=0)
        diagnoses[names is None] = callbacks[1].diagnosis
    assert "(clipnorm 1.0), lower learning_rate, or use cell lstm/gru" in diagnoses[True]
    assert "(--clipnorm 1.0), lower --learning-rate, or use --cell lstm/gru" in diagnoses[False]
