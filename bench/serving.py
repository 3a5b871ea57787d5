"""Benchmarks of the embedded server over loopback gRPC, against in-process calls.

    python -m bench.serving          # about 3 minutes on 2 cores

- latency: p50/p99 of a next-token Predict (one 40-character prompt) through
  gRPC, against calling the same signature in-process, in the same run;
- throughput: requests/s with 1, 8 and 32 concurrent clients, batching off and on;
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
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from bench.text import RESULTS, environment
from model.builders import build_next_token_model
from model.config import ModelConfig
from model.text_export import export_text_model
from serving.demo import free_port
from serving.prediction_client import PredictionClient

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "It was the best of times, it was the wor"  # 40 characters
VOCABULARY = [chr(c) for c in range(32, 127)]


def export_model(workdir: Path) -> Path:
    model = build_next_token_model(len(VOCABULARY) + 2, ModelConfig(cell="lstm", units=256))
    return export_text_model(model, workdir / "saved_models" / "text", VOCABULARY, "char", [1] * len(VOCABULARY), 100)


def start_server(config: Path, *flags: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "serving.server", "--model_config_file", str(config),
                                "--port", str(port), *flags], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    process.stdout.readline()
    return process, f"127.0.0.1:{port}"


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": 1e3 * ordered[len(ordered) // 2], "p99_ms": 1e3 * ordered[int(len(ordered) * 0.99)]}


def bench_latency(target: str, version: Path, requests: int = 400) -> dict:
    local = tf.saved_model.load(str(version)).signatures["serving_default"]
    text = tf.constant([PROMPT])
    in_process, remote = [], []
    with PredictionClient(target, "text") as client:
        prompt = np.array([PROMPT.encode()], dtype=object)
        for _ in range(20):  # warm both up
            local(text=text)
            client.predict({"text": prompt})
        for _ in range(requests):  # interleaved, so machine noise hits both alike
            start = time.perf_counter()
            local(text=text)
            in_process.append(time.perf_counter() - start)
            start = time.perf_counter()
            client.predict({"text": prompt})
            remote.append(time.perf_counter() - start)
    result = {"in_process": percentiles(in_process), "grpc": percentiles(remote)}
    result["added_p50_ms"] = result["grpc"]["p50_ms"] - result["in_process"]["p50_ms"]
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
    local = tf.saved_model.load(str(version)).signatures["serving_default"]
    batch = tf.constant([PROMPT] * 32)
    for _ in range(5):
        local(text=batch)
    calls = []
    for _ in range(30):
        start = time.perf_counter()
        local(text=batch)
        calls.append(time.perf_counter() - start)
    return {"empty_predict_round_trip_p50_ms": percentiles(samples)["p50_ms"],
            "empty_predict_requests_per_second_32_clients": empty_throughput,
            "model_rows_per_second_batch_32": 32 / statistics.median(calls)}


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
            result["throughput_batching_on"] = {n: bench_throughput(target, n) for n in (1, 8, 32)}
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
    t = targets(r)
    met = lambda goal: "met" if (goal["value"] <= goal["target"] if goal.get("at_most") else  # noqa: E731
                                 goal["value"] >= goal["target"]) else "not met"
    share, one, eight, added = (t["share_of_ceiling_32_clients_batching"], t["batching_on_vs_off_1_client"],
                                t["batching_on_vs_off_8_clients"], t["added_latency_vs_empty_round_trip"])
    g = r["generate"]
    rows = ["| benchmark | gRPC (embedded server) | baseline in the same run / target |", "|---|---|---|",
            f"| next-token Predict latency, {r['prompt_chars']}-char prompt | p50 {latency['grpc']['p50_ms']:.2f} ms, "
            f"p99 {latency['grpc']['p99_ms']:.2f} ms | in-process p50 {latency['in_process']['p50_ms']:.2f} ms: the "
            f"server adds **{latency['added_p50_ms']:.2f} ms**, {added['value']:.2f}× an empty servicer's round trip "
            f"({c['empty_predict_round_trip_p50_ms']:.2f} ms; target ≤ 1.5×: {met(added)}) |",
            f"| throughput, 1 client | batching off {off['1']:,.0f} req/s, on {on['1']:,.0f} req/s | on/off "
            f"**{one['value']:.2f}** (target ≥ 0.95: {met(one)}) |",
            f"| throughput, 8 clients | batching off {off['8']:,.0f} req/s, on {on['8']:,.0f} req/s | on/off "
            f"**{eight['value']:.2f}** (target ≥ 1.0: {met(eight)}) |",
            f"| throughput, 32 clients | batching off {off['32']:,.0f} req/s, on {on['32']:,.0f} req/s | "
            f"**{share['value']:.0%}** of the ceiling, {t['ceiling_requests_per_second_32_clients']:,.0f} req/s "
            f"(target ≥ 80%: {met(share)}) |",
            f"| ceiling: a Predict that does nothing | p50 {c['empty_predict_round_trip_p50_ms']:.2f} ms; "
            f"{c['empty_predict_requests_per_second_32_clients']:,.0f} req/s with 32 clients | |",
            f"| ceiling: the model alone, batches of 32, in-process | {c['model_rows_per_second_batch_32']:,.0f} "
            "rows/s on both cores | ceiling = 1 / (1/empty req/s + 1/model rows/s) |",
            f"| `generate`, {g['chars']} chars | {g['grpc_chars_per_second']:,.0f} chars/s | "
            f"{g['in_process_chars_per_second']:,.0f} chars/s in-process |"]
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
