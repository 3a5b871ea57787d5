"""Prometheus metrics of the embedded server, as `monitoring.config` asks for them.

With `--monitoring_config_file` (a MonitoringConfig whose prometheus_config is
enabled), the REST port answers the configured path (by default
`/monitoring/prometheus/metrics`) in Prometheus' text format: requests per
model, signature and status code, their latency, and the versions loaded.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class ServingMetrics:
    """The server's counters, in a registry of their own (several servers can share a process)."""

    def __init__(self):
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

    def exposition(self, models) -> bytes:
        """The current metrics in Prometheus' text format."""
        for name in models.names():
            self.loaded_versions.labels(name).set(sum(1 for _, state, _ in models.status(name) if state == "AVAILABLE"))
        return generate_latest(self.registry)
