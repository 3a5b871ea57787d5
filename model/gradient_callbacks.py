"""The gradient monitor's two callbacks: one records the measurements, one judges them.

`MonitoredModel`'s training step (`model/gradient_monitor.py`) writes one small
vector per step. Two Keras callbacks read it, each with one job:

- `GradientRecorder` keeps one row every `every` steps (global norms before and
  after clipping, every variable's gradient and weight norm), adds epoch
  summaries to the logs (so history.csv and TensorBoard get them), measures
  the gradient through time on a probe at each epoch end, and writes
  `gradients.csv`, `gradient_layers.json` and TensorBoard scalars.
- `GradientHealthCheck` stops training at the first non-finite step with a
  diagnosis naming the layer where it started, and runs the detectors of
  `model/gradient_health.py` at every epoch end, printing each warning once.

`gradient_callbacks` makes the pair, in the order `fit` must call them.

Variables are labelled `<layer>/<part>`; a recurrent layer's `kernel` is called
`input_kernel` (W_xh) to set it apart from its `recurrent_kernel` (W_hh).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import keras
import numpy as np
import tensorflow as tf

from model import gradient_health, through_time
from model.config import MonitorConfig, name_settings
from model.gradient_monitor import STEP_FIELDS, MonitoredModel, recurrent_layer_names


def read_rows(path: Path) -> list[dict[str, float]]:
    """The rows of a gradients.csv (none when it does not exist yet)."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(f)]


@dataclasses.dataclass
class Step:
    """What the training step measured, as the recorder read it.

    Attributes:
        step: The optimiser's step number (counting steps before a resume).
        loss: The batch loss.
        grads: One gradient norm per trainable variable.
        weights: One weight norm per trainable variable, read after the
            update (empty on steps that are not kept).
        finite: The loss and every gradient were finite.
    """

    step: int
    loss: float
    grads: np.ndarray
    weights: list[float]
    finite: bool


