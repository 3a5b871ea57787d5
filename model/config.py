"""Every setting of a training run, in one place.

Three small dataclasses describe a run: the network (`ModelConfig`), the
optimiser with its gradient clipping (`OptimizerConfig`) and the loop around
`Model.fit` (`TrainingConfig`). Both pipelines fill them from their command
line (see `pipelines/cli.py`) and hand them to `model.builders` and
`model.training`; nothing else decides a hyperparameter.

Each `validate()` raises `UsageError` with a one-line message that says what is
wrong and how to fix it, before TensorFlow is even imported.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

CELLS = ("simple_rnn", "lstm", "gru")
STRATEGIES = ("default", "mirrored", "multiworker")  # see model.distribute
CLIP_KINDS = ("clipnorm", "global_clipnorm", "clipvalue", "none")
LR_SCHEDULES = ("constant", "cosine", "exponential", "plateau")
TRANSFORMS = ("log_returns", "scaled")
SERIES_LOSSES = ("mse", "huber")
MAX_TOKENS_LIMIT = 10_000  # Tokens one generation request may ask for: bounds its work.


class UsageError(ValueError):
    """Bad input from the user: a one-line message saying what and how to fix.

    The command-line entry points print the message and exit with status 2,
    without a traceback.
    """


class TrainingDiverged(RuntimeError):
    """The loss or the gradients became NaN or Inf during training.

    The message is the gradient monitor's diagnosis: the step, the layer whose
    gradient went non-finite first, and a remedy. Command-line entry points
    print it and exit with status 1.
    """


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UsageError(message)


@dataclasses.dataclass
class ModelConfig:
    """Shape of a recurrent network.

    Attributes:
        cell: Kind of recurrent layer: `"simple_rnn"`, `"lstm"` or `"gru"`.
        units: Width of each recurrent layer.
        layers: Number of stacked recurrent layers.
        dropout: Dropout rate applied after each recurrent layer (0 disables).
            Applied between layers rather than inside the cell so that the
            layers keep their fused cuDNN kernels on a GPU.
        embedding_dim: Width of the token embedding (text models only).
    """

    cell: str = "lstm"
    units: int = 256
    layers: int = 1
    dropout: float = 0.0
    embedding_dim: int = 64

    def validate(self) -> None:
        _require(self.cell in CELLS,
                 f"unknown --cell {self.cell!r}: choose one of {', '.join(CELLS)}")
        _require(self.units > 0, f"--units must be a positive integer, got {self.units}")
        _require(self.layers > 0, f"--layers must be a positive integer, got {self.layers}")
        _require(0.0 <= self.dropout < 1.0,
                 f"--dropout must be in [0, 1), got {self.dropout}")
        _require(self.embedding_dim > 0,
                 f"--embedding-dim must be a positive integer, got {self.embedding_dim}")


@dataclasses.dataclass
class OptimizerConfig:
    """Adam with gradient clipping, and the learning-rate schedule.

    Attributes:
        learning_rate: Initial learning rate.
        clip: Which Keras clipping argument to set: `"clipnorm"` (each
            gradient tensor rescaled to norm <= `clip_value`), `"global_clipnorm"`
            (all gradients rescaled together), `"clipvalue"` (elementwise) or
            `"none"`. Clipping is on by default because exploding gradients are
            the classic failure of backpropagation through time.
        clip_value: The threshold for the chosen clipping.
        lr_schedule: `"constant"`, `"cosine"` (decay to 0 over the run),
            `"exponential"` (halve every `lr_half_life_steps` steps) or
            `"plateau"` (halve when the validation loss stalls).
        lr_half_life_steps: Half-life of the exponential schedule.
    """

    learning_rate: float = 2e-3
    clip: str = "clipnorm"
    clip_value: float = 1.0
    lr_schedule: str = "constant"
    lr_half_life_steps: int = 1000

    def validate(self) -> None:
        _require(self.learning_rate > 0,
                 f"--learning-rate must be > 0, got {self.learning_rate}")
        _require(self.clip in CLIP_KINDS,
                 f"unknown clipping {self.clip!r}: choose one of {', '.join(CLIP_KINDS)}")
        _require(self.clip == "none" or self.clip_value > 0,
                 f"the --{self.clip.replace('_', '-')} threshold must be > 0, got {self.clip_value}")
        _require(self.lr_schedule in LR_SCHEDULES,
                 f"unknown --lr-schedule {self.lr_schedule!r}: choose one of {', '.join(LR_SCHEDULES)}")
        _require(self.lr_half_life_steps > 0,
                 f"--lr-half-life-steps must be > 0, got {self.lr_half_life_steps}")


@dataclasses.dataclass
class MonitorConfig:
    """The gradient-health monitor (see `model/gradient_monitor.py`) and its detectors' thresholds.

    Attributes:
        enabled: Measure gradients at all (on by default; off gives Keras's own
            training step).
        every: Keep one row of measurements every this many steps (NaN and Inf
            are checked at every step regardless).
        exploding_norm: A pre-clipping gradient norm of the recurrent layers
            (where backpropagation through time multiplies it) above this
            counts as a large step (the textbook threshold is 1.0).
        exploding_share: "Exploding" when at least this share of the recent
            steps is large.
        weight_growth: "Exploding" when a recurrent kernel's norm grows by more
            than this factor during training.
        vanishing_ratio: "Vanishing" when the first recurrent layer's gradient
            norm is below this fraction of the output layer's...
        vanishing_floor: ...or below this absolute floor, or the gradient of
            the last step's loss reaching the first step of a sequence is
            below `vanishing_time_ratio` of the last step's...
        vanishing_time_ratio: (see `vanishing_floor`)...
        flat_loss: ...while the training loss improved by less than this
            fraction over the second half of the steps so far.
    """

    enabled: bool = True
    every: int = 1
    exploding_norm: float = 1.0
    exploding_share: float = 0.5
    weight_growth: float = 10.0
    vanishing_ratio: float = 1e-2
    vanishing_floor: float = 1e-6
    vanishing_time_ratio: float = 1e-8
    flat_loss: float = 0.03

    def validate(self) -> None:
        _require(self.every > 0, f"--grad-every must be a positive integer, got {self.every}")
        _require(self.exploding_norm > 0, f"--exploding-norm must be > 0, got {self.exploding_norm}")
        _require(0 < self.exploding_share <= 1,
                 f"--exploding-share must be in (0, 1], got {self.exploding_share}")
        _require(self.weight_growth > 1, f"--weight-growth must be > 1, got {self.weight_growth}")
        _require(0 < self.vanishing_ratio < 1, f"--vanishing-ratio must be in (0, 1), got {self.vanishing_ratio}")
        _require(self.vanishing_floor >= 0, f"--vanishing-floor must be >= 0, got {self.vanishing_floor}")
        _require(0 < self.vanishing_time_ratio < 1,
                 f"--vanishing-time-ratio must be in (0, 1), got {self.vanishing_time_ratio}")
        _require(0 <= self.flat_loss < 1, f"--flat-loss must be in [0, 1), got {self.flat_loss}")


@dataclasses.dataclass
class TrainingConfig:
    """The loop around `Model.fit` and where its outputs go.

    Attributes:
        epochs: Maximum number of epochs.
        batch_size: Windows per batch.
        steps_per_epoch: Cap on batches per epoch (None: the whole training set).
        patience: Epochs without a better validation loss before early
            stopping (0 disables early stopping).
        time_budget_minutes: Stop training after this much wall time (None: no limit).
        seed: Seed for weights initialisation and shuffling.
        runs_dir: Parent directory of run directories.
        run_id: Name of this run's directory; reusing one resumes that run.
        monitor: The gradient-health monitor's settings.
        strategy: `default`, `mirrored` or `multiworker` (see `model.distribute`).
    """

    epochs: int = 10
    batch_size: int = 64
    steps_per_epoch: Optional[int] = None
    patience: int = 3
    time_budget_minutes: Optional[float] = None
    seed: int = 1337
    runs_dir: str = "runs"
    run_id: Optional[str] = None
    monitor: MonitorConfig = dataclasses.field(default_factory=MonitorConfig)
    strategy: str = "default"

    def validate(self) -> None:
        self.monitor.validate()
        _require(self.strategy in STRATEGIES,
                 f"unknown --strategy {self.strategy!r}; choose one of: {', '.join(STRATEGIES)}")
        _require(not (self.strategy == "multiworker" and self.time_budget_minutes),
                 "--time-budget-minutes cannot be used with --strategy multiworker: each worker's clock would "
                 "stop it at another step; use --epochs")
        _require(self.epochs > 0, f"--epochs must be a positive integer, got {self.epochs}")
        _require(self.batch_size > 0,
                 f"--batch-size must be a positive integer, got {self.batch_size}")
        _require(self.steps_per_epoch is None or self.steps_per_epoch > 0,
                 f"--steps-per-epoch must be a positive integer, got {self.steps_per_epoch}")
        _require(self.patience >= 0, f"--patience must be >= 0, got {self.patience}")
        _require(self.time_budget_minutes is None or self.time_budget_minutes > 0,
                 f"--time-budget-minutes must be > 0, got {self.time_budget_minutes}")
        _require(self.run_id is None or (self.run_id and "/" not in self.run_id
                                         and self.run_id not in (".", "..")),
                 f"--run-id must be a plain directory name, got {self.run_id!r}")


@dataclasses.dataclass(frozen=True)
class ForecastConfig:
    """What a next-value model predicts, from what.

    Attributes:
        window: W, days per input window.
        horizon: H, days predicted at once (direct multi-step output).
        transform: `"log_returns"` (default) or `"scaled"` prices.
        loss: `"mse"` or `"huber"` (with quantiles, the pinball loss is used).
        quantiles: Quantile levels to predict, e.g. (0.1, 0.5, 0.9); empty for
            one value per day.
        bidirectional: Wrap the recurrent layers in `Bidirectional`.
        ma_days: k of the moving-average baseline.
    """

    window: int = 30
    horizon: int = 1
    transform: str = "log_returns"
    loss: str = "mse"
    quantiles: tuple[float, ...] = ()
    bidirectional: bool = False
    ma_days: int = 5

    def validate(self) -> None:
        _require(self.window >= 2 and self.horizon >= 1,
                 f"--window must be >= 2 and --horizon >= 1, got {self.window} and {self.horizon}")
        _require(self.transform in TRANSFORMS,
                 f"unknown --transform {self.transform!r}: choose one of {', '.join(TRANSFORMS)}")
        _require(self.loss in SERIES_LOSSES,
                 f"unknown --loss {self.loss!r}: choose one of {', '.join(SERIES_LOSSES)}")
        _require(all(0 < q < 1 for q in self.quantiles) and list(self.quantiles) == sorted(set(self.quantiles)),
                 "--quantiles must be increasing levels between 0 and 1, e.g. 0.1,0.5,0.9; "
                 f"got {','.join(map(str, self.quantiles))}")
        _require(self.ma_days > 0, f"--ma-days must be a positive integer, got {self.ma_days}")
