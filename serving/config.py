"""TensorFlow Serving's configuration files, read with protobuf `text_format`.

`models.config` is a `ModelServerConfig`, whose message ships with
tensorflow-serving-api. The batching and monitoring messages do not ship in
any pip package, so their schemas (the fields this project uses, with
TensorFlow Serving's names and numbers) are declared below and built with
protobuf's descriptor API: a file that parses here parses in
`tensorflow_model_server` too.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2
from tensorflow_serving.config import model_server_config_pb2


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file and the problem."""


def _declare_messages():
    """BatchingParameters and MonitoringConfig, as TensorFlow Serving declares them."""
    f = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="rnn_serving/tf_serving_configs.proto", package="tensorflow.serving", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"])

    def message(name, fields):
        proto = file.message_type.add(name=name)
        for number, (field_name, kind, type_name, label) in enumerate(fields, start=1):
            if field_name is None:
                continue  # a field number this project does not use
            field = proto.field.add(name=field_name, number=number, type=kind, label=label or f.LABEL_OPTIONAL)
            if type_name:
                field.type_name = type_name

    int64_value, string_value, bool_value = (".google.protobuf.Int64Value", ".google.protobuf.StringValue",
                                             ".google.protobuf.BoolValue")
    message("BatchingParameters", [
        ("max_batch_size", f.TYPE_MESSAGE, int64_value, None),
        ("batch_timeout_micros", f.TYPE_MESSAGE, int64_value, None),
        ("thread_pool_name", f.TYPE_MESSAGE, string_value, None),
        ("num_batch_threads", f.TYPE_MESSAGE, int64_value, None),
        ("max_enqueued_batches", f.TYPE_MESSAGE, int64_value, None),
        ("allowed_batch_sizes", f.TYPE_INT64, None, f.LABEL_REPEATED),
        ("pad_variable_length_inputs", f.TYPE_BOOL, None, None),
        ("enable_large_batch_splitting", f.TYPE_MESSAGE, bool_value, None),
        ("max_execution_batch_size", f.TYPE_MESSAGE, int64_value, None),
    ])
    message("PrometheusConfig", [("enable", f.TYPE_BOOL, None, None), ("path", f.TYPE_STRING, None, None)])
    message("MonitoringConfig", [("prometheus_config", f.TYPE_MESSAGE, ".tensorflow.serving.PrometheusConfig", None)])

    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(file)
    return (message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")),
            message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig")))


BatchingParameters, MonitoringConfig = _declare_messages()
ModelServerConfig = model_server_config_pb2.ModelServerConfig


def parse(path: str | os.PathLike, message_class):
    """Parse a text-proto file into `message_class`.

    Raises:
        ConfigError: Missing file or a syntax error (with the line, as protobuf reports it).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror})") from None
    try:
        return text_format.Parse(text, message_class())
    except text_format.ParseError as error:
        raise ConfigError(f"{path}: {error}") from None


# A model name is a key, never a path: no separators, no "..", nothing a shell or URL would read twice.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def check_model_name(name: str) -> None:
    """Raises ConfigError unless `name` is a safe model name (letters, digits, `_ . -`, at most 128)."""
    if not MODEL_NAME.fullmatch(name) or ".." in name:
        raise ConfigError(f"model name {name!r} is not allowed: use letters, digits, '_', '-' and '.' "
                          "(at most 128, starting with a letter or digit, no '..')")


def validate_model_config(config: model_server_config_pb2.ModelServerConfig, source: str) -> None:
    """Every model needs a safe name and a base path, and names must be unique.

    Raises:
        ConfigError: Naming `source` (a file, or "reload request").
    """
    names = [model.name for model in config.model_config_list.config]
    if not names:
        raise ConfigError(f"{source}: model_config_list holds no model")
    for model in config.model_config_list.config:
        if not model.name or not model.base_path:
            raise ConfigError(f"{source}: every config needs a name and a base_path")
        try:
            check_model_name(model.name)
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}") from None
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"{source}: model name {duplicates[0]!r} appears twice")


def resolve_base_path(base_path: str, root: Path = Path(".")) -> Path:
    """A base path as the server will read it: relative ones from `root`, symlinks and `..` resolved."""
    path = Path(base_path)
    return Path(os.path.realpath(path if path.is_absolute() else root / path))


def check_base_paths_within(config: model_server_config_pb2.ModelServerConfig, roots: Iterable[Path],
                            source: str, root: Path = Path(".")) -> None:
    """Refuse a config whose base paths leave the allowed model roots (no path traversal by reload).

    Raises:
        ConfigError: Naming the model, its resolved base path and the roots.
    """
    roots = [Path(os.path.realpath(r)) for r in roots]
    for model in config.model_config_list.config:
        path = resolve_base_path(model.base_path, root)
        if not any(path == r or path.is_relative_to(r) for r in roots):
            raise ConfigError(f"{source}: base_path of model {model.name!r} resolves to {path}, outside the "
                              f"allowed model roots ({', '.join(map(str, roots))}); start the server with "
                              "--allowed_model_root to allow another")


def model_roots(config: model_server_config_pb2.ModelServerConfig, root: Path = Path(".")) -> list[Path]:
    """The directories holding the base paths of a trusted config (the file the server started with).

    A base path directly under the filesystem root is its own root: "/" would allow everything.
    """
    paths = [resolve_base_path(model.base_path, root) for model in config.model_config_list.config]
    return sorted({path.parent if path.parent != path.parent.parent else path for path in paths})


def read_model_config(path: str | os.PathLike) -> model_server_config_pb2.ModelServerConfig:
    """Read and validate models.config."""
    config = parse(path, ModelServerConfig)
    validate_model_config(config, str(path))
    return config


def read_batching_parameters(path: str | os.PathLike):
    """Read batching.config (a BatchingParameters text proto)."""
    return parse(path, BatchingParameters)


def read_monitoring_config(path: str | os.PathLike):
    """Read monitoring.config (a MonitoringConfig text proto)."""
    return parse(path, MonitoringConfig)
