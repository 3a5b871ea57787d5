"""The directory of one training run, `runs/<run-id>/`.

    runs/<run-id>/
      tensorboard/         TensorBoard logs (`tensorboard --logdir runs`)
      history.csv          one row per epoch (CSVLogger)
      best.weights.h5      weights of the best validation loss so far
      gradients.csv        the gradient recorder's measurements, one row per kept step
      gradient_layers.json which variable belongs to which layer, initial weight norms
      backup/              BackupAndRestore state: rerun with the same run id
                           and a killed run resumes where it stopped
      trained.json         training finished (killed later, in evaluation or
                           export, the rerun does not train again)
      summary.json         written once, when the run has finished
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Optional

from model.config import InvalidSetting


def finite_or_null(value: Any) -> Any:
    """A copy of nested dicts and lists with every NaN or infinite float replaced by None."""
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclasses.dataclass(frozen=True)
class RunDirectory:
    """Paths of one training run.

    Attributes:
        path: The run's directory, `<runs_dir>/<run_id>`.
    """

    path: Path

    @classmethod
    def open(cls, runs_dir: str, run_id: Optional[str], default_name: str) -> "RunDirectory":
        """Create a new run directory, or reopen an unfinished one to resume it.

        Args:
            runs_dir: Parent directory of all runs.
            run_id: Directory name; None picks `<timestamp>-<default_name>`.
            default_name: Suffix of generated run ids (e.g. the model name).

        Returns:
            The run directory, created on disk.

        Raises:
            InvalidSetting: If `run_id` names a run that has already finished.
        """
        if run_id is None:  # a new run: never reuse a directory, even within the same second
            stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{default_name}"
            run_id = next(name for name in (stem, *(f"{stem}-{i}" for i in range(2, 10_000)))
                          if not (Path(runs_dir) / name).exists())
        run = cls(Path(runs_dir) / run_id)
        if run.summary_json.exists():
            raise InvalidSetting(f"run {run.path} has already finished; pick a new {{run_id}} "
                             "(reusing one only resumes an interrupted run)")
        if run.path.exists() and not run.path.is_dir():
            raise InvalidSetting(f"run directory {run.path} is a file; pick another {{run_id}} or {{runs_dir}}")
        try:
            run.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise InvalidSetting(f"cannot create run directory {run.path} ({error.strerror}); "
                                 "pass a writable {runs_dir}") from None
        return run

    @property
    def run_id(self) -> str:
        return self.path.name

    # The files of the run (see the layout at the top of this module).
    tensorboard = property(lambda self: self.path / "tensorboard")
    history_csv = property(lambda self: self.path / "history.csv")
    best_weights = property(lambda self: self.path / "best.weights.h5")
    backup = property(lambda self: self.path / "backup")
    trained_json = property(lambda self: self.path / "trained.json")
    summary_json = property(lambda self: self.path / "summary.json")

    @property
    def is_resuming(self) -> bool:
        """True when an interrupted run left BackupAndRestore state behind."""
        return self.backup.is_dir() and any(self.backup.iterdir())

    def best_val_loss_so_far(self) -> float:
        """Lowest validation loss in history.csv (inf for a new run)."""
        if not self.history_csv.exists():
            return math.inf
        with self.history_csv.open() as f:
            losses = [float(row["val_loss"]) for row in csv.DictReader(f) if row.get("val_loss")]
        return min(losses, default=math.inf)

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write summary.json atomically (a reader never sees half a file).

        NaN and infinities (a diverged loss, an overflowed ratio) are written
        as null: the file stays strict JSON that any tool can read.
        """
        temporary = self.summary_json.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(finite_or_null(summary), indent=2, sort_keys=True, default=str,
                                        allow_nan=False) + "\n")
        os.replace(temporary, self.summary_json)
