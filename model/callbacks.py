"""Small Keras callbacks of every training run: a wall-time budget and a throughput meter.

The learning-rate schedule's callbacks live in `model/learning_rate.py`, the
gradient monitor's in `model/gradient_callbacks.py`.
"""

from __future__ import annotations

import time
from typing import Optional

import keras


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
