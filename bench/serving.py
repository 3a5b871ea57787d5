"""Benchmarks of the embedded server over loopback gRPC, against in-process calls.

    python -m bench.serving          # about 4 minutes on 2 cores

- latency: p50/p99 of a next-token Predict (one 40-character prompt) through
  gRPC, against calling the same signature in-process (`tf.saved_model.load`,
  and the server's own Session call), in the same run;
- throughput: requests/s with 1, 8 and 32 concurrent clients, batching off and on,
  and where the CPU goes with 32 (server, clients, the whole machine);
- generation: 500 characters through gRPC against the same signature in-process;
- ceilings on this machine, same run: the round trip of a Predict servicer that
  does nothing (Python gRPC's floor), its requests/s with the same 32 clients,
  and the rows/s of the model alone in batches of 32.

The servers compared (batching off, batching on, batching on from two
processes on one port (`--server_processes 2`), an empty servicer in one
process and in two) run side by side for the whole run, and each figure is the mean of `ROUNDS` short
rounds in which they take turns, as the latency loop interleaves its calls:
on these machines speed drifts by tens of per cent within minutes, and a
figure taken minutes after its baseline measures the drift.

Every target is a ratio within the run (`targets`): 32 clients with batching
reach >= 80% of the ceiling 1/(1/empty req/s + 1/model rows/s); batching on
costs a lone client nothing (>= 0.95x batching off) and helps 8 clients
(>= 1x); the server adds at most 1.5x an empty servicer's round trip to the
in-process call. The two-process server is held against the same ceiling
with the empty servicer in two processes on one port (the stricter ceiling:
two processes of gRPC's Python outrun one), and against the one-process ceiling.

The model is an untrained LSTM-256 character model (speed does not depend on
the weights). Clients are threads of this process, each with its own channel
(gRPC Python shares one connection per server between them; against a server of
several processes each client opens its own, which the kernel hands to any of them).
Results: `bench/results/serving.json`; the README's table is printed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any, Callable

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from bench.text import RESULTS, environment
from model.builders import build_next_token_model
from model.config import ModelConfig
from model.text_export import export_text_model
from serving.demo import free_port
from serving.prediction_client import PredictionClient
from serving.saved_model_bundle import load_bundle

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "It was the best of times, it was the wor"  # 40 characters
VOCABULARY = [chr(c) for c in range(32, 127)]
# TensorFlow's threads as `make serve` sets them for the server (docs/serving.md): one intra-op
# thread (a one-row LSTM step is too small to split) and one inter-op thread (a batch's ops on one
# thread: with two, both burned half a core each per call, measured). This process's own calls (the
# in-process baselines, the model's rows/s) use the same, so the ratios compare like with like;
# batches of 32 run about as fast with TensorFlow's defaults (measured; the ceiling takes the faster).
INTRA_OP_THREADS, INTER_OP_THREADS = 1, 1
# Every throughput and ceiling figure is the mean of this many rounds of 2 s, the servers compared taking
# turns within each round: the machine's speed drifts by tens of per cent over minutes.
ROUNDS = 5
SERVER_THREADS = ("--tensorflow_intra_op_parallelism", str(INTRA_OP_THREADS),
                  "--tensorflow_inter_op_parallelism", str(INTER_OP_THREADS))


def export_model(workdir: Path) -> Path:
    model = build_next_token_model(len(VOCABULARY) + 2, ModelConfig(cell="lstm", units=256))
    return export_text_model(model, workdir / "saved_models" / "text", VOCABULARY, "char", [1] * len(VOCABULARY), 100)


Servers = dict[str, tuple[list[subprocess.Popen], str]]  # name -> its processes and its address


def start_server(config: Path, *flags: str) -> tuple[list[subprocess.Popen], str]:
    """`python -m serving.server` on a free port, as `make serve` starts it; returns [its process] and its address."""
    port = free_port()
    return [_started([sys.executable, "-m", "serving.server", "--model_config_file", str(config),
                      "--port", str(port), *SERVER_THREADS, *flags])], f"127.0.0.1:{port}"


def start_empty_server(processes: int = 1) -> tuple[list[subprocess.Popen], str]:
    """The do-nothing servicer (`serve_empty`) in `processes` processes of its own sharing a free port."""
    port = free_port()
    return [_started([sys.executable, "-m", "bench.serving", "--empty-server", str(port)])
            for _ in range(processes)], f"127.0.0.1:{port}"


def _started(command: list[str]) -> subprocess.Popen:
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    process.stdout.readline()  # its first line says it serves
    return process


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": 1e3 * ordered[len(ordered) // 2], "p99_ms": 1e3 * ordered[int(len(ordered) * 0.99)]}


def bench_latency(target: str, version: Path, empty_target: str, requests: int = 400) -> dict:
    """p50/p99 through gRPC against two in-process calls of the same signature and an empty servicer, interleaved.

    In-process: `tf.saved_model.load` (what another Python app does) and the
    server's own Session callable (`load_bundle`, TensorFlow Serving's loader).
    The server's added latency is counted from the faster of the two. The
    empty servicer's round trip (a raw stub, an empty request) is taken in the
    same loop, so both servers sit idle alike between their calls.
    """
    local = tf.saved_model.load(str(version)).signatures["serving_default"]
    threads = config_pb2.ConfigProto(intra_op_parallelism_threads=INTRA_OP_THREADS,
                                     inter_op_parallelism_threads=INTER_OP_THREADS)
    session = load_bundle(version, threads).signatures["serving_default"]
    text, rows = tf.constant([PROMPT]), {"text": np.array([PROMPT.encode()], dtype=object)}
    calls = {"in_process": lambda: local(text=text), "in_process_session": lambda: session.run(rows)}
    samples = {name: [] for name in (*calls, "grpc", "empty_grpc")}
    with PredictionClient(target, "text") as client, grpc.insecure_channel(empty_target) as empty_channel:
        calls["grpc"] = lambda: client.predict(rows)
        empty_stub = prediction_service_pb2_grpc.PredictionServiceStub(empty_channel)
        calls["empty_grpc"] = lambda: empty_stub.Predict(predict_pb2.PredictRequest(), timeout=10)
        for _ in range(20):  # warm all up
            for call in calls.values():
                call()
        for _ in range(requests):  # interleaved, so machine noise hits all alike
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                samples[name].append(time.perf_counter() - start)
    result = {name: percentiles(values) for name, values in samples.items()}
    fastest = min(result["in_process"]["p50_ms"], result["in_process_session"]["p50_ms"])
    result["added_p50_ms"] = result["grpc"]["p50_ms"] - fastest
    return result


class EmptyPredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """A Predict that does nothing: what Python gRPC costs by itself."""

    def Predict(self, request, context):
        return predict_pb2.PredictResponse()


def serve_empty(port: int) -> None:
    """`python -m bench.serving --empty-server PORT`: the do-nothing servicer, with the server's thread pool.

    SO_REUSEPORT, as `--server_processes` binds: several of these can share the port.
    """
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=[("grpc.so_reuseport", 1)])
    server.add_insecure_port(f"127.0.0.1:{port}")
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(EmptyPredictionService(), server)
    server.start()
    print("serving", flush=True)
    server.wait_for_termination()


def empty_round_trip_back_to_back(empty_target: str, requests: int = 1000) -> float:
    """p50 ms of the empty servicer called back to back with a raw stub (no idle gaps: the lowest floor)."""
    with grpc.insecure_channel(empty_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        for _ in range(50):
            stub.Predict(request, timeout=10)
        samples = []
        for _ in range(requests):
            start = time.perf_counter()
            stub.Predict(request, timeout=10)
            samples.append(time.perf_counter() - start)
    return percentiles(samples)["p50_ms"]


def model_rows_per_second_default_threads(version: Path) -> float:
    """`model_rows_per_second` in a fresh process with TensorFlow's default threads (fixed at its first op)."""
    fresh = subprocess.run([sys.executable, "-m", "bench.serving", "--model-rows-per-second", str(version)],
                           cwd=ROOT, capture_output=True, text=True, check=True)
    return float(fresh.stdout.split()[-1])


