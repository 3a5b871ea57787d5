"""Training machinery shared by every pipeline: run directories, callbacks, fit.

A run lives in `runs/<run-id>/`:

    runs/<run-id>/
      tensorboard/         TensorBoard logs (`tensorboard --logdir runs`)
      history.csv          one row per epoch (CSVLogger)
      best.weights.h5      weights of the best validation loss so far
      gradients.csv        the gradient monitor's measurements, one row per kept step
      gradient_layers.json which variable belongs to which layer, initial weight norms
      backup/              BackupAndRestore state: rerun with the same
                           --run-id and a killed run resumes where it stopped
      trained.json         training finished (killed later, in evaluation or
                           export, the rerun does not train again)
      summary.json         written once, when the run has finished

Everything here is plain Keras: `Model.fit` with Keras callbacks, plus small
callbacks of our own (a wall-time budget, a throughput meter) and the
gradient-health monitor of `model/gradient_monitor.py`, on by default.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable, Optional

import keras
import tensorflow as tf

from model import builders
from model.config import OptimizerConfig, TrainingConfig, TrainingDiverged, UsageError
from model.gradient_monitor import GradientMonitor


def finite_or_null(value: Any) -> Any:
    """A copy of nested dicts and lists with every NaN or infinite float replaced by None."""
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclasses.dataclass(frozen=True)
class RunDirectory:
    """Paths of one training run.

    Attributes:
        path: The run's directory, `<runs_dir>/<run_id>`.
    """

    path: Path

    @classmethod
    def open(cls, runs_dir: str, run_id: Optional[str], default_name: str) -> "RunDirectory":
        """Create a new run directory, or reopen an unfinished one to resume it.

        Args:
            runs_dir: Parent directory of all runs.
            run_id: Directory name; None picks `<timestamp>-<default_name>`.
            default_name: Suffix of generated run ids (e.g. the model name).

        Returns:
            The run directory, created on disk.

        Raises:
            UsageError: If `run_id` names a run that has already finished.
        """
        if run_id is None:  # a new run: never reuse a directory, even within the same second
            stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{default_name}"
            run_id = next(name for name in (stem, *(f"{stem}-{i}" for i in range(2, 10_000)))
                          if not (Path(runs_dir) / name).exists())
        run = cls(Path(runs_dir) / run_id)
        if run.summary_json.exists():
            raise UsageError(f"run {run.path} has already finished; pick a new --run-id "
                             "(reusing one only resumes an interrupted run)")
        if run.path.exists() and not run.path.is_dir():
            raise UsageError(f"run directory {run.path} is a file; pick another --run-id or --runs-dir")
        try:
            run.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UsageError(f"cannot create run directory {run.path} ({error.strerror}); "
                             "pass a writable --runs-dir") from None
        return run

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def history_csv(self) -> Path:
        return self.path / "history.csv"

    @property
    def best_weights(self) -> Path:
        return self.path / "best.weights.h5"

    @property
    def backup(self) -> Path:
        return self.path / "backup"

    @property
    def trained_json(self) -> Path:
        return self.path / "trained.json"

    @property
    def summary_json(self) -> Path:
        return self.path / "summary.json"

    @property
    def is_resuming(self) -> bool:
        """True when an interrupted run left BackupAndRestore state behind."""
        return self.backup.is_dir() and any(self.backup.iterdir())

    def best_val_loss_so_far(self) -> float:
        """Lowest validation loss in history.csv (inf for a new run)."""
        if not self.history_csv.exists():
            return math.inf
        with self.history_csv.open() as f:
            losses = [float(row["val_loss"]) for row in csv.DictReader(f) if row.get("val_loss")]
        return min(losses, default=math.inf)

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write summary.json atomically (a reader never sees half a file).

        NaN and infinities (a diverged loss, an overflowed ratio) are written
        as null: the file stays strict JSON that any tool can read.
        """
        temporary = self.summary_json.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(finite_or_null(summary), indent=2, sort_keys=True, default=str,
                                        allow_nan=False) + "\n")
        os.replace(temporary, self.summary_json)


