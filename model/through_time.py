"""How far back a gradient reaches: the gradient of the last step's loss at every earlier step.

Backpropagation through time multiplies the gradient by one Jacobian per step
back. For a tanh RNN that Jacobian is diag(1 - h_t²)·W_hh, whose norm is
usually below 1: the gradient shrinks geometrically, and after a few dozen
steps the first inputs no longer influence learning (vanishing). Above 1 it
grows geometrically (exploding). LSTM and GRU carry a cell or an
interpolated state whose Jacobian stays close to the identity.

`gradient_through_time` measures this on any model of this project: the norm
of ∂loss_T/∂x_t for t = 1..T, where x_t is what the first recurrent layer
reads at step t (the token embedding, or the scaled price features), and
`fit_decay` summarises the curve by its geometric rate per step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import keras
import numpy as np
import tensorflow as tf


def split_at_first_recurrent(model: keras.Model) -> tuple[keras.Model, list[keras.layers.Layer]]:
    """The part of a model before its first recurrent layer, and the layer chain from there.

    Args:
        model: A functional model with a linear stack from its first recurrent
            layer on (every model this project builds).

    Returns:
        `(front, chain)`: `front` maps the model's inputs to the sequence the
        first recurrent layer reads; calling each layer of `chain` in turn
        gives the model's output (stopping before any layer that also reads
        the model's inputs, such as the interval margin of a series model).
    """
    recurrent = (keras.layers.RNN, keras.layers.Bidirectional)
    first = next((i for i, layer in enumerate(model.layers) if isinstance(layer, recurrent)), None)
    if first is None:
        raise ValueError(f"model {model.name} has no recurrent layer")
    chain = []
    for layer in model.layers[first:]:
        if isinstance(layer.input, (list, tuple)):
            break
        chain.append(layer)
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs  # called with a tensor, not a list
    front = keras.Model(inputs, model.layers[first].input)
    return front, chain


def gradient_through_time(model: keras.Model, inputs, last_step_loss: Callable[[tf.Tensor], tf.Tensor]
                          ) -> np.ndarray:
    """Norm of the gradient of the last step's loss with respect to the input at every step.

    Args:
        model: A next-token or next-value model (fresh or trained).
        inputs: A batch of input sequences, `[b, T]` token ids or `[b, T, F]` values.
        last_step_loss: Maps the model's output to the loss of the last step,
            summed over the batch (see `next_token_loss`, `next_value_loss`).

    Returns:
        `[T]`: for each step t, the norm of ∂loss_T/∂x_t, averaged over the batch.
    """
    front, chain = split_at_first_recurrent(model)
    x = tf.convert_to_tensor(front(inputs, training=False))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = x
        for layer in chain:
            y = layer(y, training=False)
        loss = last_step_loss(y)
    gradient = tape.gradient(loss, x).numpy()  # [b, T, d]
    return np.linalg.norm(gradient.reshape(gradient.shape[0], gradient.shape[1], -1), axis=2).mean(axis=0)


def next_token_loss(targets) -> Callable[[tf.Tensor], tf.Tensor]:
    """Cross-entropy of the last step's logits `[b, T, V]` against `targets [b]`, summed."""
    def loss(logits):
        return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.cast(targets, tf.int32), logits=logits[:, -1]))
    return loss


def next_value_loss(targets) -> Callable[[tf.Tensor], tf.Tensor]:
    """Half the squared error of a many-to-one output `[b, ...]` against `targets`, summed."""
    def loss(outputs):
        return 0.5 * tf.reduce_sum(tf.square(outputs - tf.cast(tf.reshape(targets, tf.shape(outputs)),
                                                                 outputs.dtype)))
    return loss


def compiled_loss(model: keras.Model, targets) -> Callable[[tf.Tensor], tf.Tensor]:
    """The model's own compiled loss against `targets`, summed over the batch (many-to-one models)."""
    def loss(outputs):
        return model.loss(targets, outputs) * tf.cast(tf.shape(outputs)[0], outputs.dtype)
    return loss


@dataclasses.dataclass
class DecayFit:
    """A gradient-through-time curve summarised.

    Attributes:
        factor_per_step: The gradient is multiplied by this for each step
            back (a least-squares fit of log-norm against t; < 1 vanishes).
        first_to_last: Norm at the first step over norm at the last.
        steps: T.
        underflowed: Steps whose gradient is exactly 0 (below float32's range).
    """

    factor_per_step: float
    first_to_last: float
    steps: int
    underflowed: int

    def steps_back(self, n: int) -> float:
        """The fitted gradient n steps back, relative to the last step's."""
        return self.factor_per_step ** n

    def describe(self, name: str) -> str:
        """One line, e.g. "SimpleRNN: x0.83 per step; 100 steps back the gradient is 8e-09 of the last step's"."""
        n = min(100, self.steps - 1)
        line = (f"{name}: x{self.factor_per_step:.3g} per step; {n} steps back the gradient is "
                f"{self.steps_back(n):.1e} of the last step's (measured at step 1: {self.first_to_last:.1e})")
        if self.underflowed:
            line += f"; {self.underflowed} steps underflowed to exactly 0"
        return line


def fit_decay(norms: np.ndarray) -> DecayFit:
    """Fit norm_t ≈ a·r^(T−t) to a through-time curve.

    Args:
        norms: `[T]` from `gradient_through_time`.

    Returns:
        The fitted factor r per step back, and the measured first/last ratio.
    """
    norms = np.asarray(norms, dtype=np.float64)
    steps = np.arange(len(norms))
    positive = norms > 0
    if positive.sum() >= 2:
        slope = np.polyfit(steps[positive], np.log(norms[positive]), 1)[0]
        factor = math.exp(-slope)
    else:
        factor = 0.0
    first_to_last = float(norms[0] / norms[-1]) if norms[-1] > 0 else math.nan
    return DecayFit(factor, first_to_last, len(norms), int((~positive).sum()))
