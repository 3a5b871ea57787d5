"""Several server processes on the same ports: gRPC's advice for Python servers, one process per core.

    python -m serving.server --model_config_file serving/models.config --port 8500 --server_processes 2

A Python process runs one thread of Python at a time, and this server spends
about as long in gRPC's and its own Python as in the model, so on a machine
with more cores than one process's GIL can feed, more processes serve more.
(On this project's 2-core machine, with the clients on the same cores, the
CPU runs out first: two processes served no more than one,
docs/benchmarks.md#serving.) As
in `grpc/examples/python/multiprocessing`, the supervisor reserves the ports
(a socket bound with SO_REUSEPORT, never listening: a server without the
option cannot take the port meanwhile) and starts `--server_processes` copies
of the server that bind the same ports; the kernel spreads connections, not
requests, over them, so clients need several connections (a gRPC channel is
one; gRPC Python's channels share one per target unless created with
`("grpc.use_local_subchannel_pool", 1)`). Each process loads every model
(N times the memory); reloads and metrics span the group (`serving.process_group`).

A process that dies stops the group (exit 1), as a crashed
`tensorflow_model_server` stops: the processes must not disagree on what they
serve, so the whole server is restarted from outside (Kubernetes, Docker's
restart policy). This module imports neither TensorFlow nor the server: the
processes do.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Iterator, Sequence

from serving.process_group import ProcessGroup

PR_SET_PDEATHSIG = 1  # <sys/prctl.h>
STOP_SECONDS = 30  # a process still running this long after SIGTERM is killed


@contextlib.contextmanager
def reserved_port(host: str, port: int) -> Iterator[int]:
    """Hold `host:port` (0: a free one) for processes that bind it with SO_REUSEPORT; yields the port.

    Raises:
        OSError: The port is taken, with what to do about it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {error.strerror}; pick another port") from None
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def serve(argv: Sequence[str], host: str, port: int, rest_api_port: int, processes: int) -> int:
    """Run `processes` servers on one gRPC (and REST) port until SIGTERM or SIGINT.

    Args:
        argv: The server's flags, as given; each process gets them with its ports and its place in the group.
        host, port, rest_api_port: As the flags set them (0: a free port; REST 0: none).
        processes: How many.

    Returns:
        0 once stopped; 2 for a port that cannot be bound or a process that could not start
        (it says why); 1 if a process died while serving.
    """
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    with contextlib.ExitStack() as stack:
        try:
            port = stack.enter_context(reserved_port(host, port))
            rest_port = stack.enter_context(reserved_port(host, rest_api_port)) if rest_api_port else 0
        except OSError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rnn-serving-")))
        group = [ProcessGroup(directory, index, processes) for index in range(processes)]
        children = [_start(argv, port, rest_port, member) for member in group]
        stack.callback(_stop_all, children)
        first_lines = [child.stdout.readline() for child in children]  # each says it serves, or it failed
        if not all(line.startswith("serving on ") for line in first_lines):
            return 2  # the process that failed has said why on stderr
        for child in children:  # their later lines ("stopped") are not the group's
            threading.Thread(target=child.stdout.read, daemon=True).start()
        rest = f" (REST on port {rest_port})" if rest_port else ""
        models = first_lines[0].split(": ", 1)[1].rstrip("\n")  # "serving on HOST:PORT[ (REST...)]: MODELS"
        print(f"serving on {host}:{port}{rest} from {processes} processes: {models}", flush=True)
        while not stopped.wait(0.5):
            for member, child in zip(group, children):
                if child.poll() is not None:
                    print(f"error: server process {member.index} exited with code {child.returncode}; stopping "
                          "the others (restart the server)", file=sys.stderr, flush=True)
                    return 1
    print("stopped", flush=True)
    return 0


def _start(argv: Sequence[str], port: int, rest_port: int, member: ProcessGroup) -> subprocess.Popen:
    # Later flags override earlier ones: the ports as reserved, one process each.
    # Their own session: a terminal's Ctrl-C reaches the supervisor only, which stops them in order.
    return subprocess.Popen([sys.executable, "-m", "serving.server", *argv, "--port", str(port),
                             "--rest_api_port", str(rest_port), "--server_processes", "1",
                             "--process_group", member.flag()], stdout=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=_die_with_parent)


def _die_with_parent() -> None:
    """In the child, before it runs: SIGTERM when the supervisor dies, even by SIGKILL (Linux's PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _stop_all(children: list[subprocess.Popen]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
