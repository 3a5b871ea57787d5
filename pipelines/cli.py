"""Command-line plumbing shared by the pipelines: flags generated from the config dataclasses.

Every setting is a field of a dataclass in `model/config.py`, with its help
text; `add_config_flags` turns the fields into argparse flags (`--seq-len` for
`seq_len`, unless the field names another flag) and `config_from_args` turns
the parsed flags back into the validated dataclass. The model, optimiser,
training and monitor flags are added by the `add_*_flags` helpers, the same
for both pipelines.

A bad value is a one-line error: a setting's message names the field
(`InvalidSetting`); this module alone shows the flag instead. `run_main` prints
a `UsageError` as one stderr line with exit status 2, a diverged training run
(NaN or Inf) as its diagnosis with status 1. `import_tensorflow` turns
oneDNN on and keeps TensorFlow's C++ start-up notices off the terminal,
unless `--verbose`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from model import config as settings
from model.config import (
    InvalidSetting,
    ModelConfig,
    MonitorConfig,
    OptimizerConfig,
    TrainingConfig,
    TrainingDiverged,
    UsageError,
)

_LIST_TYPES = {"tuple[float, ...]": float, "tuple[str, ...]": str}
_SCALAR_TYPES = {"int": int, "float": float, "str": str}


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is a one-line error with exit status 2."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        raise UsageError(f"{message} (see --help)")


def flag_of(field: dataclasses.Field) -> str:
    """The flag that sets a field: its own `flag`, else `--<name-with-dashes>`."""
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def _setting_flags() -> dict[str, str]:
    """Field name -> the flag that sets it, for every config dataclass: how the command line names a setting."""
    configs = [value for value in vars(settings).values()
               if isinstance(value, type) and dataclasses.is_dataclass(value)]
    flags = {field.name: flag_of(field) for config in configs for field in dataclasses.fields(config)
             if field.metadata.get("cli", True)}
    return {**flags, "clip_value": "--clipnorm", "clipnorm": "--clipnorm", "output": "--output"}


def add_config_flags(parser: argparse.ArgumentParser, config_type: type, title: str, defaults: Any = None,
                     exclude: Sequence[str] = ()) -> None:
    """One flag per field of a config dataclass, in a group of its own.

    Args:
        parser: The pipeline's parser.
        config_type: A dataclass of `model.config`.
        title: The group's heading in `--help`.
        defaults: An instance whose values are the defaults (a pipeline's own,
            e.g. 20 epochs for prices); None: the dataclass's.
        exclude: Fields with no flag in this pipeline.
    """
    defaults = defaults if defaults is not None else config_type()
    group = parser.add_argument_group(title)
    for field in dataclasses.fields(config_type):
        if not field.metadata.get("cli", True) or field.name in exclude:
            continue
        flag, default, help_text = flag_of(field), getattr(defaults, field.name), field.metadata.get("help", "")
        if field.type == "bool":  # a switch: --bidirectional turns on, --no-grad-monitor turns off
            group.add_argument(flag, dest=field.name, action="store_false" if default else "store_true",
                               help=help_text)
        elif field.type in _LIST_TYPES:  # parsed in config_from_args, for a message that names the flag
            group.add_argument(flag, dest=field.name, default=None, help=help_text)
        else:
            kind = _SCALAR_TYPES[field.type.removeprefix("Optional[").removesuffix("]")]
            shown = "" if default is None else f" (default {default})"
            group.add_argument(flag, dest=field.name, type=kind, default=default, help=help_text + shown)
        if field.type not in _LIST_TYPES:
            parser.set_defaults(**{field.name: default})


def _parse_list(field: dataclasses.Field, raw: Optional[str]) -> tuple:
    if raw is None:
        return field.default
    kind = _LIST_TYPES[field.type]
    try:
        return tuple(kind(item.strip()) for item in raw.split(",") if item.strip())
    except ValueError:
        example = field.metadata.get("example")
        raise UsageError(f"{flag_of(field)} must be comma-separated numbers"
                         f"{f' such as {example}' if example else ''}, got {raw!r}") from None


def config_from_args(config_type: type, args: argparse.Namespace, **fields: Any) -> Any:
    """The validated config from the parsed flags.

    Args:
        config_type: The dataclass.
        args: From a parser that `add_config_flags` filled.
        **fields: Values of fields that have no flag of their own (or another source).

    Raises:
        UsageError: A bad value, naming its flag.
    """
    values = {}
    for field in dataclasses.fields(config_type):
        if field.name in fields or not field.metadata.get("cli", True) or not hasattr(args, field.name):
            continue
        raw = getattr(args, field.name)
        values[field.name] = _parse_list(field, raw) if field.type in _LIST_TYPES else raw
    config = config_type(**values, **fields)
    with flag_names():
        config.validate()
    return config


class flag_names:
    """A context in which an `InvalidSetting` is re-raised as a `UsageError` naming flags, not fields.

    Args:
        extra: More field -> name pairs (e.g. the clipping flag in use).
    """

    def __init__(self, **extra: str):
        self.extra = extra

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if isinstance(error, InvalidSetting):
            raise UsageError(error.with_names({**SETTING_FLAGS, **self.extra})) from None
        return False


SETTING_FLAGS = _setting_flags()


def add_model_flags(parser: argparse.ArgumentParser, default_units: int = 256, embedding: bool = False) -> None:
    add_config_flags(parser, ModelConfig, "model", ModelConfig(units=default_units),
                     exclude=() if embedding else ("embedding_dim",))


def add_optimizer_flags(parser: argparse.ArgumentParser, defaults: Optional[OptimizerConfig] = None) -> None:
    title = "optimiser and gradient clipping (clipnorm 1.0 by default)"
    add_config_flags(parser, OptimizerConfig, title, defaults)
    group = next(g for g in parser._action_groups if g.title == title)
    clipping = group.add_mutually_exclusive_group()
    clipping.add_argument("--clipnorm", type=float, default=None,
                          help="rescale each gradient to this norm (default 1.0)")
    clipping.add_argument("--global-clipnorm", type=float, default=None,
                          help="rescale all gradients together to this global norm")
    clipping.add_argument("--clipvalue", type=float, default=None, help="clip each gradient element")
    clipping.add_argument("--no-clip", action="store_true", help="turn gradient clipping off")


def add_training_flags(parser: argparse.ArgumentParser, defaults: Optional[TrainingConfig] = None) -> None:
    """Epochs, batches, early stopping, time budget, run directory and the gradient monitor."""
    add_config_flags(parser, MonitorConfig, "gradient health (monitored at every step by default)")
    add_config_flags(parser, TrainingConfig, "training", defaults)
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's C++ start-up notices (as TF_CPP_MIN_LOG_LEVEL=0 does)")


def model_config(args: argparse.Namespace) -> ModelConfig:
    return config_from_args(ModelConfig, args)


def optimizer_config(args: argparse.Namespace) -> OptimizerConfig:
    clip, value = "clipnorm", 1.0
    for name in ("clipnorm", "global_clipnorm", "clipvalue"):
        if getattr(args, name) is not None:
            clip, value = name, getattr(args, name)
    if args.no_clip:
        clip = "none"
    with flag_names(clip_value="--" + clip.replace("_", "-")):
        return config_from_args(OptimizerConfig, args, clip=clip, clip_value=value)


def training_config(args: argparse.Namespace) -> TrainingConfig:
    return config_from_args(TrainingConfig, args, monitor=config_from_args(MonitorConfig, args))


def existing_file(path: str | os.PathLike, flag: str, expected: str) -> Path:
    """The path of an input file that must exist and not be a directory.

    Args:
        path: What the user passed.
        flag: The flag it came from, for the message (e.g. "--corpus").
        expected: What to pass instead, for the message (e.g. "a UTF-8 text file").

    Raises:
        UsageError: If the path is missing or a directory.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{flag} {path} does not exist; pass {expected}")
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a directory; pass {expected}")
    return path