class GradientRecorder(keras.callbacks.Callback):
    """Reads the step measurements, keeps rows, adds epoch summaries, measures through time, writes them.

    Args:
        config: `every`: keep one row every this many steps.
        run_path: Where `gradients.csv`, `gradient_layers.json` and the
            TensorBoard scalars (`tensorboard/gradients`) go; None keeps
            everything in memory (experiments, tests).
        probe: `(inputs, last_step_loss)`: a few training sequences and the
            loss of their last step (see `model.through_time`). At each epoch
            end the gradient reaching their first step is measured, relative
            to the last step's: the through-time sign of vanishing gradients.

    Attributes:
        rows: The kept measurements, one dict per kept step.
        last: The latest step's measurements (`Step`).
        labels: One `<layer>/<part>` label per trainable variable.
        layers: The labels grouped by layer (`gradient_health.layer_groups`).
        initial_weight_norms: Each variable's weight norm before training.
        through_time: Per epoch, `{"epoch", "first_to_last", "factor_per_step"}`.
        epoch: The current epoch (BackupAndRestore may start at a later one).
    """

    def __init__(self, config: MonitorConfig, run_path: Optional[Path] = None,
                 probe: Optional[tuple[Any, Callable[[tf.Tensor], tf.Tensor]]] = None):
        super().__init__()
        self.config = config
        self.run_path = Path(run_path) if run_path else None
        self.probe = probe
        self.rows: list[dict[str, float]] = []
        self.through_time: list[dict[str, float]] = []
        self.last: Optional[Step] = None
        self.epoch = 0
        self._unwritten = 0
        self._epoch_norms: list[float] = []
        self._epoch_clipped = 0
        self._steps_seen = 0
        self._writer = None

    # -- set-up --------------------------------------------------------------
    def on_train_begin(self, logs=None):
        if not isinstance(self.model, MonitoredModel):
            raise TypeError("GradientRecorder needs a model built as model.gradient_monitor.MonitoredModel")
        if not self.model.monitor_gradients:
            raise ValueError("GradientRecorder needs the model's monitor_gradients on: its step measures the gradients")
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
        self.epoch = epoch

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
        self.last = Step(step, loss, grads, weights, bool(finite))
        if not self.last_is_healthy():
            return  # GradientHealthCheck, next in line, diagnoses it and stops training
        self._epoch_norms.append(grad_norm)
        self._epoch_clipped += clipped_norm < grad_norm * (1 - 1e-6)
        if keep:
            row = {"step": step, "epoch": self.epoch, "loss": loss, "grad_norm": grad_norm,
                   "grad_norm_clipped": clipped_norm}
            row.update({f"grad/{label}": float(g) for label, g in zip(self.labels, grads)})
            row.update({f"weight/{label}": w for label, w in zip(self.labels, weights)})
            self.rows.append(row)
            self._unwritten += 1

    def last_is_healthy(self) -> bool:
        """The latest step's loss, gradients and weights are finite (a norm can overflow on finite weights)."""
        return self.last.finite and (all(map(math.isfinite, self.last.weights)) or self.non_finite_weight() is None)

    def non_finite_weight(self) -> Optional[str]:
        """The first variable (in model order) holding NaN or Inf."""
        return next((label for label, v in zip(self.labels, self.model.trainable_variables)
                     if not bool(tf.reduce_all(tf.math.is_finite(v)))), None)

    # -- epoch and run ends ----------------------------------------------------
    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self._epoch_norms:
            logs["grad_norm"] = float(np.mean(self._epoch_norms))
            logs["grad_norm_max"] = float(np.max(self._epoch_norms))
            logs["clipped_share"] = self._epoch_clipped / len(self._epoch_norms)
        self._epoch_norms, self._epoch_clipped = [], 0
        self._measure_through_time(epoch, logs)
        self._flush()

    def on_train_end(self, logs=None):
        self._flush()

    def _measure_through_time(self, epoch: int, logs: Optional[dict]) -> None:
        if self.probe is None or (self.last is not None and not self.last_is_healthy()):
            return
        curve = through_time.gradient_through_time(self.model, *self.probe)
        fit = through_time.fit_decay(curve)
        self.through_time.append({"epoch": epoch, "first_to_last": fit.first_to_last,
                                  "factor_per_step": fit.factor_per_step})
        if logs is not None:
            logs["grad_first_step_ratio"] = fit.first_to_last

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


