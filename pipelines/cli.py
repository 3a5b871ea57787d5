"""Command-line plumbing shared by the pipelines.

Each pipeline adds its data flags; the model, optimiser and training flags
are declared once here and turned into the dataclasses of `model.config`.
`run_main` turns a `UsageError` into one line on stderr and exit status 2,
and a diverged training run (NaN or Inf) into its diagnosis and status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from model.config import (
    CELLS,
    LR_SCHEDULES,
    STRATEGIES,
    ModelConfig,
    MonitorConfig,
    OptimizerConfig,
    TrainingConfig,
    TrainingDiverged,
    UsageError,
)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is a one-line error with exit status 2."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        raise UsageError(f"{message} (see --help)")


def add_model_flags(parser: argparse.ArgumentParser, default_units: int = 256) -> None:
    group = parser.add_argument_group("model")
    # Not `choices=`: an unknown cell gets the same one-line error as every other bad value.
    group.add_argument("--cell", default="lstm", help=f"recurrent layer: {' | '.join(CELLS)} (default lstm)")
    group.add_argument("--units", type=int, default=default_units, help="width of each recurrent layer")
    group.add_argument("--layers", type=int, default=1, help="number of stacked recurrent layers")
    group.add_argument("--dropout", type=float, default=0.0, help="dropout after each recurrent layer")


def add_optimizer_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("optimiser and gradient clipping (clipnorm 1.0 by default)")
    group.add_argument("--learning-rate", type=float, default=2e-3)
    group.add_argument("--lr-schedule", default="constant", help=" | ".join(LR_SCHEDULES))
    group.add_argument("--lr-half-life-steps", type=int, default=1000,
                       help="half-life of the exponential schedule, in steps")
    clipping = group.add_mutually_exclusive_group()
    clipping.add_argument("--clipnorm", type=float, default=None,
                          help="rescale each gradient to this norm (default 1.0)")
    clipping.add_argument("--global-clipnorm", type=float, default=None,
                          help="rescale all gradients together to this global norm")
    clipping.add_argument("--clipvalue", type=float, default=None, help="clip each gradient element")
    clipping.add_argument("--no-clip", action="store_true", help="turn gradient clipping off")


def add_training_flags(parser: argparse.ArgumentParser) -> None:
    """Epochs, batches, early stopping, time budget, run directory and the gradient monitor."""
    add_monitor_flags(parser)
    group = parser.add_argument_group("training")
    group.add_argument("--epochs", type=int, default=10)
    group.add_argument("--batch-size", type=int, default=64)
    group.add_argument("--steps-per-epoch", type=int, default=None)
    group.add_argument("--patience", type=int, default=3,
                       help="early-stopping patience in epochs (0: off)")
    group.add_argument("--time-budget-minutes", type=float, default=None,
                       help="stop training after this much wall time")
    group.add_argument("--seed", type=int, default=1337)
    group.add_argument("--strategy", default="default", help=f"{' | '.join(STRATEGIES)}: one device, every "
                       "local GPU, or several workers configured by TF_CONFIG (see model/distribute.py)")
    group.add_argument("--runs-dir", default="runs", help="parent of run directories")
    group.add_argument("--run-id", default=None,
                       help="run directory name; reuse an interrupted run's id to resume it")


def add_monitor_flags(parser: argparse.ArgumentParser) -> None:
    defaults = MonitorConfig()
    group = parser.add_argument_group("gradient health (monitored at every step by default)")
    group.add_argument("--no-grad-monitor", action="store_true", help="turn the gradient monitor off")
    group.add_argument("--grad-every", type=int, default=defaults.every,
                       help="keep the gradient measurements of every N-th step (NaN is checked at every step)")
    group.add_argument("--exploding-norm", type=float, default=defaults.exploding_norm,
                       help="pre-clipping gradient norm that counts as large (default %(default)s)")
    group.add_argument("--exploding-share", type=float, default=defaults.exploding_share,
                       help="warn of exploding gradients when this share of recent steps is large")
    group.add_argument("--weight-growth", type=float, default=defaults.weight_growth,
                       help="warn when a recurrent kernel's norm grows by more than this factor")
    group.add_argument("--vanishing-ratio", type=float, default=defaults.vanishing_ratio,
                       help="warn of vanishing gradients when the first recurrent layer's gradient is below "
                            "this fraction of the output layer's (and the loss is flat)")
    group.add_argument("--vanishing-floor", type=float, default=defaults.vanishing_floor,
                       help="...or below this absolute norm")
    group.add_argument("--vanishing-time-ratio", type=float, default=defaults.vanishing_time_ratio,
                       help="...or when the last step's gradient reaching the first step of a sequence is "
                            "below this fraction of the last step's")
    group.add_argument("--flat-loss", type=float, default=defaults.flat_loss,
                       help="a loss that improved by less than this fraction counts as flat")


def monitor_config(args: argparse.Namespace) -> MonitorConfig:
    return MonitorConfig(
        enabled=not args.no_grad_monitor, every=args.grad_every, exploding_norm=args.exploding_norm,
        exploding_share=args.exploding_share, weight_growth=args.weight_growth,
        vanishing_ratio=args.vanishing_ratio, vanishing_floor=args.vanishing_floor,
        vanishing_time_ratio=args.vanishing_time_ratio, flat_loss=args.flat_loss)


def model_config(args: argparse.Namespace, **extra) -> ModelConfig:
    config = ModelConfig(cell=args.cell, units=args.units, layers=args.layers, dropout=args.dropout, **extra)
    config.validate()
    return config


def optimizer_config(args: argparse.Namespace) -> OptimizerConfig:
    clip, value = "clipnorm", 1.0
    for name in ("clipnorm", "global_clipnorm", "clipvalue"):
        if getattr(args, name) is not None:
            clip, value = name, getattr(args, name)
    if args.no_clip:
        clip = "none"
    config = OptimizerConfig(learning_rate=args.learning_rate, clip=clip, clip_value=value,
                             lr_schedule=args.lr_schedule, lr_half_life_steps=args.lr_half_life_steps)
    config.validate()
    return config


def training_config(args: argparse.Namespace) -> TrainingConfig:
    config = TrainingConfig(
        epochs=args.epochs, batch_size=args.batch_size, steps_per_epoch=args.steps_per_epoch,
        patience=args.patience, time_budget_minutes=args.time_budget_minutes, seed=args.seed,
        runs_dir=args.runs_dir, run_id=args.run_id, monitor=monitor_config(args),
        strategy=args.strategy)
    config.validate()
    return config


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


def run_main(main: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]] = None) -> int:
    """Run a pipeline's `main`: a `UsageError` becomes one stderr line and exit code 2, a diverged run exit code 1."""
    try:
        return main(argv)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
