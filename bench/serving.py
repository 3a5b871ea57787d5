"""Benchmarks of the embedded server over loopback gRPC, against in-process calls.

    python -m bench.serving          # about 3 minutes on 2 cores

- latency: p50/p99 of a next-token Predict (one 40-character prompt) through
  gRPC, against calling the same signature in-process (`tf.saved_model.load`,
  and the server's own Session call), in the same run;
- throughput: requests/s with 1, 8 and 32 concurrent clients, batching off and on,
  and where the CPU goes with 32 (server, clients, the whole machine);
- generation: 500 characters through gRPC against the same signature in-process;
- ceilings on this machine, same run: the round trip of a Predict servicer that
  does nothing (Python gRPC's floor), its requests/s with the same 32 clients,
  and the rows/s of the model alone in batches of 32.

Every target is a ratio within the run (`targets`): 32 clients with batching
reach >= 80% of the ceiling 1/(1/empty req/s + 1/model rows/s); batching on
costs a lone client nothing (>= 0.95x batching off) and helps 8 clients
(>= 1x); the server adds at most 1.5x an empty servicer's round trip to the
in-process call.

The model is an untrained LSTM-256 character model (speed does not depend on
the weights). Clients are threads of this process, each with its own channel.
Results: `bench/results/serving.json`; the README's table is printed.
"""

from __future__ import annotations

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
# thread (a one-row LSTM step is too small to split), two inter-op threads. This process's own
# calls (the in-process baselines, the model's rows/s) use the same, so the ratios compare like
# with like; batches of 32 run about as fast either way (measured; the ceiling takes the faster).
INTRA_OP_THREADS, INTER_OP_THREADS = 1, 2
SERVER_THREADS = ("--tensorflow_intra_op_parallelism", str(INTRA_OP_THREADS),
                  "--tensorflow_inter_op_parallelism", str(INTER_OP_THREADS))


def export_model(workdir: Path) -> Path:
    model = build_next_token_model(len(VOCABULARY) + 2, ModelConfig(cell="lstm", units=256))
    return export_text_model(model, workdir / "saved_models" / "text", VOCABULARY, "char", [1] * len(VOCABULARY), 100)


def start_server(config: Path, *flags: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "serving.server", "--model_config_file", str(config),
                                "--port", str(port), *SERVER_THREADS, *flags], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    process.stdout.readline()
    return process, f"127.0.0.1:{port}"


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": 1e3 * ordered[len(ordered) // 2], "p99_ms": 1e3 * ordered[int(len(ordered) * 0.99)]}


def bench_latency(target: str, version: Path, requests: int = 400) -> dict:
    """p50/p99 through gRPC against two in-process calls of the same signature, interleaved.

    In-process: `tf.saved_model.load` (what another Python app does) and the
    server's own Session callable (`load_bundle`, TensorFlow Serving's loader).
    The server's added latency is counted from the faster of the two.
    """
    local = tf.saved_model.load(str(version)).signatures["serving_default"]
    threads = config_pb2.ConfigProto(intra_op_parallelism_threads=INTRA_OP_THREADS,
                                     inter_op_parallelism_threads=INTER_OP_THREADS)
    session = load_bundle(version, threads).signatures["serving_default"]
    text, rows = tf.constant([PROMPT]), {"text": np.array([PROMPT.encode()], dtype=object)}
    calls = {"in_process": lambda: local(text=text), "in_process_session": lambda: session.run(rows)}
    samples = {name: [] for name in (*calls, "grpc")}
    with PredictionClient(target, "text") as client:
        calls["grpc"] = lambda: client.predict(rows)
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
    """`python -m bench.serving --empty-server PORT`: the do-nothing servicer, with the server's thread pool."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_insecure_port(f"127.0.0.1:{port}")
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(EmptyPredictionService(), server)
    server.start()
    print("serving", flush=True)
    server.wait_for_termination()


def bench_ceilings(version: Path, requests: int = 1000) -> dict:
    """Python gRPC's round-trip floor (another process, empty Predict) and the model's rows/s at batch 32."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "bench.serving", "--empty-server", str(port)], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True)
    process.stdout.readline()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = predict_pb2.PredictRequest()
            for _ in range(50):
                stub.Predict(request, timeout=10)
            samples = []
            for _ in range(requests):
                start = time.perf_counter()
                stub.Predict(request, timeout=10)
                samples.append(time.perf_counter() - start)
        # The throughput benchmark's 32 clients against it: what gRPC and the clients cost with no model.
        empty_throughput = bench_throughput(f"127.0.0.1:{port}", 32)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    # The model's best rows/s: in this process (the server's thread settings) and in a fresh one
    # with TensorFlow's default threads (either may be faster on a given day); the ceiling takes the faster.
    here = model_rows_per_second(version)
    fresh = subprocess.run([sys.executable, "-m", "bench.serving", "--model-rows-per-second", str(version)],
                           cwd=ROOT, capture_output=True, text=True, check=True)
    default_threads = float(fresh.stdout.split()[-1])
    return {"empty_predict_round_trip_p50_ms": percentiles(samples)["p50_ms"],
            "empty_predict_requests_per_second_32_clients": empty_throughput,
            "model_rows_per_second_batch_32_server_threads": here,
            "model_rows_per_second_batch_32_default_threads": default_threads,
            "model_rows_per_second_batch_32": max(here, default_threads)}


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


