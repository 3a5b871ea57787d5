"""Dynamic batching: merged calls, answers split back by rows, faulty requests isolated."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from serving.batching import BatchingOptions, BatchScheduler


def run_concurrently(scheduler, run, requests):
    results = [None] * len(requests)
    barrier = threading.Barrier(len(requests))

    def call(i):
        barrier.wait()
        try:
            results[i] = scheduler.run("model", run, requests[i])
        except Exception as error:  # noqa: BLE001
            results[i] = error

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_concurrent_requests_share_calls_and_get_their_own_rows():
    calls = []

    def double(inputs):
        calls.append(len(inputs["x"]))
        return {"y": inputs["x"] * 2}

    scheduler = BatchScheduler(BatchingOptions(max_batch_size=16, batch_timeout_micros=200_000))
    requests = [{"x": np.arange(i, i + 2, dtype=np.float32)} for i in range(0, 16, 2)]
    results = run_concurrently(scheduler, double, requests)
    for request, result in zip(requests, results):
        np.testing.assert_array_equal(result["y"], request["x"] * 2)
    assert sum(calls) == 16 and max(calls) > 2  # requests were merged
    assert max(calls) <= 16


def test_a_faulty_request_fails_alone():
    def refuse_negative(inputs):
        if (inputs["x"] < 0).any():
            raise ValueError("x must be >= 0")
        return {"y": inputs["x"] + 1}

    scheduler = BatchScheduler(BatchingOptions(max_batch_size=8, batch_timeout_micros=200_000))
    requests = [{"x": np.array([1.0])}, {"x": np.array([-1.0])}, {"x": np.array([2.0])}]
    good1, bad, good2 = run_concurrently(scheduler, refuse_negative, requests)
    assert isinstance(bad, ValueError)
    assert good1["y"].tolist() == [2.0] and good2["y"].tolist() == [3.0]


@pytest.mark.parametrize("short, long, padded", [
    (np.array([[7.0, 1.0, 2.0]]), np.ones((1, 5)), [7.0, 1.0, 2.0, 7.0, 7.0]),
    (np.array([[b"a", b"b"]], dtype=object), np.array([[b"x", b"y", b"z"]], dtype=object), [b"a", b"b", b"a"]),
])
def test_variable_length_inputs_are_padded_with_their_first_element_when_asked(short, long, padded):
    seen = []

    def echo(inputs):
        seen.append(inputs["x"])
        return {"y": inputs["x"]}

    scheduler = BatchScheduler(BatchingOptions(max_batch_size=8, batch_timeout_micros=200_000,
                                               pad_variable_length_inputs=True))
    results = run_concurrently(scheduler, echo, [{"x": short}, {"x": long}])
    [merged] = seen  # one merged call; the shorter input padded as TensorFlow Serving pads (batching_util.cc)
    assert merged.shape == (2, long.shape[1])
    assert sorted(row.tolist() for row in merged) == sorted([padded, long[0].tolist()])  # in arrival order
    assert results[0]["y"].tolist() == [padded] and results[1]["y"].tolist() == long.tolist()


def test_an_empty_input_is_not_padded_and_runs_alone():
    seen = []

    def echo(inputs):
        seen.append(inputs["x"].shape)
        return {"y": inputs["x"]}

    scheduler = BatchScheduler(BatchingOptions(max_batch_size=8, batch_timeout_micros=200_000,
                                               pad_variable_length_inputs=True))
    results = run_concurrently(scheduler, echo, [{"x": np.zeros((1, 0))}, {"x": np.ones((1, 4))}])
    assert [r["y"].shape for r in results] == [(1, 0), (1, 4)]
    assert sorted(seen) == [(1, 0), (1, 4)]  # the merge refused ("empty tensor"): each request ran alone


def test_options_from_the_batching_config():
    from pathlib import Path

    from serving.config import read_batching_parameters

    options = BatchingOptions.from_proto(read_batching_parameters(
        Path(__file__).resolve().parents[1] / "serving" / "batching.config"))
    assert options == BatchingOptions(max_batch_size=32, batch_timeout_micros=0, max_enqueued_batches=100,
                                      num_batch_threads=2, pad_variable_length_inputs=True)


@pytest.mark.parametrize("value, expected", [("true", True), ("false", False)])
def test_server_accepts_tensorflow_serving_style_boolean_flags(value, expected):
    from serving.server import build_parser

    assert build_parser().parse_args([f"--enable_batching={value}"]).enable_batching is expected
    assert build_parser().parse_args(["--enable_batching"]).enable_batching is True


def test_server_takes_tensorflow_serving_thread_flags():
    from serving.server import build_parser

    args = build_parser().parse_args(["--tensorflow_intra_op_parallelism", "2", "--tensorflow_inter_op_parallelism", "1"])
    assert (args.tensorflow_intra_op_parallelism, args.tensorflow_inter_op_parallelism) == (2, 1)


def test_an_idle_queue_and_its_thread_go_away_and_come_back_when_needed():
    scheduler = BatchScheduler(BatchingOptions(batch_timeout_micros=1000), idle_seconds=0.2)
    add_one = lambda inputs: {"y": inputs["x"] + 1}  # noqa: E731
    before = threading.active_count()
    for version in range(5):  # as hot-loading brings new versions: one queue each
        assert scheduler.run(("model", version, "serving_default"), add_one, {"x": np.array([1.0])})["y"][0] == 2.0
    assert scheduler.queue_count == 5
    deadline = threading.Event()
    for _ in range(50):
        if scheduler.queue_count == 0 and threading.active_count() <= before:
            break
        deadline.wait(0.1)
    assert scheduler.queue_count == 0 and threading.active_count() <= before
    assert scheduler.run(("model", 9, "serving_default"), add_one, {"x": np.array([5.0])})["y"][0] == 6.0


def test_with_timeout_0_a_lone_request_runs_at_once_on_its_own_thread():
    threads = []

    def record(inputs):
        threads.append(threading.get_ident())
        return {"y": inputs["x"]}

    scheduler = BatchScheduler(BatchingOptions(batch_timeout_micros=0))
    before = threading.active_count()
    for _ in range(3):
        assert scheduler.run("model", record, {"x": np.array([1.0])})["y"].tolist() == [1.0]
    assert threads == [threading.get_ident()] * 3 and threading.active_count() == before  # no hand-off, no pool


def test_requests_that_arrive_while_a_batch_runs_form_the_next_batch():
    """Timeout 0 never waits, yet batches form: from the requests queued behind the running one."""
    started, release, calls = threading.Event(), threading.Event(), []

    def slow(inputs):
        calls.append(len(inputs["x"]))
        started.set()
        release.wait(10)
        return {"y": inputs["x"] + 1}

    scheduler = BatchScheduler(BatchingOptions(max_batch_size=8, batch_timeout_micros=0, num_batch_threads=1))
    first = threading.Thread(target=scheduler.run, args=("model", slow, {"x": np.array([0.0])}))
    first.start()
    started.wait(10)  # the only slot is busy: the next five queue up
    followers = [threading.Thread(target=scheduler.run, args=("model", slow, {"x": np.array([float(i)])}))
                 for i in range(1, 6)]
    for thread in followers:
        thread.start()
    deadline = threading.Event()
    while sum(len(q.tasks) for q in scheduler._queues.values()) < 5:
        deadline.wait(0.01)
    release.set()
    for thread in [first, *followers]:
        thread.join(10)
    assert calls == [1, 5]


@pytest.mark.parametrize("slots", [1, 2])
def test_num_batch_threads_bounds_the_batches_running_at_once(slots):
    lock, running, most = threading.Lock(), [0], [0]

    def slow(inputs):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        threading.Event().wait(0.02)
        with lock:
            running[0] -= 1
        return {"y": inputs["x"]}

    scheduler = BatchScheduler(BatchingOptions(max_batch_size=1, batch_timeout_micros=0, num_batch_threads=slots))
    results = run_concurrently(scheduler, slow, [{"x": np.array([float(i)])} for i in range(12)])
    assert [r["y"].tolist() for r in results] == [[float(i)] for i in range(12)]
    assert most[0] == slots and scheduler._running == 0
