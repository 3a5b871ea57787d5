"""Dynamic batching: concurrent requests merged into one model call.

As TensorFlow Serving's `--enable_batching` does with `batching.config`: the
first request of a batch waits at most `batch_timeout_micros` for others to
the same model version and signature; up to `max_batch_size` rows are then
concatenated along the batch dimension, run in one call, and the outputs
split back by rows. With `pad_variable_length_inputs`, inputs whose other
dimensions differ are padded (zeros, empty strings) to a common shape.

A merged call that fails (one request holding, say, a temperature of 0) is
retried request by request, so only the faulty request gets the error.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Hashable

import numpy as np


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """The fields of BatchingParameters this scheduler uses."""

    max_batch_size: int = 32
    batch_timeout_micros: int = 2000
    max_enqueued_batches: int = 100
    pad_variable_length_inputs: bool = False

    @classmethod
    def from_proto(cls, proto) -> "BatchingOptions":
        defaults = cls()
        value = lambda field, default: getattr(proto, field).value if proto.HasField(field) else default  # noqa: E731
        return cls(max_batch_size=value("max_batch_size", defaults.max_batch_size),
                   batch_timeout_micros=value("batch_timeout_micros", defaults.batch_timeout_micros),
                   max_enqueued_batches=value("max_enqueued_batches", defaults.max_enqueued_batches),
                   pad_variable_length_inputs=proto.pad_variable_length_inputs)


class QueueFull(RuntimeError):
    """Too many requests waiting: the caller should answer UNAVAILABLE."""


Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclasses.dataclass
class _Task:
    run: Runner  # the same for every task of a queue; held by the task, so unloaded models are freed
    inputs: dict[str, np.ndarray]
    rows: int
    future: Future


def _pad_to(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if array.shape[1:] == shape:
        return array
    pad = [(0, 0)] + [(0, target - size) for size, target in zip(array.shape[1:], shape)]
    return np.pad(array, pad, constant_values=b"" if array.dtype == object else 0)


class _Queue:
    """The requests waiting for one (model version, signature), and the thread that serves them.

    A queue idle for `idle_seconds` asks `retire` to remove it, and its thread
    ends: versions come and go with hot-loading, and their queues with them.
    """

    def __init__(self, options: BatchingOptions, retire: Callable[["_Queue"], bool], idle_seconds: float):
        self.options = options
        self.tasks: "queue.Queue[_Task]" = queue.Queue(maxsize=options.max_batch_size * options.max_enqueued_batches)
        self._retire, self._idle_seconds = retire, idle_seconds
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _collect(self) -> list[_Task] | None:
        try:
            batch = [self.tasks.get(timeout=self._idle_seconds)]
        except queue.Empty:
            return None if self._retire(self) else []
        rows = batch[0].rows
        deadline = time.perf_counter() + self.options.batch_timeout_micros / 1e6
        while rows < self.options.max_batch_size:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                task = self.tasks.get(timeout=remaining)
            except queue.Empty:
                break
            if rows + task.rows > self.options.max_batch_size:
                self._serve_batch([task])  # too big to join: it runs on its own
                continue
            batch.append(task)
            rows += task.rows
        return batch

    def _merge(self, batch: list[_Task]) -> dict[str, np.ndarray]:
        merged = {}
        for name in batch[0].inputs:
            arrays = [task.inputs[name] for task in batch]
            if self.options.pad_variable_length_inputs:
                shape = tuple(np.max([a.shape[1:] for a in arrays], axis=0)) if arrays[0].ndim > 1 else ()
                arrays = [_pad_to(a, shape) for a in arrays]
            merged[name] = np.concatenate(arrays, axis=0)
        return merged

    def _serve_batch(self, batch: list[_Task]) -> None:
        try:
            run = batch[0].run
            if len(batch) == 1:
                batch[0].future.set_result(run(batch[0].inputs))
                return
            outputs = run(self._merge(batch))
            answers, start = [], 0
            for task in batch:
                answers.append({key: value[start:start + task.rows] for key, value in outputs.items()})
                start += task.rows
        except Exception as error:  # noqa: BLE001
            if len(batch) == 1:
                batch[0].future.set_exception(error)
                return
            for task in batch:  # find the faulty request: the others still get answers
                self._serve_batch([task])
            return
        for task, answer in zip(batch, answers):
            task.future.set_result(answer)

    def _serve(self) -> None:
        while True:  # whatever happens to one batch, the queue keeps being served
            batch = self._collect()
            if batch is None:  # retired: nothing waits and no request can reach this queue any more
                return
            if not batch:
                continue
            try:
                self._serve_batch(batch)
            except Exception as error:  # noqa: BLE001
                for task in batch:
                    if not task.future.done():
                        task.future.set_exception(error)


class BatchScheduler:
    """Routes each request to the queue of its (model version, signature).

    Args:
        options: Batch size, timeout, queue bound, padding.
        idle_seconds: A queue (and its thread) idle this long is removed.
    """

    def __init__(self, options: BatchingOptions, idle_seconds: float = 60.0):
        self.options = options
        self.idle_seconds = idle_seconds
        self._queues: dict[Hashable, _Queue] = {}
        self._lock = threading.Lock()

    def _retire(self, batch_queue: _Queue) -> bool:
        """Remove an idle queue, unless a request slipped in; True when removed."""
        with self._lock:
            if not batch_queue.tasks.empty():
                return False
            for key in [k for k, q in self._queues.items() if q is batch_queue]:
                del self._queues[key]
            return True

    @property
    def queue_count(self) -> int:
        with self._lock:
            return len(self._queues)

    def run(self, key: Hashable, run: Runner, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        """Run `run(inputs)` as part of a batch; blocks until this request's rows are answered.

        Raises:
            QueueFull: When `max_enqueued_batches` batches are already waiting.
            Whatever `run` raised for this request.
        """
        rows = len(next(iter(inputs.values()))) if inputs else 0
        task = _Task(run, inputs, rows, Future())
        with self._lock:  # with the lock, a queue is never retired between lookup and put
            if key not in self._queues:
                self._queues[key] = _Queue(self.options, self._retire, self.idle_seconds)
            try:
                self._queues[key].tasks.put_nowait(task)
            except queue.Full:
                raise QueueFull("too many requests waiting for this model; retry later") from None
        return task.future.result()
