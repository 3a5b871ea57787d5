"""The server's life: bind, load and warm up every version, poll for new ones and new configs, stop.

`Server` puts the parts together: a gRPC server with the two servicers
(`serving.services`), the optional REST API (`serving.rest`), the
`ModelManager` whose loader loads a version as TensorFlow Serving does and
replays its warmup file through the Predict path (`serving.prediction`), and
the threads that re-scan base paths and re-read models.config.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Optional, Sequence

import grpc
from tensorflow.core.protobuf import config_pb2
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from serving import config as tfs_config
from serving.batching import BatchingOptions, BatchScheduler
from serving.limits import DEFAULT_LIMITS, MAX_MESSAGE_BYTES, RequestLimits
from serving.metrics import ServingMetrics
from serving.models import LoadedVersion, ModelManager, load_version
from serving.prediction import Predictor
from serving.process_group import ProcessGroup
from serving.rest import RestServer
from serving.saved_model_bundle import WARMUP_FILE, status_code
from serving.services import ModelService, PredictionService

log = logging.getLogger("serving")
DEFAULT_METRICS_PATH = "/monitoring/prometheus/metrics"  # TensorFlow Serving's, when prometheus_config sets no path


class Server:
    """The gRPC server, its model manager and its pollers.

    Args:
        model_config_file: Path of models.config.
        host, port: Where to listen (port 0 picks a free one).
        file_system_poll_wait_seconds: How often base paths are scanned for new versions (0: never).
        model_config_file_poll_wait_seconds: How often models.config is re-read (0: never).
        max_workers: Size of the request thread pool.
        batching: Dynamic batching options (None: every request runs on its own).
        rest_api_port: REST port (0: no REST API).
        monitoring: MonitoringConfig (Prometheus metrics on the REST port).
        limits: Rows and elements a request may hold.
        allowed_model_roots: Directories a reload request may point base paths into, besides
            those holding the base paths of `model_config_file`.
        allow_version_labels_for_unavailable_models: Accept labels naming a version not loaded
            (otherwise a reload answers FAILED_PRECONDITION, as TensorFlow Serving does).
        session_config: The Sessions' options (thread pools), as --tensorflow_*_parallelism set them.
        group: This process's place among several sharing the ports (`serving.supervisor`); None: alone.

    Raises:
        tfs_config.ConfigError: A config file that cannot be used.
        OSError: A port that cannot be bound.
    """

    def __init__(self, model_config_file: str, host: str = "127.0.0.1", port: int = 8500,
                 file_system_poll_wait_seconds: float = 1.0, model_config_file_poll_wait_seconds: float = 0.0,
                 max_workers: int = 16, batching: Optional[BatchingOptions] = None, rest_api_port: int = 0,
                 monitoring=None, limits: RequestLimits = DEFAULT_LIMITS,
                 allowed_model_roots: Sequence[str] = (), allow_version_labels_for_unavailable_models: bool = False,
                 session_config: Optional[config_pb2.ConfigProto] = None, group: Optional[ProcessGroup] = None):
        self.config_path = Path(model_config_file)
        config = tfs_config.read_model_config(self.config_path)
        self.group = group
        self.grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # Alone, a second server on the same port must fail, not share it; in a group, all share it.
            ("grpc.so_reuseport", int(group is not None))])
        try:  # bind first: a port in use is reported before any model is loaded
            self.port = self.grpc.add_insecure_port(f"{host}:{port}")
            if group is not None:
                self.grpc.add_insecure_port(group.grpc_address(group.index))
        except RuntimeError as error:
            raise OSError(f"cannot listen on {host}:{port}: {error}; pick another --port") from None
        if self.port == 0:
            raise OSError(f"cannot listen on {host}:{port}; pick another --port")
        self.host = host
        scheduler = BatchScheduler(batching) if batching else None
        prometheus = monitoring.prometheus_config if monitoring is not None else None
        self.metrics = ServingMetrics() if prometheus is not None and prometheus.enable else None
        # Warmup runs through the Predict path, so the predictor exists before any version loads.
        self.predictions = Predictor(None, scheduler, self.metrics, limits)
        self._session_config = session_config
        self.models = ModelManager(config, load=self._load_and_warm_up)
        self.predictions.models = self.models
        self._stop = threading.Event()
        self._polls = [(file_system_poll_wait_seconds, self.models.refresh),
                       (model_config_file_poll_wait_seconds, self._reload_config)]
        roots = tfs_config.model_roots(config) + [Path(root) for root in allowed_model_roots]
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(self.predictions),
                                                                            self.grpc)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelService(self.models, roots, allow_version_labels_for_unavailable_models, group), self.grpc)
        for problem in ([] if allow_version_labels_for_unavailable_models else self.models.unavailable_labels()):
            log.warning("%s: requests by that label get NOT_FOUND until it loads", problem)
        metrics_path = (prometheus.path or DEFAULT_METRICS_PATH) if self.metrics else None
        self._own_metrics_server = None
        exposition = self._exposition
        if self.metrics is not None and group is not None and group.count > 1:  # a scrape counts the whole group
            self._own_metrics_server = group.serve_own_metrics(self._exposition)
            exposition = functools.partial(group.merged_exposition, self._exposition)
        self.rest = (RestServer(self.predictions, self.models, host, rest_api_port, self.metrics, metrics_path,
                                exposition, reuse_port=group is not None) if rest_api_port else None)

    def _exposition(self) -> bytes:
        return self.metrics.exposition(self.models)

    def _load_and_warm_up(self, name: str, version: int, path: Path) -> LoadedVersion:
        """Load a version as TensorFlow Serving does; it may serve only once its warmup requests succeed."""
        loaded = load_version(name, version, path, self._session_config)
        start, status = time.perf_counter(), "OK"
        try:
            count = self.predictions.warm_up(loaded)
        except BaseException as error:
            status = f"{status_code(error).name}: {error}"
            loaded.bundle.close()
            raise
        finally:
            if self.metrics is not None and (path / WARMUP_FILE).is_file():
                self.metrics.tfs.observe("/tensorflow/serving/model_warmup_latency", (str(path), status),
                                         (time.perf_counter() - start) * 1e6)
        if count:
            log.info("model %s version %d: %d warmup requests replayed", name, version, count)
        return loaded

    def _reload_config(self) -> None:
        try:
            self.models.set_config(tfs_config.read_model_config(self.config_path))
        except tfs_config.ConfigError as error:
            log.warning("keeping the previous model config: %s", error)

    def _poll(self, seconds: float, action) -> None:
        while not self._stop.wait(seconds):
            try:
                action()
            except Exception:  # noqa: BLE001 - a poll failure must not stop the server
                log.exception("poll failed")

    def start(self) -> "Server":
        """Serve gRPC (and REST), and start the pollers."""
        self.grpc.start()
        if self.rest:
            self.rest.start()
        for seconds, action in self._polls:
            if seconds > 0:
                threading.Thread(target=self._poll, args=(seconds, action), daemon=True).start()
        return self

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting requests; let those in flight finish (up to `grace` seconds)."""
        self._stop.set()
        if self.rest:
            self.rest.stop()
        if self._own_metrics_server is not None:
            self._own_metrics_server.shutdown()
            self._own_metrics_server.server_close()
        self.grpc.stop(grace).wait()
