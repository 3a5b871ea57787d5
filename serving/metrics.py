"""Prometheus metrics of the embedded server, as `monitoring.config` asks for them.

With `--monitoring_config_file` (a MonitoringConfig whose prometheus_config is
enabled), the REST port answers the configured path (by default
`/monitoring/prometheus/metrics`) in Prometheus' text format with:

- TensorFlow Serving's own metrics, under its names and labels, so that one
  dashboard and one alert serve both servers (`servables/tensorflow/util.cc`,
  `saved_model_warmup_util.cc`; names as `util/prometheus_exporter.cc` writes
  them, `/tensorflow/serving/request_count` -> `:tensorflow:serving:request_count`):
  `request_count{model_name, status}` (every gRPC Predict, Classify and
  Regress and every REST request), `request_latency{model_name, API,
  entrypoint}` and `runtime_latency{model_name, API, runtime}` (microseconds,
  successful requests), `model_warmup_latency{model_path, status}`;
- this server's extras: requests per model, signature and code, their
  latency in seconds, and the versions loaded (`rnn_serving_*`).
"""

from __future__ import annotations

import bisect
import threading
import time
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# monitoring::Buckets::Exponential(10, 1.8, 33): the bucket limits of every TensorFlow Serving latency histogram.
LATENCY_BUCKETS_MICROS = [10 * 1.8 ** i for i in range(33)]


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    return ",".join(f'{name}="{_label_value(value)}"' for name, value in labels.items())


class TensorFlowServingMetrics:
    """TensorFlow Serving's counters and histograms, written in its exporter's format."""

    COUNTERS = {"/tensorflow/serving/request_count": ("model_name", "status")}
    HISTOGRAMS = {"/tensorflow/serving/request_latency": ("model_name", "API", "entrypoint"),
                  "/tensorflow/serving/runtime_latency": ("model_name", "API", "runtime"),
                  "/tensorflow/serving/model_warmup_latency": ("model_path", "status")}

    def __init__(self):
        self._lock = threading.Lock()
        self._counts: dict[str, dict[tuple[str, ...], int]] = {name: {} for name in self.COUNTERS}
        # name -> labels -> [bucket counts..., sum]
        self._histograms: dict[str, dict[tuple[str, ...], list[float]]] = {name: {} for name in self.HISTOGRAMS}

    def count_request(self, model_name: str, status: str) -> None:
        with self._lock:
            cells = self._counts["/tensorflow/serving/request_count"]
            cells[(model_name, status)] = cells.get((model_name, status), 0) + 1

    def observe(self, name: str, labels: tuple[str, ...], micros: float) -> None:
        """Add one sample (microseconds) to one of `HISTOGRAMS`."""
        with self._lock:
            cell = self._histograms[name].setdefault(labels, [0.0] * (len(LATENCY_BUCKETS_MICROS) + 2))
            cell[bisect.bisect_right(LATENCY_BUCKETS_MICROS, micros)] += 1  # the first limit above the sample
            cell[-1] += micros

    @staticmethod
    def sanitized(name: str) -> str:
        """A TensorFlow metric name as a Prometheus one: every character but [a-zA-Z0-9_] becomes ':'."""
        text = "".join(c if c.isascii() and (c.isalnum() or c == "_") else ":" for c in name)
        return "_" + text if text[:1].isdigit() else text

    def exposition(self) -> str:
        """The metrics as TensorFlow Serving's exporter writes them (no HELP lines, sorted by name)."""
        lines = []
        with self._lock:
            for name in sorted([*self.COUNTERS, *self.HISTOGRAMS]):
                metric = self.sanitized(name)
                if name in self.COUNTERS:
                    lines.append(f"# TYPE {metric} counter")
                    for values, count in sorted(self._counts[name].items()):
                        lines.append(f"{metric}{{{_labels(dict(zip(self.COUNTERS[name], values)))}}} {count}")
                    continue
                lines.append(f"# TYPE {metric} histogram")
                for values, cell in sorted(self._histograms[name].items()):
                    labels = _labels(dict(zip(self.HISTOGRAMS[name], values)))
                    cumulative = 0
                    for limit, count in zip([*LATENCY_BUCKETS_MICROS, None], cell[:-1]):
                        cumulative += int(count)
                        le = "+Inf" if limit is None else f"{limit:g}"
                        lines.append(f'{metric}_bucket{{{labels},le="{le}"}} {cumulative}')
                    lines.append(f"{metric}_sum{{{labels}}} {cell[-1]:g}")
                    lines.append(f"{metric}_count{{{labels}}} {cumulative}")
        return "\n".join(lines) + "\n"