def model_rows_per_second(version: Path, rows: int = 32, calls: int = 30) -> float:
    """Rows/s of the signature alone, in-process, in batches of `rows` (median of `calls` calls)."""
    local = tf.saved_model.load(str(version)).signatures["serving_default"]
    batch = tf.constant([PROMPT] * rows)
    for _ in range(5):
        local(text=batch)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        local(text=batch)
        times.append(time.perf_counter() - start)
    return rows / statistics.median(times)


def bench_throughput(target: str, clients: int, seconds: float = 2.0, own_connections: bool = False) -> float:
    """Requests per second with `clients` concurrent clients, after a one-second ramp-up.

    Args:
        own_connections: Each client opens a connection of its own (for a server of several processes).
    """
    counts, stop = [0] * clients, threading.Event()

    def client_loop(index: int):
        with PredictionClient(target, "text", timeout=60, own_connection=own_connections) as client:
            prompt = np.array([PROMPT.encode()], dtype=object)
            while not stop.is_set():
                client.predict({"text": prompt})
                counts[index] += 1

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    before, start = sum(counts), time.perf_counter()
    time.sleep(seconds)
    after, elapsed = sum(counts), time.perf_counter() - start
    stop.set()
    for thread in threads:
        thread.join()
    return (after - before) / elapsed


