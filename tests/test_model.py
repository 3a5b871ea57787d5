"""Model builders, the optimiser's clipping, and the explicit recurrent step."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from model import recurrent_step
from model.builders import build_next_token_model, make_optimizer
from model.config import (
    CELLS,
    ForecastConfig,
    ModelConfig,
    OptimizerConfig,
    SeriesDataConfig,
    TextDataConfig,
    UsageError,
)

VOCAB = 12


@pytest.mark.parametrize("cell", CELLS)
def test_one_flag_switches_the_cell(cell):
    model = build_next_token_model(VOCAB, ModelConfig(cell=cell, units=8, layers=2, dropout=0.1,
                                                      embedding_dim=4))
    kinds = [type(layer) for layer in model.layers if isinstance(layer, keras.layers.RNN)]
    assert kinds == [recurrent_step.RECURRENT_TYPES[cell]] * 2
    logits = model(np.zeros((3, 7), np.int32))
    assert logits.shape == (3, 7, VOCAB)


def test_clipnorm_is_on_by_default_and_each_kind_is_selectable():
    assert make_optimizer(OptimizerConfig()).clipnorm == 1.0
    assert make_optimizer(OptimizerConfig(clip="global_clipnorm", clip_value=5.0)).global_clipnorm == 5.0
    assert make_optimizer(OptimizerConfig(clip="clipvalue", clip_value=0.5)).clipvalue == 0.5
    none = make_optimizer(OptimizerConfig(clip="none"))
    assert none.clipnorm is None and none.global_clipnorm is None and none.clipvalue is None


@pytest.mark.parametrize("schedule, decays", [("constant", False), ("cosine", True), ("exponential", True)])
def test_learning_rate_schedules(schedule, decays):
    optimizer = make_optimizer(OptimizerConfig(learning_rate=0.1, lr_schedule=schedule, lr_half_life_steps=10),
                               total_steps=100)
    rate = optimizer.get_config()["learning_rate"]
    at = keras.optimizers.schedules.deserialize(rate) if isinstance(rate, dict) else (lambda step: rate)
    assert float(at(0)) == pytest.approx(0.1)
    assert (float(at(50)) < 0.09) == decays


@pytest.mark.parametrize("config, message, flag_message", [
    (ModelConfig(cell="transformer"), "unknown cell 'transformer'", "unknown --cell 'transformer'"),
    (ModelConfig(units=0), "units must be a positive integer", "--units must be a positive integer"),
    (ModelConfig(layers=-1), "layers must be a positive integer", "--layers must be a positive integer"),
    (OptimizerConfig(clip="clipnorm", clip_value=0), "the clip_value threshold must be > 0",
     "the --clipnorm threshold must be > 0"),
    (OptimizerConfig(lr_schedule="linear"), "unknown lr_schedule", "unknown --lr-schedule"),
    (TextDataConfig(seq_len=0), "seq_len must be a positive integer", "--seq-len must be a positive integer"),
    (TextDataConfig(val_fraction=0.0), "val_fraction must be between 0 and 1", "--val-fraction must be between"),
    (TextDataConfig(token_level="byte"), "unknown token_level 'byte'", "unknown --token-level 'byte'"),
    (TextDataConfig(max_vocab=0), "max_vocab must be a positive integer", "--max-vocab must be a positive integer"),
    (ForecastConfig(window=0), "window must be >= 2 and horizon >= 1", "--window must be >= 2 and --horizon >= 1"),
    (SeriesDataConfig(val_fraction=0.6, test_fraction=0.5), "val_fraction and test_fraction must be in (0, 1)",
     "--val-fraction and --test-fraction must be in (0, 1)"),
])
def test_bad_settings_are_one_line_errors_that_name_the_field_or_the_flag(config, message, flag_message):
    """validate() names the field; the command line's layer alone names the flag instead."""
    from pipelines import cli

    with pytest.raises(UsageError) as error:
        config.validate()
    assert message in str(error.value) and "\n" not in str(error.value) and "--" not in str(error.value)
    clipping = {"clip_value": "--" + config.clip} if isinstance(config, OptimizerConfig) else {}
    with pytest.raises(UsageError) as error, cli.flag_names(**clipping):
        config.validate()
    assert flag_message in str(error.value)


@pytest.mark.parametrize("cell", CELLS)
def test_explicit_step_matches_the_keras_layers(cell):
    """Stepping the equations of recurrent_step token by token reproduces the Keras model."""
    keras.utils.set_random_seed(0)
    model = build_next_token_model(VOCAB, ModelConfig(cell=cell, units=6, layers=2, embedding_dim=5))
    for variable in model.weights:  # non-zero biases too, so every term is exercised
        variable.assign(np.random.default_rng(1).normal(0, 0.5, variable.shape).astype(np.float32))
    ids = np.random.default_rng(2).integers(0, VOCAB, size=(3, 9)).astype(np.int32)
    expected = model(ids).numpy()

    layers = [recurrent_step.read_weights(layer) for layer in model.layers
              if isinstance(layer, keras.layers.RNN)]
    embedding = model.get_layer("embedding").embeddings.numpy()
    dense = model.get_layer("logits")
    states = recurrent_step.zero_states(layers, 3)
    for t in range(ids.shape[1]):
        h, states = recurrent_step.stack_step(layers, tf.gather(embedding, ids[:, t]), states)
        np.testing.assert_allclose(dense(h).numpy(), expected[:, t], atol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_reading_whole_sequences_matches_stepping_each_row_to_its_length(cell):
    """read_sequences (a layer at a time, inputs projected at once) ends where stepping the stack ends."""
    keras.utils.set_random_seed(0)
    model = build_next_token_model(VOCAB, ModelConfig(cell=cell, units=6, layers=2, embedding_dim=5))
    for variable in model.weights:
        variable.assign(np.random.default_rng(1).normal(0, 0.5, variable.shape).astype(np.float32))
    layers = [recurrent_step.read_weights(layer) for layer in model.layers if isinstance(layer, keras.layers.RNN)]
    embedding = model.get_layer("embedding").embeddings.numpy()
    lengths = np.array([9, 4, 0, 1], np.int32)  # a full row, a short one, an empty one, a single token
    ids = np.random.default_rng(2).integers(1, VOCAB, size=(4, 9)).astype(np.int32)
    ids[np.arange(9)[None, :] >= lengths[:, None]] = 0  # right-padded, as the export pads prompts

    final = recurrent_step.read_sequences(layers, tf.gather(embedding, ids), tf.constant(lengths))

    for row, length in enumerate(lengths):
        states = recurrent_step.zero_states(layers, 1)
        for t in range(length):
            _, states = recurrent_step.stack_step(layers, tf.gather(embedding, ids[row:row + 1, t]), states)
        for got, want in zip(final, states):
            np.testing.assert_allclose(got.numpy()[row], want.numpy()[0], atol=1e-5)


def test_unsupported_layers_are_refused():
    layer = keras.layers.GRU(4, reset_after=False)
    layer.build((None, None, 3))
    with pytest.raises(ValueError, match="reset_after=True"):
        recurrent_step.check_supported(layer)