class ServingMetrics:
    """The server's metrics, in a registry of their own (several servers can share a process).

    Attributes:
        tfs: TensorFlow Serving's metrics.
    """

    def __init__(self):
        self.tfs = TensorFlowServingMetrics()
        self.registry = CollectorRegistry()
        self.requests = Counter("rnn_serving_requests", "Predict requests", ["model", "signature", "code"],
                                registry=self.registry)
        self.latency = Histogram("rnn_serving_request_latency_seconds", "Predict latency inside the server",
                                 ["model", "signature"], registry=self.registry,
                                 buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5))
        self.loaded_versions = Gauge("rnn_serving_loaded_versions", "Versions loaded", ["model"],
                                     registry=self.registry)

    @contextmanager
    def observe(self, model: str, signature: str):
        """Time a request; the caller sets `outcome["code"]` (the gRPC status name) before leaving."""
        outcome = {"code": "OK"}
        start = time.perf_counter()
        try:
            yield outcome
        finally:
            self.latency.labels(model, signature).observe(time.perf_counter() - start)
            self.requests.labels(model, signature, outcome["code"]).inc()

    def record_request(self, model_name: str, api: str, entrypoint: str, status: str, seconds: float) -> None:
        """One request as TensorFlow Serving counts it: request_count always, request_latency on success.

        Args:
            model_name: As the request names it (possibly empty).
            api: `Predict`, `Classify`, `Regress` (gRPC); `predict`... or "" (REST status and metadata).
            entrypoint: `GRPC` or `REST`.
            status: The status code's name, e.g. `OK`, `NOT_FOUND`.
            seconds: How long it took.
        """
        self.tfs.count_request(model_name, status)
        if status == "OK":
            self.tfs.observe("/tensorflow/serving/request_latency", (model_name, api, entrypoint), seconds * 1e6)

    def exposition(self, models) -> bytes:
        """The current metrics in Prometheus' text format."""
        for name in models.names():
            self.loaded_versions.labels(name).set(len(models.available_versions(name)))
        return self.tfs.exposition().encode("utf-8") + generate_latest(self.registry)


def merge_expositions(texts: list[str]) -> str:
    """Several processes' metrics (Prometheus text format) as one process's would read.

    Counters and histograms (buckets, sums, counts) add up. A gauge, and a
    counter's `_created` time, take the smallest value: `rnn_serving_loaded_versions`
    counts the versions every process serves. Families stay together, in the
    order they first appear; label sets only some processes have are kept.

    Args:
        texts: Each process's exposition (no timestamps, as this server writes them).

    Returns:
        One exposition.
    """
    families: dict[str, dict] = {}  # name -> {"kind", "comments", "samples": {"name{labels}": value}}
    family = families.setdefault("", {"kind": "untyped", "comments": [], "samples": {}})
    for text in texts:
        for line in text.splitlines():
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                name = line.split(" ", 3)[2]
                family = families.setdefault(name, {"kind": "untyped", "comments": [], "samples": {}})
                if line.startswith("# TYPE "):
                    family["kind"] = line.split(" ", 3)[3]
                if line not in family["comments"]:
                    family["comments"].append(line)
            elif line and not line.startswith("#"):
                sample, value = line.rsplit(" ", 1)
                smallest = family["kind"] == "gauge" or sample.split("{", 1)[0].endswith("_created")
                seen = family["samples"].get(sample)
                family["samples"][sample] = float(value) if seen is None else (
                    min(seen, float(value)) if smallest else seen + float(value))
    lines = []
    for family in families.values():
        lines += family["comments"]
        lines += [f"{sample} {int(value) if value.is_integer() else repr(value)}"
                  for sample, value in family["samples"].items()]
    return "\n".join(lines) + "\n"