def _stat_cpu_seconds(stat: Path) -> float:
    """User + system CPU seconds in a /proc `stat` file (a process's or one of its threads')."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (/proc/<pid>/stat)."""
    return _stat_cpu_seconds(Path(f"/proc/{pid}/stat"))


def cpu_seconds_by_thread_kind(pid: int) -> dict[str, float]:
    """CPU seconds of a process's threads so far, summed by thread name (/proc/<pid>/task/*/comm).

    TensorFlow names its op threads `tf_Compute`, gRPC's core its pollers
    `event_engine`; Python's own threads (gRPC's workers, the request path) are `python`.
    Threads that ended are not counted.
    """
    seconds: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name, used = (task / "comm").read_text().strip(), _stat_cpu_seconds(task / "stat")
        except OSError:  # the thread ended meanwhile
            continue
        seconds[name] = seconds.get(name, 0.0) + used
    return seconds


def machine_busy_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far (/proc/stat; idle and iowait are not busy)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4], sum(fields)


def bench_throughput_with_cpu(target: str, server_pid: int, clients: int) -> dict[str, Any]:
    """Requests/s with `clients` clients, and where the CPU went meanwhile: the server, this process, the machine."""
    server, here, machine, start = cpu_seconds(server_pid), time.process_time(), machine_busy_jiffies(), time.time()
    threads = cpu_seconds_by_thread_kind(server_pid)
    rate = bench_throughput(target, clients)
    elapsed = time.time() - start
    busy, total = (after - before for after, before in zip(machine_busy_jiffies(), machine))
    server_cores = (cpu_seconds(server_pid) - server) / elapsed
    by_kind = {name: (used - threads.get(name, 0.0)) / elapsed
               for name, used in cpu_seconds_by_thread_kind(server_pid).items()}
    return {"requests_per_second": rate, "server_cores": server_cores,
            "server_cores_by_thread_kind": {name: cores for name, cores in sorted(by_kind.items()) if cores > 0},
            "clients_cores": (time.process_time() - here) / elapsed, "machine_busy_share": busy / total,
            "server_cpu_ms_per_request": 1e3 * server_cores / rate}


def interleaved(measurements: dict[str, Callable[[], Any]], rounds: int = ROUNDS) -> dict[str, list]:
    """Each measurement taken `rounds` times, in turn, so that the machine's drift in speed hits all alike.

    Returns:
        Name -> its `rounds` results, in order.
    """
    results: dict[str, list] = {name: [] for name in measurements}
    for _ in range(rounds):
        for name, measure in measurements.items():
            results[name].append(measure())
    return results


def mean_fields(rounds: list[dict]) -> dict:
    """The mean of each numeric field (and of each entry of nested dicts) over rounds of the same measurement."""
    first = rounds[0]
    return {key: mean_fields([r[key] for r in rounds]) if isinstance(first[key], dict) else
            statistics.fmean(r.get(key, 0.0) for r in rounds) for key in first}


