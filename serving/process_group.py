"""One server process among several that share its ports (`--server_processes`, `serving.supervisor`).

Each process of the group loads every model and answers whichever
connections the kernel gives it. What one process is told, the others must
know, and what one is asked about, all must answer; so beside the shared ports each
process listens on two private Unix sockets in the group's directory:

- gRPC (`grpc-<index>.sock`): a reload request a process accepts is passed
  on, unchanged, to the others' ModelService (the official proto), marked
  with `FORWARDED_METADATA` so that they do not pass it on again;
- HTTP (`metrics-<index>.sock`): the process's own Prometheus metrics, which
  the process answering a scrape adds to its own (`merge_expositions`), so
  one scrape counts every request the group answered.
"""

from __future__ import annotations

import dataclasses
import http.client
import http.server
import socket
import socketserver
import threading
from concurrent import futures
from pathlib import Path
from typing import Callable

import grpc

from serving.metrics import merge_expositions

FORWARDED_METADATA = ("rnn-serving-forwarded", "1")  # a reload passed on by a sibling: apply it, pass it on no further
RELOAD_TIMEOUT_SECONDS = 600  # a sibling loads every model of the new config before it answers


@dataclasses.dataclass(frozen=True)
class ProcessGroup:
    """Where a process stands in its group.

    Attributes:
        directory: The group's private directory (its Unix sockets).
        index: This process's number, 0 to count - 1.
        count: Processes in the group.
    """

    directory: Path
    index: int
    count: int

    @classmethod
    def parse(cls, flag: str) -> "ProcessGroup":
        """The group from its `--process_group DIRECTORY,INDEX,COUNT` flag (the supervisor writes it)."""
        directory, index, count = flag.rsplit(",", 2)
        return cls(Path(directory), int(index), int(count))

    def flag(self) -> str:
        return f"{self.directory},{self.index},{self.count}"

    def grpc_address(self, index: int) -> str:
        return f"unix:{self.directory / f'grpc-{index}.sock'}"

    def metrics_socket(self, index: int) -> Path:
        return self.directory / f"metrics-{index}.sock"

    def others(self) -> list[int]:
        return [index for index in range(self.count) if index != self.index]

    def forward_reload(self, request) -> None:
        """Pass a reload this process applied (a ReloadConfigRequest) on to every other process, at once.

        Returns once every process has applied it.

        Raises:
            ServingError: The first failure, with its code, naming the process that failed.
        """
        with futures.ThreadPoolExecutor(max_workers=max(1, self.count - 1)) as pool:
            failures = [failure for failure in pool.map(lambda index: self._reload(index, request), self.others())
                        if failure is not None]
        if failures:
            raise failures[0]

    def _reload(self, index: int, request):
        # Imported here: the supervisor imports this module, and these import TensorFlow.
        from tensorflow_serving.apis import model_service_pb2_grpc

        from serving.models import ServingError

        with grpc.insecure_channel(self.grpc_address(index)) as channel:
            try:
                model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
                    request, timeout=RELOAD_TIMEOUT_SECONDS, metadata=[FORWARDED_METADATA], wait_for_ready=True)
            except grpc.RpcError as error:
                return ServingError(error.code(), f"server process {index}: {error.details()}")
        return None

    def merged_exposition(self, own: Callable[[], bytes]) -> bytes:
        """This process's metrics plus every other process's, as one exposition."""
        texts = [own().decode("utf-8")] + [self._peer_exposition(index) for index in self.others()]
        return merge_expositions(texts).encode("utf-8")

    def _peer_exposition(self, index: int) -> str:
        connection = _UnixHTTPConnection(self.metrics_socket(index))
        try:
            connection.request("GET", "/metrics")
            return connection.getresponse().read().decode("utf-8")
        finally:
            connection.close()

    def serve_own_metrics(self, own: Callable[[], bytes]) -> "_MetricsSocketServer":
        """Answer the other processes' requests for this process's metrics, on its private socket."""
        handler = type("Handler", (_OwnMetricsHandler,), {"exposition": staticmethod(own)})
        server = _MetricsSocketServer(str(self.metrics_socket(self.index)), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


def forwarded(context: grpc.ServicerContext) -> bool:
    """Whether a call came from a sibling process (and must not be passed on again)."""
    return FORWARDED_METADATA in tuple(context.invocation_metadata())


class _MetricsSocketServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class _OwnMetricsHandler(http.server.BaseHTTPRequestHandler):
    exposition: Callable[[], bytes]

    def address_string(self) -> str:  # a Unix socket's peer has no address
        return "sibling"

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        data = self.exposition()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float = 30):
        super().__init__("localhost", timeout=timeout)
        self.path = str(path)

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)
