"""One time step of a trained recurrent stack, written as its equations.

Serving generates one token at a time and carries the recurrent state, so the
step is the hot loop of generation. Writing the three cells' equations out
(as Keras computes them in inference, without dropout) lets the weights be
read once per request instead of once per step, roughly halving the cost of
a step, and keeps cuDNN kernels out of exported graphs: these are plain
MatMul/Sigmoid/Tanh ops that any CPU-only TensorFlow Serving runs. A test
checks the step against the Keras layers, for all three cells.

A step is split in two: the input's projection x_t W_x + b (`project_input`),
which for a prompt known in full is one product over all its steps
(`read_sequences`, as cuDNN runs a layer), and the recurrent update
(`recurrent_update`), which must go step by step.

    SimpleRNN  h_t = tanh(x_t W_x + h_{t-1} W_h + b)
    LSTM       [i, f, g, o] = x_t W_x + h_{t-1} W_h + b
               c_t = σ(f) * c_{t-1} + σ(i) * tanh(g);  h_t = σ(o) * tanh(c_t)
    GRU        [z_x, r_x, n_x] = x_t W_x + b_x;  [z_h, r_h, n_h] = h_{t-1} W_h + b_h
    (reset_after) z = σ(z_x + z_h); r = σ(r_x + r_h); n = tanh(n_x + r * n_h)
               h_t = z * h_{t-1} + (1 - z) * n
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from model.builders import RECURRENT_LAYERS as RECURRENT_TYPES

CELL_KINDS = {layer_type: kind for kind, layer_type in RECURRENT_TYPES.items()}


@dataclasses.dataclass
class LayerWeights:
    """The tensors of one recurrent layer, read once.

    Attributes:
        kind: `"simple_rnn"`, `"lstm"` or `"gru"`.
        kernel: Input weights W_x, `[input_dim, gates * units]`.
        recurrent_kernel: Recurrent weights W_h, `[units, gates * units]`.
        bias: `[gates * units]`; for the GRU `[2, 3 * units]` (input, recurrent).
    """

    kind: str
    kernel: tf.Tensor
    recurrent_kernel: tf.Tensor
    bias: tf.Tensor

    @property
    def state_count(self) -> int:
        return 2 if self.kind == "lstm" else 1


def check_supported(layer: keras.layers.RNN) -> str:
    """The kind of a recurrent layer, if its equations are the ones above."""
    kind = CELL_KINDS.get(type(layer))
    cell = layer.cell
    if kind is None or not cell.use_bias or getattr(layer, "go_backwards", False):
        raise ValueError(f"layer {layer.name}: only SimpleRNN/LSTM/GRU with biases, forwards, are supported")
    if kind == "gru" and not cell.reset_after:
        raise ValueError(f"layer {layer.name}: only GRU(reset_after=True), the Keras default, is supported")
    activations = (cell.activation, getattr(cell, "recurrent_activation", keras.activations.sigmoid))
    if activations != (keras.activations.tanh, keras.activations.sigmoid):
        raise ValueError(f"layer {layer.name}: only the default tanh/sigmoid activations are supported")
    return kind


def read_weights(layer: keras.layers.RNN) -> LayerWeights:
    """Read a Keras recurrent layer's weights as tensors (call inside the graph, once)."""
    cell = layer.cell
    return LayerWeights(check_supported(layer), tf.convert_to_tensor(cell.kernel),
                        tf.convert_to_tensor(cell.recurrent_kernel), tf.convert_to_tensor(cell.bias))


def zero_states(weights: list[LayerWeights], batch: tf.Tensor) -> tuple[tf.Tensor, ...]:
    """All-zero initial states, flattened: (h) per SimpleRNN/GRU layer, (h, c) per LSTM layer."""
    states = []
    for layer in weights:
        units = tf.shape(layer.recurrent_kernel)[0]
        states.extend(tf.zeros([batch, units]) for _ in range(layer.state_count))
    return tuple(states)


def project_input(layer: LayerWeights, x: tf.Tensor) -> tf.Tensor:
    """x_t W_x + b: the part of a step that does not depend on the state.

    Args:
        layer: Its weights.
        x: Inputs `[batch, input_dim]`, or a whole sequence `[batch, time, input_dim]`: then
            every step's projection comes from one matrix product instead of one per step
            (as cuDNN runs a layer), which is how a prompt is read.

    Returns:
        `[..., gates * units]`: the input's share of every gate (the GRU's input bias included).
    """
    bias = layer.bias[0] if layer.kind == "gru" else layer.bias
    return tf.matmul(x, layer.kernel) + bias