def bench_generate(target: str, version: Path, chars: int = 500) -> dict:
    local = tf.saved_model.load(str(version)).signatures["generate"]
    inputs = dict(text=tf.constant(["The "]), max_tokens=tf.constant([chars]), temperature=tf.constant([0.8]),
                  seed=tf.constant([1], tf.int64))
    local(**inputs)
    with PredictionClient(target, "text", timeout=120) as client:
        client.generate("The ", chars, 0.8, 1)
        here, there = [], []
        for _ in range(5):
            start = time.perf_counter()
            local(**inputs)
            here.append(time.perf_counter() - start)
            start = time.perf_counter()
            client.generate("The ", chars, 0.8, 1)
            there.append(time.perf_counter() - start)
    return {"chars": chars, "in_process_chars_per_second": chars / statistics.median(here),
            "grpc_chars_per_second": chars / statistics.median(there)}


def bench_throughputs(servers: Servers, version: Path) -> dict:
    """Requests/s with 1, 8 and 32 clients, batching off and on, in alternating rounds.

    With 32 clients the same rounds also take the ceiling's parts (the empty
    servicer's requests/s, the model's rows/s in batches of 32), where the
    batching server's CPU goes, and the batching server and the empty servicer
    in two processes on one port, each client on a connection of its own.

    Returns:
        The figures for `serving.json` (means over rounds), and every round.
    """
    off, (on_processes, on), empty = servers["off"][1], servers["on"], servers["empty"][1]
    group, empty_group = servers["on_two_processes"][1], servers["empty_two_processes"][1]
    rounds = {clients: interleaved({"off": functools.partial(bench_throughput, off, clients),
                                    "on": functools.partial(bench_throughput, on, clients)}) for clients in (1, 8)}
    rounds[32] = interleaved({
        "off": lambda: bench_throughput(off, 32),
        "on": lambda: bench_throughput_with_cpu(on, on_processes[0].pid, 32),
        "empty": lambda: bench_throughput(empty, 32),
        "two_processes": lambda: bench_throughput(group, 32, own_connections=True),
        "two_empty_processes": lambda: bench_throughput(empty_group, 32, own_connections=True),
        "model_server_threads": lambda: model_rows_per_second(version),
        "model_default_threads": lambda: model_rows_per_second_default_threads(version)})
    cpu = mean_fields(rounds[32]["on"])
    mean = statistics.fmean
    here, default_threads = mean(rounds[32]["model_server_threads"]), mean(rounds[32]["model_default_threads"])
    return {
        "throughput_batching_off": {n: mean(rounds[n]["off"]) for n in (1, 8, 32)},
        "throughput_batching_on": {1: mean(rounds[1]["on"]), 8: mean(rounds[8]["on"]), 32: cpu["requests_per_second"]},
        "cpu_32_clients_batching_on": cpu,
        "two_processes_32_clients": {"requests_per_second": mean(rounds[32]["two_processes"]),
                                     "empty_requests_per_second": mean(rounds[32]["two_empty_processes"])},
        "ceilings": {"empty_predict_requests_per_second_32_clients": mean(rounds[32]["empty"]),
                     "model_rows_per_second_batch_32_server_threads": here,
                     "model_rows_per_second_batch_32_default_threads": default_threads,
                     "model_rows_per_second_batch_32": max(here, default_threads)},
        "rounds": {n: {name: [r["requests_per_second"] if isinstance(r, dict) else r for r in values]
                       for name, values in by_name.items()} for n, by_name in rounds.items()},
    }


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--empty-server"]:
        serve_empty(int(argv[1]))
        return 0
    if argv[:1] == ["--model-rows-per-second"]:  # TensorFlow's default threads: a fresh process
        print(model_rows_per_second(Path(argv[1])))
        return 0
    tf.config.threading.set_intra_op_parallelism_threads(INTRA_OP_THREADS)  # before TensorFlow's first op
    tf.config.threading.set_inter_op_parallelism_threads(INTER_OP_THREADS)
    with tempfile.TemporaryDirectory() as workdir, contextlib.ExitStack() as running:
        workdir = Path(workdir)
        version = export_model(workdir)
        config = workdir / "models.config"
        config.write_text(f'model_config_list {{ config {{ name: "text" base_path: "{version.parent}" '
                          f'model_platform: "tensorflow" }} }}')
        result = {"model": "LSTM-256 character model, 1 layer", "prompt_chars": len(PROMPT), "rounds_per_figure": ROUNDS}
        # All the servers run from the start, so each comparison alternates between them. Two
        # processes on one port are gRPC's advice for Python servers, one process per core.
        batching = ("--file_system_poll_wait_seconds", "0", "--enable_batching",
                    "--batching_parameters_file", str(ROOT / "serving" / "batching.config"))
        servers = {"off": start_server(config, "--file_system_poll_wait_seconds", "0"),
                   "on": start_server(config, *batching),
                   "on_two_processes": start_server(config, *batching, "--server_processes", "2"),
                   "empty": start_empty_server(), "empty_two_processes": start_empty_server(2)}
        for processes, _ in servers.values():
            for process in processes:
                running.callback(stop, process)
        off, empty = servers["off"][1], servers["empty"][1]
        result["latency"] = bench_latency(off, version, empty)
        result["generate"] = bench_generate(off, version)
        throughputs = bench_throughputs(servers, version)
        result.update({key: value for key, value in throughputs.items() if key != "ceilings"})
        result["ceilings"] = {"empty_predict_round_trip_p50_ms": result["latency"]["empty_grpc"]["p50_ms"],
                              "empty_predict_round_trip_back_to_back_p50_ms": empty_round_trip_back_to_back(empty),
                              **throughputs["ceilings"]}
    result["targets"] = targets(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serving.json").write_text(json.dumps({"benchmark": "serving", "environment": environment(),
                                                      **result}, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print("\n" + table())
    return 0


