"""The learning-rate schedule of a run, in one place: `--lr-schedule` -> a rate and its callbacks.

    constant     the initial rate throughout
    cosine       decays to 0 over the run's steps (`CosineDecay`), or over its
                 wall-time budget when the run has one (`CosineOverTime`)
    exponential  halves every `lr_half_life_steps` steps (`ExponentialDecay`)
    plateau      halves when the validation loss stalls (`ReduceLROnPlateau`)

`rate` is what the optimiser is built with (`model.builders.make_optimizer`);
`callbacks` are what `Model.fit` needs besides.
"""

from __future__ import annotations

import math
import time
from typing import Optional, Union

import keras

from model.config import OptimizerConfig, TrainingConfig


def schedule_steps(config: TrainingConfig, steps_per_epoch: int) -> Optional[int]:
    """The steps a cosine schedule spans: the run's, or None when a time budget ends the run instead."""
    return None if config.time_budget_minutes else steps_per_epoch * config.epochs


def rate(config: OptimizerConfig, total_steps: Optional[int] = None
         ) -> Union[float, keras.optimizers.schedules.LearningRateSchedule]:
    """The optimiser's learning rate: a number, or a schedule of the step.

    Args:
        config: The initial rate, the schedule and its half-life.
        total_steps: Steps of the run; the cosine schedule decays to zero over
            them. None: a time-budgeted run, whose `callbacks` decay the rate.

    Returns:
        `"plateau"`, and `"cosine"` without `total_steps`, keep a constant rate
        here: their callbacks change it while training.
    """
    if config.lr_schedule == "cosine" and total_steps:
        return keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=max(1, total_steps))
    if config.lr_schedule == "exponential":
        return keras.optimizers.schedules.ExponentialDecay(config.learning_rate, decay_steps=config.lr_half_life_steps,
                                                           decay_rate=0.5)
    return config.learning_rate


def callbacks(config: OptimizerConfig, training: TrainingConfig) -> list[keras.callbacks.Callback]:
    """The callbacks that drive the schedules a step count cannot: plateau, and cosine over a time budget."""
    if config.lr_schedule == "plateau":
        return [keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                                  patience=max(1, training.patience // 2))]
    if config.lr_schedule == "cosine" and training.time_budget_minutes:
        return [CosineOverTime(config.learning_rate, training.time_budget_minutes)]
    return []


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