class GradientHealthCheck(keras.callbacks.Callback):
    """Judges the recorder's measurements: stops on the first non-finite step, warns of vanishing or exploding.

    Place it right after its `GradientRecorder` in the callback list.

    Args:
        recorder: Where the measurements come from.
        config: The detectors' thresholds.
        verbose: Print each warning when it is first raised.
        setting_names: How remedies name settings: the command line passes
            its flags ("lower --learning-rate"); by default the fields'
            names ("lower learning_rate"); see `model.config.name_settings`.

    Attributes:
        findings: What the detectors find now (`gradient_health.Finding`):
            after training, the verdict on the whole run.
        warned: Every warning printed during training, including ones that
            no longer hold (an LSTM's gradients look vanished until it learns).
        diagnosis: Set when a non-finite step stopped training.
    """

    def __init__(self, recorder: GradientRecorder, config: MonitorConfig, verbose: bool = True,
                 setting_names: Optional[Mapping[str, str]] = None):
        super().__init__()
        self.recorder = recorder
        self.config = config
        self.verbose = verbose
        self.setting_names = setting_names
        self.findings: list[gradient_health.Finding] = []
        self.warned: list[gradient_health.Finding] = []
        self.diagnosis: Optional[str] = None

    def on_train_batch_end(self, batch, logs=None):
        if self.diagnosis is None and not self.recorder.last_is_healthy():
            self._stop_on_non_finite(self.recorder.last)

    def on_epoch_end(self, epoch, logs=None):
        self._check()

    def on_train_end(self, logs=None):
        self._check()

    def _stop_on_non_finite(self, last: Step) -> None:
        labels = self.recorder.labels
        applied = last.finite or not getattr(self.model, "skips_non_finite_steps", True)
        bad_weight = self.recorder.non_finite_weight()
        largest = max(zip(last.weights, labels))
        if not math.isfinite(last.loss):
            cause = (f"{bad_weight} holds non-finite weights" if bad_weight else
                     "the weights are finite, so the batch holds non-finite inputs or targets, or the forward "
                     f"pass overflowed (largest weight norm {largest[0]:.3g}, in {largest[1]})")
            where = f"the loss is {last.loss}: {cause}"
        elif not applied:
            # Backpropagation runs from the loss to the inputs: the non-finite gradient nearest the output came first.
            nearest_output = next(label for label, g in zip(reversed(labels), last.grads[::-1]) if not math.isfinite(g))
            where = f"the loss is finite ({last.loss:.4g}) but the gradient went non-finite at {nearest_output}"
        else:
            where = f"this step's update left {bad_weight} non-finite"
        outcome = ("the step was not applied and training stopped" if not applied else
                   "training stopped; the best checkpoint so far is kept")
        optimizer = self.model.optimizer
        clipping = optimizer.clipnorm or optimizer.global_clipnorm or optimizer.clipvalue
        remedy = ("lower {learning_rate} (clipping is on already), or use {cell} lstm/gru" if clipping else
                  "turn gradient clipping on ({clipnorm} 1.0), lower {learning_rate}, or use {cell} lstm/gru")
        self.diagnosis = (f"training diverged at step {last.step} (epoch {self.recorder.epoch + 1}): {where}; "
                          f"{outcome}. Remedy: {name_settings(remedy, self.setting_names)}")
        self.findings.append(gradient_health.Finding(
            "non_finite", self.diagnosis, {"step": last.step, "loss": last.loss, "non_finite_weight": bad_weight,
                                           "largest_weight_norm": {largest[1]: largest[0]}}))
        self.warned.append(self.findings[-1])
        if self.verbose:
            print(f"\nerror: {self.diagnosis}")
        self.model.stop_training = True

    def _check(self) -> None:
        recorder = self.recorder
        if self.diagnosis or not recorder.rows:
            return
        latest = recorder.through_time[-1] if recorder.through_time else None
        self.findings = gradient_health.diagnose(recorder.rows, recorder.layers, recorder.initial_weight_norms,
                                                 self.config, latest, self.setting_names)
        for finding in self.findings:
            if finding.kind not in {f.kind for f in self.warned}:  # each kind of warning is printed once
                self.warned.append(finding)
                if self.verbose:
                    print(f"\nwarning: {finding.message}")

    def summary(self) -> dict[str, Any]:
        """What goes into summary.json: norms, clipping share and the findings."""
        recorder = self.recorder
        return gradient_health.summarize(recorder.rows, recorder.layers, recorder.initial_weight_norms,
                                         self.findings, self.diagnosis, recorder.through_time, self.warned)


def gradient_callbacks(config: MonitorConfig, run_path: Optional[Path] = None, verbose: bool = True,
                       probe: Optional[tuple[Any, Callable[[tf.Tensor], tf.Tensor]]] = None,
                       setting_names: Optional[Mapping[str, str]] = None
                       ) -> tuple[GradientRecorder, GradientHealthCheck]:
    """The recorder and the health check, in the order `fit` must call them.

    Args:
        config: Sampling interval and detector thresholds.
        run_path: Where the recorder writes (None: memory only).
        verbose: Print warnings and the divergence diagnosis.
        probe: The recorder's through-time probe (see `GradientRecorder`).
        setting_names: How the health check's remedies name settings.

    Returns:
        `(recorder, health)`: pass both to `fit`, in this order.
    """
    recorder = GradientRecorder(config, run_path, probe)
    return recorder, GradientHealthCheck(recorder, config, verbose, setting_names)
