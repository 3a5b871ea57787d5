"""Load: 16 concurrent clients × 5,000 requests against the embedded server.

    python -m bench.load                 # make load; about 5 minutes on 2 cores
    python -m bench.load --requests 500  # a shorter run

The server runs as its own process with `make serve`'s settings (batching on)
and serves an LSTM-256 character model and an LSTM stock model. The clients
are 4 processes × 4 threads, each thread with its own channel, sending a mix
of next-token (70%), generate (10%, 20 characters) and next-value (20%)
requests through `serving.prediction_client`. Recorded: errors (the goal is zero), p50
and p99 latency per kind, throughput, and the server's resident memory
after warm-up (the first 10% of requests) and at the end (goal: < 10% growth).
Results: `bench/results/load.json`; the README's table is printed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MIX = (("next_token", 0.7), ("generate", 0.1), ("next_value", 0.2))
PROCESSES, THREADS = 4, 4
WINDOW = 30


def export_models(workdir: Path) -> Path:
    """An LSTM-256 character model (untrained: speed does not depend on the weights) and a stock model."""
    from bench.serving import export_model
    from model.config import ForecastConfig, ModelConfig, OptimizerConfig, TrainingConfig
    from pipelines.series import train_series_model
    from pipelines.series_data import chronological_split, default_prices, load_prices

    text_version = export_model(workdir)
    series = load_prices(default_prices(), "default", ticker="MSFT")
    train_series_model(series, chronological_split(len(series.dates), WINDOW, 1),
                       ForecastConfig(window=WINDOW, quantiles=(0.1, 0.5, 0.9)), ModelConfig(units=64),
                       OptimizerConfig(), TrainingConfig(epochs=1, batch_size=64, steps_per_epoch=20, patience=0,
                                                         runs_dir=str(workdir / "runs")),
                       workdir / "saved_models" / "stock")
    config = workdir / "models.config"
    config.write_text(f"""model_config_list {{
      config {{ name: "text" base_path: "{text_version.parent}" model_platform: "tensorflow" }}
      config {{ name: "stock" base_path: "{workdir / 'saved_models' / 'stock'}" model_platform: "tensorflow" }}
    }}""")
    return config


def resident_mib(pid: int) -> float:
    """The process's resident memory (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def client_process(target: str, requests_per_client: int, seed: int, done: "multiprocessing.Queue",
                   progress: "multiprocessing.Value") -> None:
    """THREADS clients in one process; puts (kind, seconds, error or "") for every request."""
    from serving.prediction_client import PredictionClient, ServingCallError

    prices = np.linspace(25.0, 27.0, WINDOW, dtype=np.float32)[None, :, None]

    def one_client(index: int, records: list) -> None:
        rng = random.Random(seed * 100 + index)
        with PredictionClient(target, "text", timeout=60) as text, PredictionClient(target, "stock", timeout=60) as stock:
            for _ in range(requests_per_client):
                kind = rng.choices([k for k, _ in MIX], [w for _, w in MIX])[0]
                start, error = time.perf_counter(), ""
                try:
                    if kind == "next_token":
                        text.next_token([rng.choice(["It was the best of times, it was the wor", "The ", "def "])])
                    elif kind == "generate":
                        text.generate("The ", max_tokens=20, temperature=0.8, seed=rng.randrange(1000))
                    else:
                        stock.next_value(prices * rng.uniform(0.9, 1.1))
                except ServingCallError as failure:
                    error = str(failure)
                records.append((kind, time.perf_counter() - start, error))
                with progress.get_lock():
                    progress.value += 1

    records: list = []
    threads = [threading.Thread(target=one_client, args=(i, records)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.put(records)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values) * 1e3, q)) if values else float("nan")


def run(requests_per_client: int) -> dict:
    from bench.serving import start_server

    with tempfile.TemporaryDirectory() as workdir:
        config = export_models(Path(workdir))
        (server,), target = start_server(config, "--file_system_poll_wait_seconds", "0", "--enable_batching",
                                         "--batching_parameters_file", str(ROOT / "serving" / "batching.config"))
        try:
            context = multiprocessing.get_context("spawn")
            done, progress = context.Queue(), context.Value("l", 0)
            total = PROCESSES * THREADS * requests_per_client
            workers = [context.Process(target=client_process, args=(target, requests_per_client, seed, done, progress))
                       for seed in range(PROCESSES)]
            start = time.perf_counter()
            for worker in workers:
                worker.start()
            memory_samples, warm_rss, warm_at = [], None, 0
            while any(worker.is_alive() for worker in workers) and progress.value < total:
                if warm_rss is None and progress.value >= total // 10:
                    warm_rss, warm_at = resident_mib(server.pid), progress.value
                memory_samples.append(resident_mib(server.pid))
                time.sleep(0.5)
            records = [record for _ in workers for record in done.get(timeout=600)]
            elapsed = time.perf_counter() - start
            for worker in workers:
                worker.join()
            end_rss = resident_mib(server.pid)
            warm_rss = warm_rss or memory_samples[0]
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    errors = [error for _, _, error in records if error]
    by_kind = {kind: [seconds for k, seconds, error in records if k == kind and not error] for kind, _ in MIX}
    return {
        "clients": PROCESSES * THREADS, "requests_per_client": requests_per_client, "requests": len(records),
        "errors": len(errors), "first_errors": errors[:5],
        "requests_per_second": len(records) / elapsed, "wall_seconds": elapsed,
        "latency_ms": {kind: {"count": len(values), "p50": percentile(values, 50), "p99": percentile(values, 99)}
                       for kind, values in by_kind.items()},
        "server_rss_mib": {"after_warm_up": warm_rss, "warm_up_requests": warm_at, "end": end_rss,
                           "peak": max(memory_samples)},
        "server_rss_growth_after_warm_up": (end_rss - warm_rss) / warm_rss,
    }


def table() -> str:
    path = RESULTS / "load.json"
    if not path.exists():
        return ""
    r = json.loads(path.read_text())
    latency, rss = r["latency_ms"], r["server_rss_mib"]
    rows = ["| load: 16 clients × 5,000 requests | result | goal |", "|---|---|---|",
            f"| errors | **{r['errors']}** of {r['requests']:,} | 0 |",
            f"| throughput | {r['requests_per_second']:,.0f} req/s over {r['wall_seconds']:.0f} s | — |"]
    for kind, values in latency.items():
        rows.append(f"| {kind.replace('_', '-')} latency ({values['count']:,} requests) | p50 {values['p50']:.1f} ms, "
                    f"p99 {values['p99']:.1f} ms | — |")
    rows.append(f"| server resident memory | {rss['after_warm_up']:.0f} MiB after warm-up → {rss['end']:.0f} MiB at "
                f"the end (**{100 * r['server_rss_growth_after_warm_up']:+.1f}%**) | < +10% |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000, help="requests per client")
    args = parser.parse_args(argv)
    from bench.text import environment

    result = run(args.requests)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "load.json").write_text(json.dumps({"benchmark": "load", "environment": environment(), **result},
                                                  indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print("\n" + table())
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