def targets(r: dict) -> dict:
    """Issue 16's targets, as ratios within one run: what each measurement is held against."""
    off, on = ({str(k): v for k, v in r[key].items()} for key in ("throughput_batching_off", "throughput_batching_on"))
    c = r["ceilings"]
    ceiling = combined_ceiling(c["empty_predict_requests_per_second_32_clients"], c["model_rows_per_second_batch_32"])
    added, floor = r["latency"]["added_p50_ms"], c["empty_predict_round_trip_p50_ms"]
    two = r.get("two_processes_32_clients")  # absent from runs before `--server_processes`
    two_ceiling = two and combined_ceiling(two["empty_requests_per_second"], c["model_rows_per_second_batch_32"])
    return {
        "ceiling_requests_per_second_32_clients": ceiling,
        "share_of_ceiling_32_clients_batching": {"value": on["32"] / ceiling, "target": 0.80},
        "batching_on_vs_off_1_client": {"value": on["1"] / off["1"], "target": 0.95},
        "batching_on_vs_off_8_clients": {"value": on["8"] / off["8"], "target": 1.0},
        "added_latency_vs_empty_round_trip": {"value": added / floor, "target": 1.5, "at_most": True},
        **({} if two is None else {
            "ceiling_requests_per_second_32_clients_two_processes": two_ceiling,
            "share_of_ceiling_32_clients_two_processes": {"value": two["requests_per_second"] / two_ceiling,
                                                           "target": 0.80},
            "share_of_one_process_ceiling_32_clients_two_processes": {
                "value": two["requests_per_second"] / ceiling, "target": 0.80}}),
    }


def combined_ceiling(empty_requests_per_second: float, model_rows_per_second: float) -> float:
    """Requests/s if each cost gRPC's share (an empty servicer's) plus the model's, one after the other."""
    return 1 / (1 / empty_requests_per_second + 1 / model_rows_per_second)