def recurrent_update(layer: LayerWeights, projected: tf.Tensor, states: tuple[tf.Tensor, ...]):
    """The rest of one step of one layer, from the input's projection (`project_input`).

    Args:
        layer: Its weights.
        projected: x_t W_x + b, `[batch, gates * units]`.
        states: `(h,)` or, for the LSTM, `(h, c)`.

    Returns:
        The output h_t `[batch, units]` and the new states.
    """
    h = states[0]
    if layer.kind == "simple_rnn":
        h = tf.tanh(projected + tf.matmul(h, layer.recurrent_kernel))
        return h, (h,)
    if layer.kind == "lstm":
        i, f, g, o = tf.split(projected + tf.matmul(h, layer.recurrent_kernel), 4, axis=1)
        c = tf.sigmoid(f) * states[1] + tf.sigmoid(i) * tf.tanh(g)
        h = tf.sigmoid(o) * tf.tanh(c)
        return h, (h, c)
    x_z, x_r, x_n = tf.split(projected, 3, axis=1)
    h_z, h_r, h_n = tf.split(tf.matmul(h, layer.recurrent_kernel) + layer.bias[1], 3, axis=1)
    z = tf.sigmoid(x_z + h_z)
    r = tf.sigmoid(x_r + h_r)
    n = tf.tanh(x_n + r * h_n)
    h = z * h + (1.0 - z) * n
    return h, (h,)


def layer_step(layer: LayerWeights, x: tf.Tensor, states: tuple[tf.Tensor, ...]):
    """One step of one layer.

    Args:
        layer: Its weights.
        x: Input `[batch, input_dim]`.
        states: `(h,)` or, for the LSTM, `(h, c)`.

    Returns:
        The output h_t `[batch, units]` and the new states.
    """
    return recurrent_update(layer, project_input(layer, x), states)


def stack_step(weights: list[LayerWeights], x: tf.Tensor, states: tuple[tf.Tensor, ...]):
    """One step through every layer of the stack, bottom to top.

    Returns:
        The top layer's output and the new flattened states.
    """
    new_states, offset = [], 0
    for layer in weights:
        x, layer_states = layer_step(layer, x, states[offset:offset + layer.state_count])
        new_states.extend(layer_states)
        offset += layer.state_count
    return x, tuple(new_states)


def read_sequences(weights: list[LayerWeights], x: tf.Tensor, lengths: tf.Tensor) -> tuple[tf.Tensor, ...]:
    """Run right-padded sequences through the stack, a layer at a time; return each row's final states.

    Equal to `stack_step` over the steps, row i stopping after `lengths[i]`
    (its states then stay as they were), but cheaper for a prompt: each
    layer's input projection is one matrix product over all steps, and the
    loop is left with the recurrent product and the gates. A row of length 0
    keeps the zero states.

    Args:
        weights: The stack, bottom to top.
        x: Inputs `[batch, time, input_dim]`.
        lengths: `[batch]` int32, each row's number of real steps.

    Returns:
        The flattened final states, as `stack_step` returns them.
    """
    batch, steps = tf.shape(x)[0], tf.shape(x)[1]
    final_states = []
    for index, layer in enumerate(weights):
        projected = tf.transpose(project_input(layer, x), [1, 0, 2])  # time-major: one slice per step
        states = zero_states([layer], batch)
        top = index == len(weights) - 1
        # The next layer's inputs (empty for the top layer: AutoGraph's loop needs it defined, not None).
        outputs = tf.TensorArray(tf.float32, size=0 if top else steps)
        for t in tf.range(steps):
            h, new_states = recurrent_update(layer, projected[t], states)
            active = (t < lengths)[:, None]  # rows past their end keep their states
            states = tuple(tf.where(active, new, old) for new, old in zip(new_states, states))
            if not top:
                outputs = outputs.write(t, h)
        if not top:
            x = tf.transpose(outputs.stack(), [1, 0, 2])
        final_states.extend(states)
    return tuple(final_states)