def bench_throughput(target: str, clients: int, seconds: float = 6.0) -> float:
    """Requests per second with `clients` concurrent clients, after a one-second ramp-up."""
    counts, stop = [0] * clients, threading.Event()

    def client_loop(index: int):
        with PredictionClient(target, "text", timeout=60) as client:
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far (/proc/stat; idle and iowait are not busy)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4], sum(fields)


def bench_throughput_with_cpu(target: str, server_pid: int, clients: int) -> dict:
    """Requests/s with `clients` clients, and where the CPU went meanwhile: the server, this process, the machine."""
    server, here, machine, start = cpu_seconds(server_pid), time.process_time(), machine_busy_jiffies(), time.time()
    rate = bench_throughput(target, clients)
    elapsed = time.time() - start
    busy, total = (after - before for after, before in zip(machine_busy_jiffies(), machine))
    server_cores = (cpu_seconds(server_pid) - server) / elapsed
    return {"requests_per_second": rate, "server_cores": server_cores,
            "clients_cores": (time.process_time() - here) / elapsed, "machine_busy_share": busy / total,
            "server_cpu_ms_per_request": 1e3 * server_cores / rate}


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
    with tempfile.TemporaryDirectory() as workdir:
        workdir = Path(workdir)
        version = export_model(workdir)
        config = workdir / "models.config"
        config.write_text(f'model_config_list {{ config {{ name: "text" base_path: "{version.parent}" '
                          f'model_platform: "tensorflow" }} }}')
        result = {"model": "LSTM-256 character model, 1 layer", "prompt_chars": len(PROMPT)}
        process, target = start_server(config, "--file_system_poll_wait_seconds", "0")
        try:
            result["latency"] = bench_latency(target, version)
            result["generate"] = bench_generate(target, version)
            result["throughput_batching_off"] = {n: bench_throughput(target, n) for n in (1, 8, 32)}
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        process, target = start_server(config, "--file_system_poll_wait_seconds", "0", "--enable_batching",
                                       "--batching_parameters_file", str(ROOT / "serving" / "batching.config"))
        try:
            result["throughput_batching_on"] = {n: bench_throughput(target, n) for n in (1, 8)}
            loaded = bench_throughput_with_cpu(target, process.pid, 32)
            result["throughput_batching_on"][32] = loaded["requests_per_second"]
            result["cpu_32_clients_batching_on"] = loaded
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        result["ceilings"] = bench_ceilings(version)
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
    ceiling = 1 / (1 / c["empty_predict_requests_per_second_32_clients"] + 1 / c["model_rows_per_second_batch_32"])
    added, floor = r["latency"]["added_p50_ms"], c["empty_predict_round_trip_p50_ms"]
    return {
        "ceiling_requests_per_second_32_clients": ceiling,
        "share_of_ceiling_32_clients_batching": {"value": on["32"] / ceiling, "target": 0.80},
        "batching_on_vs_off_1_client": {"value": on["1"] / off["1"], "target": 0.95},
        "batching_on_vs_off_8_clients": {"value": on["8"] / off["8"], "target": 1.0},
        "added_latency_vs_empty_round_trip": {"value": added / floor, "target": 1.5, "at_most": True},
    }


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
            f"a request), clients {cpu['clients_cores']:.2f} | machine **{cpu['machine_busy_share']:.0%} busy** |",
            f"| ceiling: a Predict that does nothing | p50 {c['empty_predict_round_trip_p50_ms']:.2f} ms; "
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
