"""The adding problem: the standard test of whether an RNN learns across T steps.

Each input is a sequence of T pairs (value from U[0, 1], marker). Exactly two
steps are marked, one in each half of the sequence; the target is the sum of
the two marked values. Predicting the constant 1.0 scores an MSE of 1/6 ≈
0.167, so a model below that has learned to carry a value across up to T
steps (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016).

`train_adding` runs one configuration (cell, T, clipping) for a fixed number of
steps with the gradient monitor on and reports the figures of the experiment
table; `python -m pipelines.gradients adding` runs the grid.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import keras
import numpy as np
import tensorflow as tf

from model import builders, through_time
from model.config import MonitorConfig, OptimizerConfig
from model.gradient_callbacks import GradientHealthCheck, gradient_callbacks
from model.gradient_monitor import MonitoredModel

CONSTANT_GUESS_MSE = 1.0 / 6.0  # always predicting 1.0 (the sum's mean): Var(U1 + U2) = 2/12
SOLVED_MSE = 0.05
# Adam learning rates that learn the problem here (guide measured on 2 cores,
# 64 units, batch 64, T = 100): LSTM needs 1e-2 (at 1e-3 it had not started
# after 3,000 steps), GRU learns at 1e-3. SimpleRNN gets the rate GRU uses.
LEARNING_RATES = {"simple_rnn": 1e-3, "lstm": 1e-2, "gru": 1e-3}


def adding_batch(seed: tf.Tensor, batch: int, steps: int) -> tuple[tf.Tensor, tf.Tensor]:
    """One batch of the adding problem, a pure function of its seed.

    Args:
        seed: `[2]` int seed of the stateless random ops.
        batch: Sequences in the batch.
        steps: T.

    Returns:
        `(inputs [batch, T, 2], targets [batch, 1])`.
    """
    seeds = tf.random.experimental.stateless_split(seed, 3)
    values = tf.random.stateless_uniform([batch, steps], seeds[0])
    half = steps // 2
    first = tf.random.stateless_uniform([batch], seeds[1], 0, half, dtype=tf.int32)
    second = tf.random.stateless_uniform([batch], seeds[2], half, steps, dtype=tf.int32)
    markers = tf.one_hot(first, steps) + tf.one_hot(second, steps)
    targets = tf.reduce_sum(values * markers, axis=1, keepdims=True)
    return tf.stack([values, markers], axis=-1), targets


def adding_dataset(steps: int, batch: int, seed: int, batches: int) -> tf.data.Dataset:
    """`batches` fresh batches, reproducible from `seed` (an endless supply of new examples)."""
    return tf.data.Dataset.range(batches).map(
        lambda i: adding_batch(tf.stack([tf.constant(seed, tf.int64), i]), batch, steps)).prefetch(2)


def build_adding_model(cell: str, units: int, steps: int, recurrent_scale: Optional[float] = None,
                       input_scale: Optional[float] = None) -> MonitoredModel:
    """`[b, T, 2]` -> one recurrent layer -> Dense -> the sum `[b, 1]`.

    Args:
        cell: `"simple_rnn"`, `"lstm"` or `"gru"`.
        units: Hidden width.
        steps: T.
        recurrent_scale: If set, the recurrent kernel is rescaled to this
            spectral radius (largest absolute eigenvalue): above 1 a tanh RNN
            is set up for exploding gradients, well below 1 for vanishing ones.
        input_scale: If set, the input kernel is multiplied by this (a small
            initialisation: small hidden states, small gradients).
    """
    inputs = keras.Input((steps, 2), name="sequence")
    rnn = builders.recurrent_layer(cell, units, name=f"{cell}_0", return_sequences=False)
    model = MonitoredModel(inputs, keras.layers.Dense(1, name="sum")(rnn(inputs)), name=f"adding_{cell}")
    if recurrent_scale is not None:
        kernel = rnn.cell.recurrent_kernel.numpy()
        radius = np.max(np.abs(np.linalg.eigvals(kernel[:, :units])))  # the h->h block of the first gate
        rnn.cell.recurrent_kernel.assign(kernel * (recurrent_scale / radius))
    if input_scale is not None:
        rnn.cell.kernel.assign(rnn.cell.kernel * input_scale)
    return model


@dataclasses.dataclass
class AddingResult:
    """One row of the experiment table."""

    cell: str
    steps: int
    clip: str
    seed: int
    learning_rate: float
    train_steps: int
    final_test_mse: float
    steps_to_solve: Optional[int]
    share_above_1: float
    diverged: bool
    verdict: str
    seconds: float

    def as_row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def train_adding(cell: str, steps: int, clip: str = "clipnorm", train_steps: int = 2000, seed: int = 0,
                 learning_rate: Optional[float] = None, units: int = 64, batch: int = 64,
                 eval_every: int = 100, recurrent_scale: Optional[float] = None,
                 input_scale: Optional[float] = None, test_size: int = 1000,
                 optimizer: str = "adam") -> tuple[AddingResult, GradientHealthCheck, keras.Model]:
    """Train one configuration on fresh batches; test on a fixed held-out set.

    Args:
        cell: Recurrent cell.
        steps: T, the sequence length.
        clip: `"clipnorm"` (1.0) or `"none"` (any `OptimizerConfig.clip`).
        train_steps: Optimiser steps (the fixed budget).
        seed: Seeds the weights, the training batches and the test set.
        learning_rate: Adam's rate (default: `LEARNING_RATES[cell]`).
        units: Hidden width.
        batch: Sequences per step.
        eval_every: Test MSE measured every this many steps.
        recurrent_scale: See `build_adding_model`.
        input_scale: See `build_adding_model`.
        test_size: Held-out sequences.
        optimizer: `"adam"` (the project's default) or `"sgd"`. Adam divides
            each step by a running gradient scale, so a gradient 1,000 times
            too large moves it little more than a normal one; plain SGD steps by
            the gradient itself, which is where clipping matters most.

    Returns:
        `(result, health, model)`: the health check holds the findings, its
        `recorder` the measurements.
    """
    import time

    keras.utils.set_random_seed(seed)
    learning_rate = learning_rate or LEARNING_RATES[cell]
    model = build_adding_model(cell, units, steps, recurrent_scale, input_scale)
    if optimizer == "sgd":  # plain gradient descent: its step is the gradient itself, as in Pascanu et al. 2013
        clipping = {} if clip == "none" else {clip: 1.0}
        model.compile(optimizer=keras.optimizers.SGD(learning_rate, **clipping), loss="mse")
    else:
        model.compile(optimizer=builders.make_optimizer(OptimizerConfig(learning_rate=learning_rate, clip=clip)),
                      loss="mse")
    test = adding_batch(tf.constant([seed, -1], tf.int64), test_size, steps)
    probe = (test[0][:16], through_time.next_value_loss(test[1][:16]))
    recorder, health = gradient_callbacks(MonitorConfig(), verbose=False, probe=probe)
    start = time.perf_counter()
    steps_per_epoch = min(eval_every, train_steps)
    epochs = -(-train_steps // steps_per_epoch)  # the last "epoch" may run past the budget by < eval_every
    history = model.fit(adding_dataset(steps, batch, seed, epochs * steps_per_epoch), validation_data=test,
                        epochs=epochs, steps_per_epoch=steps_per_epoch, callbacks=[recorder, health], verbose=0,
                        shuffle=False)  # every batch is a fresh random draw already
    seconds = time.perf_counter() - start
    test_mse = history.history["val_loss"]
    solved_at = next((i for i, mse in enumerate(test_mse) if mse < SOLVED_MSE), None)
    norms = np.array([row["grad_norm"] for row in recorder.rows])
    diverged = health.diagnosis is not None or not math.isfinite(test_mse[-1])
    result = AddingResult(
        cell=cell, steps=steps, clip=clip, seed=seed, learning_rate=learning_rate,
        train_steps=len(recorder.rows), final_test_mse=float(test_mse[-1]),
        steps_to_solve=None if solved_at is None else (solved_at + 1) * steps_per_epoch,
        share_above_1=float((norms > 1.0).mean()) if len(norms) else math.nan, diverged=diverged,
        verdict=", ".join(f.kind for f in health.findings) or "healthy", seconds=seconds)
    return result, health, model


def markdown_table(results: list[AddingResult]) -> str:
    """The experiment table: one row per configuration (seeds averaged when there are several)."""
    lines = [f"| cell | T | clipping | test MSE (constant guess {CONSTANT_GUESS_MSE:.3f}) | steps to MSE < {SOLVED_MSE} "
             "| steps with pre-clip norm > 1.0 | diverged | monitor verdict |",
             "|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[AddingResult]] = {}
    for r in results:
        groups.setdefault((r.cell, r.steps, r.clip), []).append(r)
    for (cell, steps, clip), runs in groups.items():
        solved = [r.steps_to_solve for r in runs if r.steps_to_solve is not None]
        solve_text = (f"{int(np.mean(solved)):,}" if len(solved) == len(runs)
                      else f"{len(solved)}/{len(runs)} seeds" if solved else "not within budget")
        mse = np.mean([r.final_test_mse for r in runs])
        lines.append(f"| {cell} | {steps} | {clip} | {mse:.4f} | {solve_text} | "
                     f"{np.mean([r.share_above_1 for r in runs]):.0%} | "
                     f"{sum(r.diverged for r in runs)}/{len(runs)} | {', '.join(sorted({r.verdict for r in runs}))} |")
    return "\n".join(lines)
