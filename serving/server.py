"""An embedded model server that speaks TensorFlow Serving's gRPC API.

    python -m serving.server --model_config_file serving/models.config --port 8500

The real `tensorflow_model_server` ships as a Docker image or an apt package,
not on PyPI; this server answers the same `tensorflow.serving.PredictionService`
and `ModelService` calls, built on the official protos of tensorflow-serving-api,
so one client works against both. Flags are named as TensorFlow Serving names
them. It reads SavedModels and configs only.

Versions are loaded as TensorFlow Serving loads them: the session-based
loader (restore op, init op), then the warmup file replayed; a version whose
warmup fails never serves (`serving.saved_model_bundle`). With
`--enable_batching`, every Predict obeys BatchingSession's rules and codes.
Errors carry TensorFlow Serving's codes: NOT_FOUND for an unknown model,
version, label or signature, INVALID_ARGUMENT for a missing or unknown input,
a wrong dtype or shape, or a value the model refuses, each with a message
naming the input.

This module is the command: its flags and `main`. The server itself is
`serving.lifecycle.Server`; `main` imports it (and so TensorFlow) only once
the flags are parsed and TensorFlow's start-up notices are quieted
(`serving.quiet`), so that a bad flag or a missing file is answered first.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Optional, Sequence

from serving import config as tfs_config
from serving import quiet, supervisor
from serving.batching import BatchingOptions
from serving.limits import RequestLimits
from serving.process_group import ProcessGroup


def _flag(value: str) -> bool:
    """TensorFlow Serving's boolean flags: --flag, --flag=true, --flag=false."""
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = quiet.ArgumentParser(prog="python -m serving.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_config_file", default="serving/models.config")
    parser.add_argument("--port", type=int, default=8500, help="gRPC port (0: any free port)")
    parser.add_argument("--rest_api_port", type=int, default=0, help="REST port (0: no REST API)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind, gRPC and REST (default loopback only; 0.0.0.0: every interface)")
    parser.add_argument("--allowed_model_root", action="append", default=[],
                        help="a directory reload requests may point base paths into (repeatable); the "
                             "directories holding models.config's base paths are always allowed")
    parser.add_argument("--allow_version_labels_for_unavailable_models", nargs="?", const=True, default=False,
                        type=_flag, help="accept version labels naming a version that is not loaded")
    parser.add_argument("--max_request_rows", type=int, default=RequestLimits.max_rows,
                        help="rows (batch size) one request may send per input (0, the default: no limit)")
    parser.add_argument("--max_request_elements", type=int, default=RequestLimits.max_elements,
                        help="elements one request may send, all inputs together")
    parser.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0)
    parser.add_argument("--model_config_file_poll_wait_seconds", type=float, default=0.0)
    parser.add_argument("--max_workers", type=int, default=None,
                        help="request threads (default 16; with batching, at least twice max_batch_size, as "
                             "TensorFlow Serving advises: a thread waits in the batch it joined)")
    parser.add_argument("--monitoring_config_file", default=None,
                        help="MonitoringConfig text proto: Prometheus metrics on the REST port")
    parser.add_argument("--tensorflow_intra_op_parallelism", type=int, default=0,
                        help="threads per TensorFlow op (0: TensorFlow's choice)")
    parser.add_argument("--tensorflow_inter_op_parallelism", type=int, default=0,
                        help="TensorFlow ops run at once (0: TensorFlow's choice)")
    parser.add_argument("--enable_batching", nargs="?", const=True, default=False, type=_flag,
                        help="merge concurrent requests into one model call (also --enable_batching=true)")
    parser.add_argument("--batching_parameters_file", default=None,
                        help="BatchingParameters text proto (default: serving/batching.config's defaults)")
    parser.add_argument("--server_processes", type=int, default=1,
                        help="processes serving the same ports (SO_REUSEPORT; one per core, as gRPC advises for "
                             "Python servers): each loads every model, reloads reach all, metrics sum all "
                             "(serving.supervisor)")
    parser.add_argument("--process_group", type=ProcessGroup.parse, default=None,
                        help=argparse.SUPPRESS)  # set by serving.supervisor for each of its processes
    quiet.add_verbose_flag(parser)
    return parser


def read_options(args: argparse.Namespace) -> tuple[Optional[BatchingOptions], object]:
    """The batching options and the MonitoringConfig (or None) the flags ask for.

    Raises:
        tfs_config.ConfigError: A file that cannot be used.
    """
    batching = None
    if args.enable_batching:
        batching = BatchingOptions()
        if args.batching_parameters_file:
            batching = BatchingOptions.from_proto(tfs_config.read_batching_parameters(args.batching_parameters_file))
    monitoring = tfs_config.read_monitoring_config(args.monitoring_config_file) if args.monitoring_config_file else None
    return batching, monitoring


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Serve until SIGTERM or SIGINT.

    Returns:
        0 once stopped; 2 for a config file that cannot be used or a port that cannot be bound.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.server_processes < 1:
        print(f"error: --server_processes must be at least 1, got {args.server_processes}", file=sys.stderr)
        return 2
    if args.server_processes > 1:  # a supervisor, without TensorFlow: the files are checked once, here
        try:
            tfs_config.read_model_config(Path(args.model_config_file))
            read_options(args)
        except tfs_config.ConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        return supervisor.serve(argv, args.host, args.port, args.rest_api_port, args.server_processes)
    quiet.import_tensorflow(args.verbose)
    # Only now, TensorFlow being imported quietly: the server's modules import it.
    import tensorflow as tf
    from tensorflow.core.protobuf import config_pb2

    from serving.lifecycle import Server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("tensorflow").setLevel(logging.WARNING)  # the loader's "Restoring parameters" lines
    # Before any model loads: TensorFlow fixes its thread pools on first use.
    tf.config.threading.set_intra_op_parallelism_threads(args.tensorflow_intra_op_parallelism)
    tf.config.threading.set_inter_op_parallelism_threads(args.tensorflow_inter_op_parallelism)
    try:
        batching, monitoring = read_options(args)
        max_workers = args.max_workers or max(16, 2 * batching.max_batch_size if batching else 0)
        server = Server(args.model_config_file, args.host, args.port, args.file_system_poll_wait_seconds,
                        args.model_config_file_poll_wait_seconds, max_workers, batching,
                        args.rest_api_port, monitoring,
                        RequestLimits(args.max_request_rows, args.max_request_elements),
                        args.allowed_model_root, args.allow_version_labels_for_unavailable_models,
                        config_pb2.ConfigProto(intra_op_parallelism_threads=args.tensorflow_intra_op_parallelism,
                                               inter_op_parallelism_threads=args.tensorflow_inter_op_parallelism),
                        args.process_group).start()
    except (tfs_config.ConfigError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    loaded = {name: server.models.available_versions(name) for name in server.models.names()}
    rest = f" (REST on port {server.rest.port})" if server.rest else ""
    print(f"serving on {server.host}:{server.port}{rest}: " +
          ", ".join(f"{name} {versions or 'no version yet'}" for name, versions in loaded.items()), flush=True)
    stopped.wait()
    server.stop()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
