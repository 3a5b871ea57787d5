"""Watching gradients while a model trains: the training step and its callback.

Keras's training step computes the gradients, hands them to the optimiser
(which clips them) and throws them away; its TensorBoard callback logs none.
`MonitoredModel` is a Keras model whose training step also measures, at every
step and inside the compiled graph:

- the global gradient norm before clipping, and after clipping exactly as the
  optimiser clips (`clipnorm`, `global_clipnorm`, `clipvalue` or none);
- the norm of every trainable variable's gradient;
- whether the loss and the gradients are finite. A step with a non-finite
  gradient is not applied.

All of it goes into one small vector that `GradientMonitor`, a Keras callback,
reads after each step. It reads the weights' norms itself, after the step (in
the graph, reading the weights next to their update costs a copy of every
kernel: a 50% slower step for an LSTM-256). It keeps one row every `every`
steps (for the CSV file, TensorBoard and the plots of
`python -m pipelines.gradients report`), adds
epoch summaries to the logs (so the CSV history has them), runs the detectors
of `model/gradient_health.py` at every epoch end and stops training at the
first non-finite step with a diagnosis naming the layer where it started.

Variables are labelled `<layer>/<part>`; a recurrent layer's `kernel` is called
`input_kernel` (W_xh) to set it apart from its `recurrent_kernel` (W_hh).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Callable, Optional

import keras
import numpy as np
import tensorflow as tf

from model import gradient_health, through_time
from model.config import MonitorConfig

# Layout of the vector written at each step: these fields, then one gradient
# norm per variable.
STEP_FIELDS = ("loss", "grad_norm", "grad_norm_clipped", "finite")


def clip_like_optimizer(optimizer: keras.optimizers.Optimizer, grads: list) -> list:
    """The gradients as the optimiser will see them after its own clipping.

    Args:
        optimizer: A Keras optimiser; its `clipnorm`, `global_clipnorm` or
            `clipvalue` (at most one is set) decides.
        grads: The gradients as the tape returned them (an embedding's is
            `IndexedSlices`, clipped as the optimiser clips it: by the norm of
            its rows before repeated rows are summed).

    Returns:
        The clipped gradients (the same list when the optimiser does not clip).
    """
    if optimizer.clipnorm:
        return [g if g is None else tf.clip_by_norm(g, optimizer.clipnorm) for g in grads]
    if optimizer.global_clipnorm:
        return tf.clip_by_global_norm(grads, optimizer.global_clipnorm)[0]
    if optimizer.clipvalue:
        return [g if g is None else clip_values(g, optimizer.clipvalue) for g in grads]
    return grads


def clip_values(gradient, limit: float):
    """Elementwise clipping; an IndexedSlices' rows are clipped before repeated rows are summed, as Keras does."""
    if isinstance(gradient, tf.IndexedSlices):
        return tf.IndexedSlices(tf.clip_by_value(gradient.values, -limit, limit), gradient.indices,
                                gradient.dense_shape)
    return tf.clip_by_value(gradient, -limit, limit)


def dense_norm(gradient) -> tf.Tensor:
    """The norm of a gradient as the update applies it (repeated embedding rows summed); 0 for None."""
    return tf.constant(0.0) if gradient is None else tf.norm(tf.convert_to_tensor(gradient))


