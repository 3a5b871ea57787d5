"""Keras model builders and the optimiser with gradient clipping.

The three recurrent cells are interchangeable by one string: `"simple_rnn"`
(the textbook h_t = tanh(W_hh·h_{t-1} + W_xh·x_t + b_h)), `"lstm"` and `"gru"`.
"""

from __future__ import annotations

import keras

from model import learning_rate
from model.config import ModelConfig, OptimizerConfig
from model.gradient_monitor import MonitoredModel

RECURRENT_LAYERS = {
    "simple_rnn": keras.layers.SimpleRNN,
    "lstm": keras.layers.LSTM,
    "gru": keras.layers.GRU,
}


def recurrent_layer(cell: str, units: int, name: str, return_sequences: bool = True) -> keras.layers.RNN:
    """One recurrent layer of the given kind.

    Args:
        cell: `"simple_rnn"`, `"lstm"` or `"gru"`.
        units: Width of the hidden state.
        name: Layer name (the gradient monitor reports per layer by name).
        return_sequences: Whether to return the output at every step.

    Returns:
        A Keras recurrent layer with default activations, so that LSTM and
        GRU keep their fused cuDNN kernels when trained on a GPU.
    """
    return RECURRENT_LAYERS[cell](units, return_sequences=return_sequences, name=name)


def build_next_token_model(vocab_size: int, config: ModelConfig) -> keras.Model:
    """Embedding -> N recurrent layers -> Dense logits, one prediction per step.

    Args:
        vocab_size: Number of token ids, including the padding id 0 and the
            out-of-vocabulary id 1 (see `pipelines/text_data.py`).
        config: Cell kind, width, depth, dropout and embedding width.

    Returns:
        An uncompiled `MonitoredModel` (a Keras functional model whose
        training step also measures its gradients) mapping int token ids
        `[batch, time]` to next-token logits `[batch, time, vocab_size]`.
    """
    token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    x = keras.layers.Embedding(vocab_size, config.embedding_dim, name="embedding")(token_ids)
    for index in range(config.layers):
        x = recurrent_layer(config.cell, config.units, name=f"{config.cell}_{index}")(x)
        if config.dropout > 0:
            x = keras.layers.Dropout(config.dropout, name=f"dropout_{index}")(x)
    logits = keras.layers.Dense(vocab_size, name="logits")(x)
    return MonitoredModel(token_ids, logits, name=f"next_token_{config.cell}")


def make_optimizer(config: OptimizerConfig, total_steps: int | None = None) -> keras.optimizers.Optimizer:
    """Adam with the configured gradient clipping and learning-rate schedule.

    Args:
        config: Learning rate, schedule and clipping.
        total_steps: Number of training steps of the run; the cosine
            schedule decays to zero over them (see `model.learning_rate`).

    Returns:
        A Keras Adam optimiser.
    """
    clipping = {} if config.clip == "none" else {config.clip: config.clip_value}
    return keras.optimizers.Adam(learning_rate=learning_rate.rate(config, total_steps), **clipping)


def compile_next_token_model(model: keras.Model, optimizer: keras.optimizers.Optimizer) -> keras.Model:
    """Compile for next-token prediction: cross-entropy on logits, in nats.

    Args:
        model: A model from `build_next_token_model`.
        optimizer: From `make_optimizer`.

    Returns:
        The same model, compiled.
    """
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model
