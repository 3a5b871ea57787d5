"""The vanilla RNN exactly as taught, with backpropagation through time by hand.

    h_t = tanh(W_hh·h_{t-1} + W_xh·x_t + b_h)        h_0 = 0
    y_t = W_hy·h_t + b_y                              (logits)
    L   = mean over the batch and the steps of −log softmax(y_t)[target_t]

Backward, from the last step to the first (the chain rule, step by step):

    dy_t      = (softmax(y_t) − onehot(target_t)) / (B·T)
    dW_hy    += dy_tᵀ·h_t          db_y += Σ dy_t
    dh_t      = dy_t·W_hy + da_{t+1}·W_hh            (the second term carried in `dh_next`)
    da_t      = dh_t ⊙ (1 − h_t²)                    (tanh' at the pre-activation)
    dW_xh    += da_tᵀ·x_t          dW_hh += da_tᵀ·h_{t-1}          db_h += Σ da_t
    dx_t      = da_t·W_xh          dh_next = da_t·W_hh

The factor (1 − h_t²)·W_hh, applied once per step back, is why gradients
vanish (its norm below 1) or explode (above 1). `from_keras` loads the weights
of a Keras `SimpleRNN` + `Dense`; the tests check that the outputs and every
gradient agree with Keras's, and that `gradient_through_time` here gives the
same curve as `model.through_time` (the same quantity computed by TensorFlow).
Matrices act on column vectors as in the equations; the code works on row
vectors in batches, so it multiplies by their transposes.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


@dataclasses.dataclass
class VanillaRNN:
    """Weights in the textbook's orientation: W_xh is [hidden, input], W_hh [hidden, hidden], W_hy [out, hidden]."""

    W_xh: np.ndarray
    W_hh: np.ndarray
    b_h: np.ndarray
    W_hy: np.ndarray
    b_y: np.ndarray

    @classmethod
    def from_keras(cls, rnn: keras.layers.SimpleRNN, dense: keras.layers.Dense) -> "VanillaRNN":
        """Load a Keras `SimpleRNN` (tanh) and the `Dense` layer after it.

        Keras computes x·kernel + h·recurrent_kernel + bias on row vectors, so
        W_xh = kernelᵀ and W_hh = recurrent_kernelᵀ.
        """
        kernel, recurrent_kernel, bias = (np.asarray(w, np.float64) for w in rnn.get_weights())
        dense_kernel, dense_bias = (np.asarray(w, np.float64) for w in dense.get_weights())
        return cls(kernel.T, recurrent_kernel.T, bias, dense_kernel.T, dense_bias)

    def forward(self, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run the equations over a batch of sequences.

        Args:
            xs: `[B, T, input]`, e.g. one-hot characters.

        Returns:
            `(hs, ys)`: hidden states `[B, T, hidden]` and logits `[B, T, out]`.
        """
        batch, steps, _ = xs.shape
        h = np.zeros((batch, self.W_hh.shape[0]))
        hs = np.zeros((batch, steps, self.W_hh.shape[0]))
        for t in range(steps):
            h = np.tanh(h @ self.W_hh.T + xs[:, t] @ self.W_xh.T + self.b_h)
            hs[:, t] = h
        return hs, hs @ self.W_hy.T + self.b_y

    def loss_and_gradients(self, xs: np.ndarray, targets: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """Mean cross-entropy over every step, and its gradients by backpropagation through time.

        Args:
            xs: `[B, T, input]`.
            targets: `[B, T]` int class of each step.

        Returns:
            `(loss, grads)` with a gradient for each weight, and `"x"`, the
            gradient with respect to each input `[B, T, input]`.
        """
        batch, steps, _ = xs.shape
        hs, ys = self.forward(xs)
        probabilities = softmax(ys)
        rows, cols = np.meshgrid(np.arange(batch), np.arange(steps), indexing="ij")
        loss = -np.log(probabilities[rows, cols, targets]).mean()

        dys = probabilities.copy()
        dys[rows, cols, targets] -= 1.0
        dys /= batch * steps
        return float(loss), self._backward(xs, hs, dys)

    def _backward(self, xs: np.ndarray, hs: np.ndarray, dys: np.ndarray) -> dict[str, np.ndarray]:
        """BPTT, given the gradient of the loss with respect to every logit `dys [B, T, out]`."""
        grads = {name: np.zeros_like(w) for name, w in dataclasses.asdict(self).items()}
        dxs = np.zeros_like(xs)
        dh_next = np.zeros((xs.shape[0], self.W_hh.shape[0]))
        for t in reversed(range(xs.shape[1])):
            h_prev = hs[:, t - 1] if t > 0 else np.zeros_like(dh_next)
            grads["W_hy"] += dys[:, t].T @ hs[:, t]
            grads["b_y"] += dys[:, t].sum(axis=0)
            dh = dys[:, t] @ self.W_hy + dh_next
            da = dh * (1.0 - hs[:, t] ** 2)
            grads["W_xh"] += da.T @ xs[:, t]
            grads["W_hh"] += da.T @ h_prev
            grads["b_h"] += da.sum(axis=0)
            dxs[:, t] = da @ self.W_xh
            dh_next = da @ self.W_hh
        grads["x"] = dxs
        return grads

    def gradient_through_time(self, xs: np.ndarray, last_targets: np.ndarray) -> np.ndarray:
        """Norm of ∂(last step's cross-entropy, summed over the batch)/∂x_t at every step, batch-averaged.

        Args:
            xs: `[B, T, input]`.
            last_targets: `[B]` class of the last step.

        Returns:
            `[T]`, the curve `model.through_time.gradient_through_time` measures.
        """
        hs, ys = self.forward(xs)
        dys = np.zeros_like(ys)
        dys[:, -1] = softmax(ys[:, -1])
        dys[np.arange(len(xs)), -1, last_targets] -= 1.0
        dxs = self._backward(xs, hs, dys)["x"]
        return np.linalg.norm(dxs, axis=2).mean(axis=0)