def clipped_global_norm(optimizer: keras.optimizers.Optimizer, grads: list, norms: tf.Tensor) -> tf.Tensor:
    """The global norm of the gradients after the optimiser's clipping, without materialising them.

    Clipping by norm only rescales each gradient (clipnorm) or all of them
    (global_clipnorm), so the clipped norms follow from the norms the
    optimiser computes: for an embedding's IndexedSlices, the norm of its rows
    before repeated rows are summed. Clipping by value is elementwise and is
    applied for real.

    Args:
        optimizer: Decides the clipping.
        grads: The tape's gradients.
        norms: `dense_norm` of each gradient.
    """
    def clipping_norm(g):  # the norm the optimiser's clipping sees
        if g is None:
            return tf.constant(0.0)
        return tf.norm(g.values) if isinstance(g, tf.IndexedSlices) else None

    each = tf.unstack(norms, num=len(grads))
    if optimizer.clipnorm:
        seen = tf.stack([n if (c := clipping_norm(g)) is None else c for g, n in zip(grads, each)])
        return tf.norm(norms * tf.minimum(1.0, optimizer.clipnorm / tf.maximum(seen, 1e-30)))
    if optimizer.global_clipnorm:
        seen = tf.norm(tf.stack([n if (c := clipping_norm(g)) is None else c for g, n in zip(grads, each)]))
        return tf.norm(norms) * tf.minimum(1.0, optimizer.global_clipnorm / tf.maximum(seen, 1e-30))
    if optimizer.clipvalue:
        return tf.norm(tf.stack([dense_norm(g) for g in clip_like_optimizer(optimizer, grads)]))
    return tf.norm(norms)


def recurrent_layer_names(model: keras.Model) -> list[str]:
    """Names of the model's recurrent layers (plain or `Bidirectional`), in order."""
    return [layer.name for layer in model.layers
            if isinstance(layer, (keras.layers.RNN, keras.layers.Bidirectional))]


def variable_label(variable: keras.Variable, recurrent_layers: set[str]) -> str:
    """`<layer>/<part>` for a trainable variable, e.g. `lstm_0/recurrent_kernel`.

    A `Bidirectional` layer's variables keep their direction:
    `bidirectional_0/forward_lstm_0/input_kernel`.
    """
    parts = variable.path.split("/")
    parts = [p for p in parts[:-1] if not p.endswith("_cell")] + parts[-1:]
    if parts[0] in recurrent_layers and parts[-1] == "kernel":
        parts[-1] = "input_kernel"
    return "/".join(parts)