def table() -> str:
    path = RESULTS / "serving.json"
    if not path.exists():
        return ""
    r = json.loads(path.read_text())
    latency, off, on, c = r["latency"], r["throughput_batching_off"], r["throughput_batching_on"], r["ceilings"]
    cpu = r["cpu_32_clients_batching_on"]
    t = targets(r)
    met = lambda goal: "met" if (goal["value"] <= goal["target"] if goal.get("at_most") else  # noqa: E731
                                 goal["value"] >= goal["target"]) else "not met"
    share, one, eight, added = (t["share_of_ceiling_32_clients_batching"], t["batching_on_vs_off_1_client"],
                                t["batching_on_vs_off_8_clients"], t["added_latency_vs_empty_round_trip"])
    g = r["generate"]
    kinds = cpu.get("server_cores_by_thread_kind", {})
    thread_kinds = "".join(f"; {label} {kinds[name]:.2f}" for name, label in
                           (("tf_Compute", "TensorFlow's op threads"), ("python", "Python threads")) if name in kinds)
    rows = ["| benchmark | gRPC (embedded server) | baseline in the same run / target |", "|---|---|---|",
            f"| next-token Predict latency, {r['prompt_chars']}-char prompt | p50 {latency['grpc']['p50_ms']:.2f} ms, "
            f"p99 {latency['grpc']['p99_ms']:.2f} ms | in-process p50 {latency['in_process']['p50_ms']:.2f} ms "
            f"(`tf.saved_model.load`), {latency['in_process_session']['p50_ms']:.2f} ms (the server's Session "
            f"call): the server adds **{latency['added_p50_ms']:.2f} ms** to the faster, "
            f"{added['value']:.2f}× an empty servicer's round trip "
            f"({c['empty_predict_round_trip_p50_ms']:.2f} ms; target ≤ 1.5×: {met(added)}) |",
            f"| throughput, 1 client | batching off {off['1']:,.0f} req/s, on {on['1']:,.0f} req/s | on/off "
            f"**{one['value']:.2f}** (target ≥ 0.95: {met(one)}) |",
            f"| throughput, 8 clients | batching off {off['8']:,.0f} req/s, on {on['8']:,.0f} req/s | on/off "
            f"**{eight['value']:.2f}** (target ≥ 1.0: {met(eight)}) |",
            f"| throughput, 32 clients | batching off {off['32']:,.0f} req/s, on {on['32']:,.0f} req/s | "
            f"**{share['value']:.0%}** of the ceiling, {t['ceiling_requests_per_second_32_clients']:,.0f} req/s "
            f"(target ≥ 80%: {met(share)}) |",
            f"| CPU during that run | server {cpu['server_cores']:.2f} cores ({cpu['server_cpu_ms_per_request']:.1f} ms "
            f"a request{thread_kinds}), clients {cpu['clients_cores']:.2f} | machine "
            f"**{cpu['machine_busy_share']:.0%} busy** |",
            *([] if "two_processes_32_clients" not in r else [
                f"| throughput, 32 clients, batching on, `--server_processes 2` (one port, one process per core; "
                f"a connection per client) | {r['two_processes_32_clients']['requests_per_second']:,.0f} req/s | "
                f"**{t['share_of_ceiling_32_clients_two_processes']['value']:.0%}** of the ceiling with the empty "
                f"servicer in two processes too ({r['two_processes_32_clients']['empty_requests_per_second']:,.0f} "
                f"req/s), {t['ceiling_requests_per_second_32_clients_two_processes']:,.0f} req/s "
                f"(target ≥ 80%: {met(t['share_of_ceiling_32_clients_two_processes'])}); "
                f"{t['share_of_one_process_ceiling_32_clients_two_processes']['value']:.0%} of the one-process "
                "ceiling above |"]),
            f"| ceiling: a Predict that does nothing | p50 {c['empty_predict_round_trip_p50_ms']:.2f} ms between the "
            f"other calls ({c.get('empty_predict_round_trip_back_to_back_p50_ms', float('nan')):.2f} ms back to back); "
            f"{c['empty_predict_requests_per_second_32_clients']:,.0f} req/s with 32 clients | |",
            f"| ceiling: the model alone, batches of 32, in-process | {c['model_rows_per_second_batch_32']:,.0f} "
            f"rows/s on both cores (the faster of the server's threads, "
            f"{c['model_rows_per_second_batch_32_server_threads']:,.0f}, and TensorFlow's defaults, "
            f"{c['model_rows_per_second_batch_32_default_threads']:,.0f}) | "
            "ceiling = 1 / (1/empty req/s + 1/model rows/s) |",
            f"| `generate`, {g['chars']} chars | {g['grpc_chars_per_second']:,.0f} chars/s | "
            f"{g['in_process_chars_per_second']:,.0f} chars/s in-process |"]
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
