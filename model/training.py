"""One training job for every task: `run_job` builds, fits, evaluates and exports.

A pipeline describes its task (a `Task`: how to build and compile the model,
the datasets, the probe of the gradient monitor, what to evaluate, how to
export, what to test after the export); `run_job` does the rest, the same way
for text and for prices, as nanoGPT's one `train.py` serves every dataset:

    seed -> run directory -> build (in the strategy's scope) -> datasets ->
    optimiser and compile -> `train` (Model.fit with the standard callbacks,
    resume, best weights) -> evaluate -> export -> test -> summary.json

Runs live in `runs/<run-id>/` (`model/run_directory.py`); the callbacks are
Keras's own, `model/callbacks.py`'s, `model/learning_rate.py`'s and the
gradient monitor's (`model/gradient_callbacks.py`, on by default).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Protocol

import keras
import tensorflow as tf

from model import builders, distribute, learning_rate
from model.callbacks import ThroughputMeter, TimeBudget
from model.config import ModelConfig, OptimizerConfig, TrainingConfig, TrainingDiverged
from model.gradient_callbacks import gradient_callbacks
from model.run_directory import RunDirectory, finite_or_null


@dataclasses.dataclass
class Datasets:
    """What a task trains and validates on.

    Attributes:
        train: Batches of (inputs, targets), repeating endlessly (reshuffled
            each pass): Keras then keeps one iterator for the whole run.
            Ending each epoch by running out of data makes it rebuild the
            iterator, and that stalled each epoch by 30-40 s for a GRU-256x2.
        validation: Validation batches (one pass).
        steps_per_pass: Training batches in one pass: an epoch, unless
            `--steps-per-epoch` caps it.
        batch_size: The training batch size actually used.
        steps_per_example: Time steps each example feeds the network (the
            window length): tokens per second count these.
    """

    train: tf.data.Dataset
    validation: tf.data.Dataset
    steps_per_pass: int
    batch_size: int
    steps_per_example: int


class Task(Protocol):
    """What `run_job` needs from a pipeline. Everything else is the same for every task.

    Attributes:
        name: Suffix of generated run ids (the model directory's name).
    """

    name: str

    def build(self, model_config: ModelConfig) -> keras.Model:
        """The uncompiled model (called in the strategy's scope)."""

    def datasets(self, model: keras.Model, config: TrainingConfig) -> Datasets:
        """The training and validation data (after `build`: a model may hold data statistics)."""

    def compile(self, model: keras.Model, optimizer: keras.optimizers.Optimizer) -> None:
        """Compile with the task's loss (called in the strategy's scope)."""

    def probe(self, model: keras.Model, validation: tf.data.Dataset) -> tuple[Any, Any]:
        """`(inputs, last_step_loss)` for the gradient monitor's through-time check."""

    def evaluate(self, model: keras.Model, validation: tf.data.Dataset) -> dict[str, Any]:
        """Figures on the validation span, before the export (which may record them)."""

    def export(self, model: keras.Model, output: Path, run_id: str, evaluation: dict[str, Any]) -> Path:
        """Export the trained model under `output`; returns the version directory."""

    def test(self, model: keras.Model, run: RunDirectory, evaluation: dict[str, Any]) -> dict[str, Any]:
        """After the export: the task's results for summary.json (it may train the model further)."""

    def describe(self) -> dict[str, Any]:
        """The task's settings (`{"config": {...}}`) and data facts for summary.json."""


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

    def summary(self, steps_per_example: int, batch_size: int) -> dict[str, Any]:
        """The keys every run's summary.json has from training.

        Args:
            steps_per_example: Time steps per example (for tokens per second).
            batch_size: Examples per training step.
        """
        # Steady state: the first step (graph tracing) and validation are not counted.
        tokens_per_second = (self.timed_steps * batch_size * steps_per_example / self.train_seconds
                             if self.timed_steps and self.train_seconds else 0.0)
        return {"epochs_run": self.epochs_run, "steps": self.steps, "timed_steps": self.timed_steps,
                "train_seconds": self.train_seconds, "wall_seconds": self.wall_seconds,
                "tokens_per_second": tokens_per_second, "train_batch_size": batch_size,
                "best_val_loss": self.best_val_loss, "stopped_early": self.stopped_early,
                "stopped_by_time_budget": self.stopped_by_time_budget, "resumed": self.resumed,
                "gradient_health": self.gradient_health}


def standard_callbacks(run: RunDirectory, config: TrainingConfig,
                       optimizer_config: OptimizerConfig) -> list[keras.callbacks.Callback]:
    """The Keras callbacks every run uses.

    Args:
        run: Where logs and checkpoints go.
        config: Patience for early stopping.
        optimizer_config: The learning-rate schedule's callbacks (`model.learning_rate`).

    Returns:
        BackupAndRestore (not with several workers), ModelCheckpoint (best validation loss, carried over
        when resuming), CSVLogger, TensorBoard, TerminateOnNaN, EarlyStopping where configured, and the
        schedule's callbacks.
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
    return callbacks + learning_rate.callbacks(optimizer_config, config)


def train(model: keras.Model, train_data: tf.data.Dataset, val_data: tf.data.Dataset,
          run: RunDirectory, config: TrainingConfig, optimizer_config: OptimizerConfig,
          extra_callbacks: Iterable[keras.callbacks.Callback] = (),
          probe: Optional[tuple[Any, Any]] = None, steps_per_epoch: Optional[int] = None,
          setting_names: Optional[Mapping[str, str]] = None) -> TrainingResult:
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
            check at each epoch end (see `GradientRecorder`).
        steps_per_epoch: Batches per epoch when `train_data` repeats
            endlessly; None: `config.steps_per_epoch`.
        setting_names: How the gradient monitor's remedies name settings
            (the command line's flags; `model.config.name_settings`).

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
    health = None
    if config.monitor.enabled and hasattr(model, "monitor_gradients"):
        recorder, health = gradient_callbacks(config.monitor, run.path, probe=probe, setting_names=setting_names)
        # After BackupAndRestore (which restores the weights they read first), before
        # CSVLogger and TensorBoard (which then log the epoch summaries the recorder adds).
        after_backup = sum(isinstance(c, keras.callbacks.BackupAndRestore) for c in callbacks)
        callbacks[after_backup:after_backup] = [recorder, health]
    if hasattr(model, "monitor_gradients"):
        model.monitor_gradients = health is not None
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
    gradient_health = health.summary() if health else {}
    if health and health.diagnosis:
        run.write_summary({"run_id": run.run_id, "status": "diverged", "diagnosis": health.diagnosis,
                           "gradient_health": gradient_health})
        raise TrainingDiverged(health.diagnosis)

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


def run_job(task: Task, model_config: ModelConfig, optimizer_config: OptimizerConfig,
            training_config: TrainingConfig, output: str | Path,
            extra_callbacks: Iterable[keras.callbacks.Callback] = (),
            setting_names: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
    """Train, evaluate, export and test one task; write summary.json.

    Args:
        task: What to learn from which data (see `Task`).
        model_config: Cell, width, depth, dropout, embedding width.
        optimizer_config: Learning rate, schedule and clipping.
        training_config: Epochs, batch size, run directory, strategy, monitor...
        output: `saved_models/<name>`; each run adds the next version.
        extra_callbacks: More Keras callbacks for `fit` (e.g. a test's fault injector).
        setting_names: How messages name settings (the command line passes its flags).

    Returns:
        The summary written to `runs/<run-id>/summary.json`.

    Raises:
        TrainingDiverged: The loss or the gradients became NaN or Inf.
    """
    with distribute.placement(training_config.strategy) as place:
        keras.utils.set_random_seed(training_config.seed)
        run = RunDirectory.open(place.runs_dir(training_config.runs_dir), training_config.run_id, task.name)
        with place.strategy.scope():
            model = task.build(model_config)
        data = task.datasets(model, training_config)
        train_data, validation = distribute.shard_by_data(data.train), distribute.shard_by_data(data.validation)
        steps_per_epoch = training_config.steps_per_epoch or data.steps_per_pass
        with place.strategy.scope():
            optimizer = builders.make_optimizer(
                optimizer_config, learning_rate.schedule_steps(training_config, steps_per_epoch))
            task.compile(model, optimizer)
        probe = task.probe(model, validation)
        result = train(model, train_data, validation, run, training_config, optimizer_config, extra_callbacks,
                       probe, steps_per_epoch, setting_names)
        evaluation = task.evaluate(model, validation)
        version_dir = task.export(model, place.output(output), run.run_id, evaluation)
        tested = task.test(model, run, evaluation)

        described = task.describe()
        summary = {
            "run_id": run.run_id,
            "run_dir": str(run.path),
            "config": {"model": dataclasses.asdict(model_config), "optimizer": dataclasses.asdict(optimizer_config),
                       "training": dataclasses.asdict(training_config), **described.pop("config", {})},
            "parameters": int(model.count_params()),
            "steps_per_epoch": steps_per_epoch,
            **result.summary(data.steps_per_example, data.batch_size),
            **described,
            **tested,
            "export_path": str(version_dir),
            "worker": distribute.worker_name(place.strategy),
            "chief": place.chief,
        }
        run.write_summary(summary)
        return summary