def read_rows(path: Path) -> list[dict[str, float]]:
    """The rows of a gradients.csv (none when it does not exist yet)."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(f)]


class MonitoredModel(keras.Model):
    """A Keras functional model whose training step measures its gradients.

    Built like any functional model, `MonitoredModel(inputs, outputs)`. Set
    `monitor_gradients = False` before `fit` for Keras's own training step
    (the baseline of the overhead benchmark).
    """

    monitor_gradients = True

    def gradient_labels(self) -> list[str]:
        """One `<layer>/<part>` label per trainable variable, in the order of the step vector."""
        recurrent = set(recurrent_layer_names(self))
        return [variable_label(v, recurrent) for v in self.trainable_variables]

    @property
    def gradient_record(self) -> tf.Variable:
        """The vector the last training step wrote: `STEP_FIELDS`, then one gradient norm per variable."""
        record = self.__dict__.get("_gradient_record")
        if record is None:
            size = len(STEP_FIELDS) + len(self.trainable_variables)
            with tf.init_scope():  # created eagerly even when first asked for inside the traced step
                # Under tf.distribute each replica writes its own copy and reads give the first
                # replica's: the measurements are the local gradients of this worker's share.
                record = tf.Variable(tf.zeros([size]), trainable=False, name="gradient_record",
                                     synchronization=tf.VariableSynchronization.ON_READ,
                                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            # Kept out of Keras's tracking: it is not a weight and is never saved.
            object.__setattr__(self, "_gradient_record", record)
        return record

    def train_step(self, data):
        if not self.monitor_gradients:
            return super().train_step(data)
        # Keras's own training step (keras/src/backend/tensorflow/trainer.py), plus the measurements.
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            scaled_loss = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        grads = tape.gradient(scaled_loss, variables)  # handed to the optimiser unchanged
        grad_norms = tf.stack([dense_norm(g) for g in grads])
        grad_norm = tf.norm(grad_norms)
        clipped_norm = clipped_global_norm(self.optimizer, grads, grad_norms)
        finite = tf.logical_and(tf.reduce_all(tf.math.is_finite(grad_norms)), tf.math.is_finite(loss))
        self.skips_non_finite_steps = not tf.distribute.has_strategy()  # read by GradientMonitor
        if tf.distribute.has_strategy():
            # The update synchronises replicas (merge_call, all-reduce), which tf.distribute allows
            # in no control flow, and no replica may skip a step alone: apply it, as Keras does.
            # Every replica gets the same verdict, so all monitors stop at the same step.
            non_finite = tf.cast(tf.logical_not(finite), tf.float32)
            finite = tf.distribute.get_replica_context().all_reduce("SUM", non_finite) == 0
            self.optimizer.apply(grads, variables)
        else:  # A non-finite step is skipped, as Keras's LossScaleOptimizer skips one.
            tf.cond(finite, lambda: self.optimizer.apply(grads, variables), lambda: None)
        head = tf.stack([loss, grad_norm, clipped_norm, tf.cast(finite, tf.float32)])
        self.gradient_record.assign(tf.concat([head, grad_norms], axis=0))

        for metric in self.metrics:  # as the Keras guide "Customizing what happens in fit()" does
            if metric.name == "loss":
                metric.update_state(loss, sample_weight=tf.shape(tf.nest.flatten(x)[0])[0])
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


class GradientMonitor(keras.callbacks.Callback):
    """Reads the step measurements, keeps rows, runs the detectors, stops on NaN.

    Args:
        config: Sampling interval and detector thresholds.
        run_path: Where `gradients.csv`, `gradient_layers.json` and the
            TensorBoard scalars (`tensorboard/gradients`) go; None keeps
            everything in memory (experiments, tests).
        verbose: Print each warning when it is first raised.
        probe: `(inputs, last_step_loss)`: a few training sequences and the
            loss of their last step (see `model.through_time`). At each epoch
            end the gradient reaching their first step is measured, relative
            to the last step's: the through-time sign of vanishing gradients.

    Attributes:
        rows: The kept measurements, one dict per kept step.
        through_time: Per epoch, `{"epoch", "first_to_last", "factor_per_step"}`.
        findings: What the detectors find now (`gradient_health.Finding`):
            after training, the verdict on the whole run.
        warned: Every warning printed during training, including ones that
            no longer hold (an LSTM's gradients look vanished until it learns).
        diagnosis: Set when a non-finite step stopped training.
    """

    def __init__(self, config: MonitorConfig, run_path: Optional[Path] = None, verbose: bool = True,
                 probe: Optional[tuple[Any, Callable[[tf.Tensor], tf.Tensor]]] = None):
        super().__init__()
        self.config = config
        self.run_path = Path(run_path) if run_path else None
        self.verbose = verbose
        self.probe = probe
        self.through_time: list[dict[str, float]] = []
        self.rows: list[dict[str, float]] = []
        self.findings: list[gradient_health.Finding] = []
        self.warned: list[gradient_health.Finding] = []
        self.diagnosis: Optional[str] = None
        self._unwritten = 0
        self._epoch = 0
        self._epoch_norms: list[float] = []
        self._epoch_clipped = 0
        self._steps_seen = 0
        self._writer = None

    # -- set-up --------------------------------------------------------------
    def on_train_begin(self, logs=None):
        if not isinstance(self.model, MonitoredModel):
            raise TypeError("GradientMonitor needs a model built as model.gradient_monitor.MonitoredModel")
        if not self.model.monitor_gradients:
            raise ValueError("GradientMonitor needs the model's monitor_gradients on: its step measures the gradients")
        self.labels = self.model.gradient_labels()
        variables = self.model.trainable_variables
        # One compiled call for every weight norm: one eager norm per variable costs far more.
        self._weight_norms = tf.function(lambda: tf.stack([tf.norm(v) for v in variables]))
        self.layers = gradient_health.layer_groups(self.labels, recurrent_layer_names(self.model))
        self._first_step = int(self.model.optimizer.iterations.numpy())  # > 0 when resuming
        self._steps_seen = 0
        layout = self.run_path / "gradient_layers.json" if self.run_path else None
        if layout and layout.is_file():  # a resumed run: keep its start and the steps already measured
            self.initial_weight_norms = json.loads(layout.read_text())["initial_weight_norms"]
            self.rows = read_rows(self.run_path / "gradients.csv")
        else:
            self.initial_weight_norms = {label: float(np.linalg.norm(v.numpy()))
                                         for label, v in zip(self.labels, self.model.trainable_variables)}
            if layout:
                layout.write_text(json.dumps({"layers": self.layers, "labels": self.labels,
                                              "initial_weight_norms": self.initial_weight_norms}, indent=2) + "\n")
        if self.run_path:
            self._writer = tf.summary.create_file_writer(str(self.run_path / "tensorboard" / "gradients"))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch  # BackupAndRestore may start at a later epoch

    # -- every step ----------------------------------------------------------
    def on_train_batch_end(self, batch, logs=None):
        record = self.model.gradient_record.numpy()
        self._steps_seen += 1
        step = self._first_step + self._steps_seen
        loss, grad_norm, clipped_norm, finite = (float(v) for v in record[:len(STEP_FIELDS)])
        grads = record[len(STEP_FIELDS):len(STEP_FIELDS) + len(self.labels)]
        keep = step % self.config.every == 0 or self._steps_seen == 1
        # Weights are read for kept rows only; a weight an update left non-finite is caught then,
        # or at the next step, whose loss it makes non-finite.
        weights = self._weight_norms().numpy().tolist() if keep or not finite else []
        if not finite or (not all(map(math.isfinite, weights)) and self._non_finite_weight()):
            applied = bool(finite) or not getattr(self.model, "skips_non_finite_steps", True)
            self._stop_on_non_finite(step, loss, grads, weights, applied=applied)
            return
        self._epoch_norms.append(grad_norm)
        self._epoch_clipped += clipped_norm < grad_norm * (1 - 1e-6)
        if keep:
            row = {"step": step, "epoch": self._epoch, "loss": loss, "grad_norm": grad_norm,
                   "grad_norm_clipped": clipped_norm}
            row.update({f"grad/{label}": float(g) for label, g in zip(self.labels, grads)})
            row.update({f"weight/{label}": w for label, w in zip(self.labels, weights)})
            self.rows.append(row)
            self._unwritten += 1

    def _non_finite_weight(self) -> Optional[str]:
        """The first variable (in model order) holding NaN or Inf; a norm can overflow on finite weights."""
        return next((label for label, v in zip(self.labels, self.model.trainable_variables)
                     if not bool(tf.reduce_all(tf.math.is_finite(v)))), None)

    def _stop_on_non_finite(self, step: int, loss: float, grads: np.ndarray, weights: list[float],
                            applied: bool) -> None:
        bad_weight = self._non_finite_weight()
        largest = max(zip(weights, self.labels))
        if not math.isfinite(loss):
            cause = (f"{bad_weight} holds non-finite weights" if bad_weight else
                     "the weights are finite, so the batch holds non-finite inputs or targets, or the forward "
                     f"pass overflowed (largest weight norm {largest[0]:.3g}, in {largest[1]})")
            where = f"the loss is {loss}: {cause}"
        elif not applied:
            # Backpropagation runs from the loss to the inputs: the non-finite gradient nearest the output came first.
            nearest_output = next(label for label, g in zip(reversed(self.labels), grads[::-1]) if not math.isfinite(g))
            where = f"the loss is finite ({loss:.4g}) but the gradient went non-finite at {nearest_output}"
        else:
            where = f"this step's update left {bad_weight} non-finite"
        outcome = ("the step was not applied and training stopped" if not applied else
                   "training stopped; the best checkpoint so far is kept")
        optimizer = self.model.optimizer
        clipping = optimizer.clipnorm or optimizer.global_clipnorm or optimizer.clipvalue
        remedy = ("lower --learning-rate (clipping is on already), or use --cell lstm/gru" if clipping else
                  "turn gradient clipping on (--clipnorm 1.0), lower --learning-rate, or use --cell lstm/gru")
        self.diagnosis = (f"training diverged at step {step} (epoch {self._epoch + 1}): {where}; {outcome}. "
                          f"Remedy: {remedy}")
        self.findings.append(gradient_health.Finding(
            "non_finite", self.diagnosis, {"step": step, "loss": loss, "non_finite_weight": bad_weight,
                                           "largest_weight_norm": {largest[1]: largest[0]}}))
        self.warned.append(self.findings[-1])
        if self.verbose:
            print(f"\nerror: {self.diagnosis}")
        self.model.stop_training = True

    # -- epoch and run ends ----------------------------------------------------
    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self._epoch_norms:
            logs["grad_norm"] = float(np.mean(self._epoch_norms))
            logs["grad_norm_max"] = float(np.max(self._epoch_norms))
            logs["clipped_share"] = self._epoch_clipped / len(self._epoch_norms)
        self._epoch_norms, self._epoch_clipped = [], 0
        self._measure_through_time(epoch, logs)
        self._check()
        self._flush()

    def on_train_end(self, logs=None):
        self._check()
        self._flush()

    def _measure_through_time(self, epoch: int, logs: Optional[dict]) -> None:
        if self.probe is None or self.diagnosis:
            return
        curve = through_time.gradient_through_time(self.model, *self.probe)
        fit = through_time.fit_decay(curve)
        self.through_time.append({"epoch": epoch, "first_to_last": fit.first_to_last,
                                  "factor_per_step": fit.factor_per_step})
        if logs is not None:
            logs["grad_first_step_ratio"] = fit.first_to_last

    def _check(self) -> None:
        if self.diagnosis or not self.rows:
            return
        latest = self.through_time[-1] if self.through_time else None
        self.findings = gradient_health.diagnose(self.rows, self.layers, self.initial_weight_norms, self.config,
                                                 latest)
        for finding in self.findings:
            if finding.kind not in {f.kind for f in self.warned}:  # each kind of warning is printed once
                self.warned.append(finding)
                if self.verbose:
                    print(f"\nwarning: {finding.message}")

    def _flush(self) -> None:
        """Append the rows kept since the last flush to gradients.csv and TensorBoard."""
        if not self.run_path or not self._unwritten:
            return
        fresh = self.rows[-self._unwritten:]
        path = self.run_path / "gradients.csv"
        new_file = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(fresh[0]))
            if new_file:
                writer.writeheader()
            writer.writerows(fresh)
        # TensorBoard gets the global norms and one gradient and one weight norm per layer (each
        # eager scalar costs about a millisecond); every variable's figures are in gradients.csv.
        with self._writer.as_default():
            for row in fresh:
                step = int(row["step"])
                for key in ("loss", "grad_norm", "grad_norm_clipped"):
                    tf.summary.scalar(key, row[key], step=step)
                for layer in self.layers:
                    for kind in ("grad", "weight"):
                        norm = math.sqrt(sum(row[f"{kind}/{label}"] ** 2 for label in layer["labels"]))
                        tf.summary.scalar(f"{kind}_norm/{layer['name']}", norm, step=step)
        self._writer.flush()
        self._unwritten = 0

    def summary(self) -> dict[str, Any]:
        """What goes into summary.json: norms, clipping share and the findings."""
        return gradient_health.summarize(self.rows, self.layers, self.initial_weight_norms,
                                         self.findings, self.diagnosis, self.through_time, self.warned)