class TimeBudget(keras.callbacks.Callback):
    """Stops training once a wall-time budget is spent (checked every batch).

    Args:
        minutes: The budget.
    """

    def __init__(self, minutes: float):
        super().__init__()
        self.seconds = minutes * 60.0
        self.exhausted = False
        self._start = 0.0

    def on_train_begin(self, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if time.perf_counter() - self._start >= self.seconds:
            self.exhausted = True
            self.model.stop_training = True


class CosineOverTime(keras.callbacks.Callback):
    """Cosine learning-rate decay over a wall-time budget rather than a step count.

    A run limited by time cannot know its step count in advance; this decays
    the rate from its initial value to 0 exactly as the budget runs out.

    Args:
        initial: The initial learning rate.
        minutes: The budget.
    """

    def __init__(self, initial: float, minutes: float):
        super().__init__()
        self.initial = initial
        self.seconds = minutes * 60.0
        self._start = 0.0

    def on_train_begin(self, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_begin(self, batch, logs=None):
        progress = min(1.0, (time.perf_counter() - self._start) / self.seconds)
        self.model.optimizer.learning_rate = self.initial * 0.5 * (1.0 + math.cos(math.pi * progress))


class ThroughputMeter(keras.callbacks.Callback):
    """Steady-state training speed: training steps and the wall time in them.

    The run's first step is left out (it traces the graph), and so is the
    time spent in validation.

    Attributes:
        steps: All training steps run.
        timed_steps: Steps after the first.
        timed_seconds: Wall time of the timed steps.
    """

    def __init__(self):
        super().__init__()
        self.steps = 0
        self.timed_steps = 0
        self.timed_seconds = 0.0
        self._span_start: Optional[float] = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.steps:
            self._span_start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps == 1:
            self._span_start = time.perf_counter()  # the clock starts after tracing
        else:
            self.timed_steps += 1

    def _close_span(self):
        if self._span_start is not None:
            self.timed_seconds += time.perf_counter() - self._span_start
            self._span_start = None

    def on_test_begin(self, logs=None):
        self._close_span()

    def on_epoch_end(self, epoch, logs=None):
        self._close_span()

    def on_train_end(self, logs=None):
        self._close_span()


@dataclasses.dataclass
class TrainingResult:
    """What `train` measured.

    Attributes:
        history: Per-epoch metrics of this invocation (`History.history`).
        epochs_run: Epochs completed in this invocation.
        steps: Training steps run in this invocation.
        timed_steps: Steps counted for throughput (all but the first).
        train_seconds: Wall time of the timed steps (validation excluded).
        wall_seconds: Wall time of the whole `fit`.
        best_val_loss: Lowest validation loss of the run, resumed epochs included.
        stopped_early: EarlyStopping ended the run.
        stopped_by_time_budget: The time budget ended the run.
        resumed: The run resumed from BackupAndRestore state.
        gradient_health: The monitor's summary (norms, clipping, findings);
            empty when the monitor is off.
    """

    history: dict[str, list[float]]
    epochs_run: int
    steps: int
    timed_steps: int
    train_seconds: float
    wall_seconds: float
    best_val_loss: float
    stopped_early: bool
    stopped_by_time_budget: bool
    resumed: bool
    gradient_health: dict[str, Any]


def standard_callbacks(run: RunDirectory, config: TrainingConfig,
                       optimizer_config: OptimizerConfig) -> list[keras.callbacks.Callback]:
    """The Keras callbacks every run uses.

    Args:
        run: Where logs and checkpoints go.
        config: Patience for early stopping.
        optimizer_config: Selects ReduceLROnPlateau for the `"plateau"` schedule.

    Returns:
        BackupAndRestore (not with several workers), ModelCheckpoint (best validation loss, carried over
        when resuming), CSVLogger, TensorBoard, TerminateOnNaN, and where
        configured EarlyStopping and ReduceLROnPlateau.
    """
    # Resuming needs every worker to read the backup: not with several workers (model/distribute.py).
    # double_checkpoint: a kill while the backup is being written leaves it truncated; Keras then
    # resumes from the previous epoch's copy instead of failing to open it.
    backup = ([keras.callbacks.BackupAndRestore(str(run.backup), double_checkpoint=True)]
              if config.strategy != "multiworker" else [])
    callbacks = backup + [
        keras.callbacks.ModelCheckpoint(
            str(run.best_weights), monitor="val_loss", save_best_only=True,
            save_weights_only=True, initial_value_threshold=run.best_val_loss_so_far()),
        keras.callbacks.CSVLogger(str(run.history_csv), append=True),
        keras.callbacks.TensorBoard(str(run.tensorboard), profile_batch=0),
        keras.callbacks.TerminateOnNaN(),
    ]
    if config.patience > 0:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience))
    if optimizer_config.lr_schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=0.5, patience=max(1, config.patience // 2)))
    if optimizer_config.lr_schedule == "cosine" and config.time_budget_minutes:
        callbacks.append(CosineOverTime(optimizer_config.learning_rate, config.time_budget_minutes))
    return callbacks


def make_run_optimizer(optimizer_config: OptimizerConfig, config: TrainingConfig,
                       steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """The optimiser of a run: a cosine schedule spans the run's steps, or its time budget.

    Args:
        optimizer_config: Learning rate, schedule and clipping.
        config: Epochs and time budget.
        steps_per_epoch: Training steps per epoch.

    Returns:
        From `model.builders.make_optimizer`.
    """
    total_steps = None if config.time_budget_minutes else steps_per_epoch * config.epochs
    return builders.make_optimizer(optimizer_config, total_steps=total_steps)


def train(model: keras.Model, train_data: tf.data.Dataset, val_data: tf.data.Dataset,
          run: RunDirectory, config: TrainingConfig, optimizer_config: OptimizerConfig,
          extra_callbacks: Iterable[keras.callbacks.Callback] = (),
          probe: Optional[tuple[Any, Any]] = None, steps_per_epoch: Optional[int] = None) -> TrainingResult:
    """Fit a compiled model with the standard callbacks, then load its best weights.

    Args:
        model: A compiled Keras model (a `MonitoredModel` for gradient monitoring).
        train_data: Batches of (inputs, targets); reshuffled every epoch.
        val_data: Validation batches.
        run: The run directory (resumes if it holds backup state).
        config: Epochs, steps per epoch, patience, time budget and the
            gradient monitor's settings.
        optimizer_config: For the plateau schedule.
        extra_callbacks: More callbacks (e.g. a test's fault injector).
        probe: `(inputs, last_step_loss)` for the monitor's through-time
            check at each epoch end (see `GradientMonitor`).
        steps_per_epoch: Batches per epoch when `train_data` repeats
            endlessly; None: `config.steps_per_epoch`.

    Returns:
        A `TrainingResult`; the model holds the weights of the best epoch.

    Raises:
        TrainingDiverged: The loss or the gradients became NaN or Inf. The
            run's summary.json records the diagnosis; nothing is exported.
    """
    # Not with several workers: the others cannot see the chief's file (see model/distribute.py).
    remember = config.strategy != "multiworker"
    if remember and run.trained_json.exists() and run.best_weights.exists():
        # Killed after training, before the export finished: only what follows training is redone.
        print(f"run {run.run_id} finished training before it was interrupted: its best weights are loaded")
        with model.distribute_strategy.scope():  # the checkpoint holds the optimizer's state too
            model.optimizer.build(model.trainable_variables)
        model.load_weights(str(run.best_weights))
        return TrainingResult(**{**json.loads(run.trained_json.read_text()), "resumed": True})
    resumed = run.is_resuming
    meter = ThroughputMeter()
    callbacks = standard_callbacks(run, config, optimizer_config) + [meter, *extra_callbacks]
    monitor = None
    if config.monitor.enabled and hasattr(model, "monitor_gradients"):
        monitor = GradientMonitor(config.monitor, run.path, probe=probe)
        # After BackupAndRestore (which restores the weights it reads first), before
        # CSVLogger and TensorBoard (which then log the epoch summaries it adds).
        after_backup = sum(isinstance(c, keras.callbacks.BackupAndRestore) for c in callbacks)
        callbacks.insert(after_backup, monitor)
    if hasattr(model, "monitor_gradients"):
        model.monitor_gradients = monitor is not None
    budget = None
    if config.time_budget_minutes is not None:
        budget = TimeBudget(config.time_budget_minutes)
        callbacks.append(budget)
    early_stopping = next((c for c in callbacks if isinstance(c, keras.callbacks.EarlyStopping)), None)

    start = time.perf_counter()
    history = model.fit(train_data, validation_data=val_data, epochs=config.epochs,
                        steps_per_epoch=steps_per_epoch or config.steps_per_epoch, callbacks=callbacks,
                        shuffle=False, verbose=1)  # shuffle=False: the dataset reshuffles itself
    wall_seconds = time.perf_counter() - start
    gradient_health = monitor.summary() if monitor else {}
    if monitor and monitor.diagnosis:
        run.write_summary({"run_id": run.run_id, "status": "diverged", "diagnosis": monitor.diagnosis,
                           "gradient_health": gradient_health})
        raise TrainingDiverged(monitor.diagnosis)

    if run.best_weights.exists():
        model.load_weights(str(run.best_weights))
    result = TrainingResult(
        history={k: [float(v) for v in vs] for k, vs in history.history.items()},
        epochs_run=len(history.history.get("loss", [])),
        steps=meter.steps,
        timed_steps=meter.timed_steps,
        train_seconds=meter.timed_seconds,
        wall_seconds=wall_seconds,
        best_val_loss=run.best_val_loss_so_far(),
        stopped_early=bool(early_stopping and early_stopping.stopped_epoch > 0),
        stopped_by_time_budget=bool(budget and budget.exhausted),
        resumed=resumed,
        gradient_health=gradient_health,
    )
    if remember:
        run.trained_json.write_text(json.dumps(finite_or_null(dataclasses.asdict(result))) + "\n")
    return result