def import_tensorflow(verbose: bool = False) -> None:
    """Import TensorFlow for training, once, from each entry point: oneDNN on, its C++ start-up notices off.

    oneDNN's CPU kernels (TF_ENABLE_ONEDNN_OPTS=1, unless the user set it) are
    off by default in this TensorFlow build; with them a GRU-256 trains about
    1.3x faster on 2 cores (bench.text's peers benchmark: 20.9k -> 26.1k
    chars/s, PyTorch 27-28k), an LSTM-256 about the same. The saved graphs do
    not change: oneDNN rewrites them when they run.

    TensorFlow 2.21 writes its CUDA-probing lines while it is imported, before
    absl logging is initialised, so even TF_CPP_MIN_LOG_LEVEL=3 lets them
    through: they are caught by pointing stderr at a file for the import alone
    (and shown if the import fails). After it, TF_CPP_MIN_LOG_LEVEL=3 (unless
    the user set a level) hides the rest (oneDNN, cuInit). Nothing is hidden
    with `verbose` or TF_CPP_MIN_LOG_LEVEL=0. The server's commands do the same
    (`serving/quiet.py`: serving shares no code with training).
    """
    if "tensorflow" in sys.modules:  # imported already (a test calling `main`): too late for either
        return
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if verbose or os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0":
        importlib.import_module("tensorflow")
        return
    sys.stderr.flush()
    saved, captured = os.dup(2), tempfile.TemporaryFile()
    try:
        os.dup2(captured.fileno(), 2)
        importlib.import_module("tensorflow")
    except BaseException:
        os.dup2(saved, 2)
        captured.seek(0)
        sys.stderr.write(captured.read().decode("utf-8", "replace"))  # what TensorFlow said before failing
        raise
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        captured.close()


def run_main(main: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]] = None) -> int:
    """Run a pipeline's `main`: a `UsageError` becomes one stderr line and exit code 2, a diverged run exit code 1."""
    try:
        with flag_names():
            return main(argv)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
