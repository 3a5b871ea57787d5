"""Dynamic batching: concurrent requests merged into one model call.

As TensorFlow Serving's `--enable_batching` does with `batching.config`
(`shared_batch_scheduler.h`): requests to the same model version and signature
wait in one queue; a batch is *schedulable* when it holds `max_batch_size` rows
or its oldest request has waited `batch_timeout_micros` since it was enqueued;
at most `num_batch_threads` batches run at once. Up to `max_batch_size` rows
are concatenated along the batch dimension, run in one call, and the outputs
split back by rows. With `pad_variable_length_inputs`, inputs whose other
dimensions differ are padded to a common shape with each tensor's first element, as
TensorFlow Serving pads them.

With a timeout of 0 (TensorFlow Serving's advice on CPU), a request that finds
a free slot runs at once, and batches form from the requests that arrive while
the running ones execute: a lone client never waits, many clients get large
batches.

There is no thread pool of its own: a request's own thread (a gRPC worker)
runs the batch it leads, as TensorFlow Serving's BatchingSession blocks the
calling thread. Whoever finds a free slot leads; a leader whose own request is
answered hands the slot to the oldest waiting request, so a follower is woken
once, either with its answer or to lead. A lone request therefore costs no
thread hand-off at all.

A merged call that fails (one request holding, say, a temperature of 0) is
retried request by request, so only the faulty request gets the error.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import threading
import time
from typing import Any, Callable, Hashable, Optional

import numpy as np


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """The fields of BatchingParameters this scheduler uses, with TensorFlow Serving's defaults where it has them.

    Attributes:
        max_batch_size: Rows of one merged call.
        batch_timeout_micros: How long the oldest request of a batch that is not
            full may wait, counted from when it was enqueued (0: never wait).
        max_enqueued_batches: Batches' worth of requests a queue holds before
            refusing more (UNAVAILABLE).
        num_batch_threads: Batches running at once, over every queue (default: the cores).
        pad_variable_length_inputs: Pad inputs of unequal shapes to a common one.
    """

    max_batch_size: int = 32
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 100
    num_batch_threads: int = os.cpu_count() or 1
    pad_variable_length_inputs: bool = False

    @classmethod
    def from_proto(cls, proto) -> "BatchingOptions":
        defaults = cls()
        value = lambda field: getattr(proto, field).value if proto.HasField(field) else getattr(defaults, field)  # noqa: E731
        return cls(max_batch_size=value("max_batch_size"), batch_timeout_micros=value("batch_timeout_micros"),
                   max_enqueued_batches=value("max_enqueued_batches"), num_batch_threads=value("num_batch_threads"),
                   pad_variable_length_inputs=proto.pad_variable_length_inputs)


class QueueFull(RuntimeError):
    """Too many requests waiting: the caller should answer UNAVAILABLE."""


Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclasses.dataclass(eq=False)
class _Task:
    """One request: its inputs, and how its thread learns the outcome or that it must lead."""

    run: Runner  # the same for every task of a queue; held by the task, so unloaded models are freed
    inputs: dict[str, np.ndarray]
    rows: int
    enqueued: float
    wake: threading.Event = dataclasses.field(default_factory=threading.Event)
    leads: bool = False
    done: bool = False
    result: Any = None
    error: Optional[BaseException] = None

    def finish(self, result: Any = None, error: Optional[BaseException] = None) -> None:
        self.result, self.error, self.done = result, error, True
        self.wake.set()


@dataclasses.dataclass(eq=False)
class _Queue:
    """The requests waiting for one (model version, signature)."""

    tasks: collections.deque = dataclasses.field(default_factory=collections.deque)
    rows: int = 0
    last_used: float = 0.0


def _pad_to(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """`array` padded at the end of each dimension but the first to `shape`, with its own first element.

    As TensorFlow Serving pads (`batching_util.cc`: "First element of a tensor
    is used as padding value"), which also refuses to pad an empty tensor.
    """
    if array.shape[1:] == shape:
        return array
    if array.size == 0:
        raise ValueError("Got empty tensor in batch of non-empty tensors.")
    pad = [(0, 0)] + [(0, target - size) for size, target in zip(array.shape[1:], shape)]
    return np.pad(array, pad, constant_values=array.flat[0])


class BatchScheduler:
    """Routes each request to the queue of its (model version, signature) and runs the batches.

    Args:
        options: Batch size, timeout, queue bound, concurrent batches, padding.
        idle_seconds: A queue empty this long is forgotten (versions come and go with hot-loading).
    """

    def __init__(self, options: BatchingOptions, idle_seconds: float = 60.0):
        self.options = options
        self.idle_seconds = idle_seconds
        self._queues: dict[Hashable, _Queue] = {}
        self._next_sweep = 0.0  # idle queues are looked for at most every idle_seconds / 10, not per request
        self._running = 0  # batch slots taken: leaders at work
        self._lock = threading.Lock()
        self._arrivals = threading.Condition(self._lock)  # a leader waiting out a timeout hears new requests

    @property
    def queue_count(self) -> int:
        with self._lock:
            self._forget_idle_queues(time.perf_counter())
            return len(self._queues)

    def run(self, key: Hashable, run: Runner, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        """Run `run(inputs)` as part of a batch; blocks until this request's rows are answered.

        Raises:
            QueueFull: When `max_enqueued_batches` batches' worth of requests are already waiting.
            Whatever `run` raised for this request.
        """
        rows = len(next(iter(inputs.values()))) if inputs else 0
        task = _Task(run, inputs, rows, time.perf_counter())
        with self._lock:
            self._enqueue(key, task)
            if self._running < self.options.num_batch_threads:
                self._running += 1
                task.leads = True
        while True:
            if task.leads:
                task.leads = False
                self._lead(task)
            # A slot handed over while this request was still queued (always before its answer) is seen
            # here at the latest: it is passed on before returning, never lost.
            if task.done and not task.leads:
                break
            if not task.done:
                task.wake.wait()
                task.wake.clear()
        if task.error is not None:
            raise task.error
        return task.result

    # -- queues (called with the lock held) -------------------------------------------------
    def _enqueue(self, key: Hashable, task: _Task) -> None:
        if task.enqueued >= self._next_sweep:
            self._forget_idle_queues(task.enqueued)
        batch_queue = self._queues.setdefault(key, _Queue())
        if len(batch_queue.tasks) >= self.options.max_batch_size * self.options.max_enqueued_batches:
            raise QueueFull("too many requests waiting for this model; retry later")
        batch_queue.tasks.append(task)
        batch_queue.rows += task.rows
        batch_queue.last_used = task.enqueued
        self._arrivals.notify()

    def _forget_idle_queues(self, now: float) -> None:
        self._next_sweep = now + self.idle_seconds / 10
        for key in [k for k, q in self._queues.items() if not q.tasks and now - q.last_used >= self.idle_seconds]:
            del self._queues[key]

    def _take_batch(self, now: float) -> tuple[Optional[list[_Task]], Optional[float]]:
        """The schedulable batch whose oldest request waited longest, or when the next one will be."""
        timeout = self.options.batch_timeout_micros / 1e6
        ready, next_due = None, None
        for batch_queue in self._queues.values():
            if not batch_queue.tasks:
                continue
            due = batch_queue.tasks[0].enqueued + timeout
            if batch_queue.rows >= self.options.max_batch_size or now >= due:
                if ready is None or batch_queue.tasks[0].enqueued < ready.tasks[0].enqueued:
                    ready = batch_queue
            else:
                next_due = due if next_due is None else min(next_due, due)
        if ready is None:
            return None, next_due
        batch, rows = [], 0
        while ready.tasks and (not batch or rows + ready.tasks[0].rows <= self.options.max_batch_size):
            task = ready.tasks.popleft()  # a request too big to join waits for the next batch, or runs alone
            batch.append(task)
            rows += task.rows
        ready.rows -= rows
        ready.last_used = now
        return batch, None

    def _oldest_waiting(self) -> Optional[_Task]:
        heads = [q.tasks[0] for q in self._queues.values() if q.tasks]
        return min(heads, key=lambda task: task.enqueued) if heads else None

    # -- leading ---------------------------------------------------------------------------
    def _lead(self, me: _Task) -> None:
        """Hold a batch slot: run schedulable batches until my request is answered, then pass the slot on."""
        while True:
            with self._lock:
                batch, next_due = None, None
                while batch is None:
                    # Answered (by this leader or another), or nothing left waiting but requests in
                    # another leader's batch: the slot goes to whoever waits longest.
                    if me.done or self._oldest_waiting() is None:
                        self._release_slot()
                        return
                    batch, next_due = self._take_batch(time.perf_counter())
                    if batch is None:  # not full, not due: wait for arrivals or the timeout
                        self._arrivals.wait(max(0.0, next_due - time.perf_counter()))
            self._serve_batch(batch)

    def _release_slot(self) -> None:
        """Pass the slot to the oldest waiting request (it wakes to lead), or free it."""
        successor = self._oldest_waiting()
        if successor is None or successor.leads:
            self._running -= 1
            return
        successor.leads = True
        successor.wake.set()

    # -- running a batch (without the lock) -------------------------------------------------
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
        run = batch[0].run
        if len(batch) == 1:
            try:
                batch[0].finish(result=run(batch[0].inputs))
            except Exception as error:  # noqa: BLE001 - the request's own error, raised in its thread
                batch[0].finish(error=error)
            return
        try:
            outputs = run(self._merge(batch))
        except Exception:  # noqa: BLE001 - find the faulty request: the others still get answers
            for task in batch:
                self._serve_batch([task])
            return
        start = 0
        for task in batch:
            task.finish(result={key: value[start:start + task.rows] for key, value in outputs.items()})
            start += task.rows
