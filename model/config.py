"""Every setting of a run, in one place: one dataclass per concern.

The network (`ModelConfig`), the optimiser with its gradient clipping
(`OptimizerConfig`), the gradient monitor (`MonitorConfig`), the loop around
`Model.fit` (`TrainingConfig`), and each pipeline's data and task settings
(`TextDataConfig`, `SamplingConfig`, `SeriesDataConfig`, `ForecastConfig`,
`BacktestConfig`). Each field carries its help text (`setting(...)`): the
pipelines' command-line flags are generated from the fields
(`pipelines/cli.py`), so a setting is written once.

Each `validate()` raises `InvalidSetting`, a `UsageError` with a one-line
message that says what is wrong and how to fix it, before TensorFlow is even
imported. The message names the field (`units must be a positive integer`);
the command line shows its flag instead (`--units must be ...`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Optional

CELLS = ("simple_rnn", "lstm", "gru")
STRATEGIES = ("default", "mirrored", "multiworker")  # see model.distribute
CLIP_KINDS = ("clipnorm", "global_clipnorm", "clipvalue", "none")
LR_SCHEDULES = ("constant", "cosine", "exponential", "plateau")
TOKEN_LEVELS = ("char", "word")
TRANSFORMS = ("log_returns", "scaled")
SERIES_LOSSES = ("mse", "huber")
MAX_TOKENS_LIMIT = 10_000  # Tokens one generation request may ask for: bounds its work.


class UsageError(ValueError):
    """Bad input from the user: a one-line message saying what and how to fix.

    The command-line entry points print the message and exit with status 2,
    without a traceback.
    """


class InvalidSetting(UsageError):
    """A setting with a bad value. The message names settings as `{field}` placeholders.

    `str()` shows the field names; `with_names` shows other names for them
    (the command line passes its flags).

    Args:
        template: The message, e.g. `"{units} must be a positive integer, got 0"`.
    """

    def __init__(self, template: str):
        self.template = template
        super().__init__(name_settings(template))

    def with_names(self, names: Mapping[str, str]) -> str:
        """The message with each `{field}` shown as `names[field]` (the field's own name when absent)."""
        return name_settings(self.template, names)


_PLACEHOLDER = re.compile(r"\{([a-z][a-z0-9_]*)\}")


def name_settings(template: str, names: Optional[Mapping[str, str]] = None) -> str:
    """A message that names settings as `{field}`, with each shown as `names[field]` (else the field's name).

    model/ names settings by their fields; the command line passes its flags
    (`pipelines.cli.SETTING_FLAGS`), so a remedy reads "lower --learning-rate"
    there and "lower learning_rate" to a program.
    """
    names = names or {}
    return _PLACEHOLDER.sub(lambda m: names.get(m.group(1), m.group(1)), template)


class TrainingDiverged(RuntimeError):
    """The loss or the gradients became NaN or Inf during training.

    The message is the gradient monitor's diagnosis: the step, the layer whose
    gradient went non-finite first, and a remedy. Command-line entry points
    print it and exit with status 1.
    """


def setting(default: Any = None, help: str = "", flag: Optional[str] = None, cli: bool = True,
            example: Optional[str] = None, factory: Any = None) -> Any:
    """A dataclass field with what its command-line flag needs.

    Args:
        default: The default value.
        help: The flag's help text.
        flag: The flag's name when it is not `--<field-name>` (e.g. `--grad-every`).
        cli: False for a field that has no flag of its own (set by other flags).
        example: For comma-separated lists, an example shown in the error.
        factory: A default factory instead of `default` (a nested config).
    """
    metadata = {"help": help, "flag": flag, "cli": cli, "example": example}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _require(condition: bool, template: str) -> None:
    if not condition:
        raise InvalidSetting(template)


def _one_of(value: str, choices: tuple[str, ...], field: str) -> None:
    _require(value in choices, f"unknown {{{field}}} {value!r}: choose one of {', '.join(choices)}")


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

    cell: str = setting("lstm", f"recurrent layer: {' | '.join(CELLS)}")
    units: int = setting(256, "width of each recurrent layer")
    layers: int = setting(1, "number of stacked recurrent layers")
    dropout: float = setting(0.0, "dropout after each recurrent layer")
    embedding_dim: int = setting(64, "width of the token embedding")

    def validate(self) -> None:
        _one_of(self.cell, CELLS, "cell")
        _require(self.units > 0, f"{{units}} must be a positive integer, got {self.units}")
        _require(self.layers > 0, f"{{layers}} must be a positive integer, got {self.layers}")
        _require(0.0 <= self.dropout < 1.0, f"{{dropout}} must be in [0, 1), got {self.dropout}")
        _require(self.embedding_dim > 0, f"{{embedding_dim}} must be a positive integer, got {self.embedding_dim}")


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
            `"plateau"` (halve when the validation loss stalls); see
            `model/learning_rate.py`.
        lr_half_life_steps: Half-life of the exponential schedule.
    """

    learning_rate: float = setting(2e-3, "initial learning rate")
    # The command line sets these two with one of --clipnorm, --global-clipnorm, --clipvalue, --no-clip.
    clip: str = setting("clipnorm", cli=False)
    clip_value: float = setting(1.0, cli=False)
    lr_schedule: str = setting("constant", " | ".join(LR_SCHEDULES))
    lr_half_life_steps: int = setting(1000, "half-life of the exponential schedule, in steps")

    def validate(self) -> None:
        _require(self.learning_rate > 0, f"{{learning_rate}} must be > 0, got {self.learning_rate}")
        _require(self.clip in CLIP_KINDS, f"unknown clipping {self.clip!r}: choose one of {', '.join(CLIP_KINDS)}")
        _require(self.clip == "none" or self.clip_value > 0,
                 f"the {{clip_value}} threshold must be > 0, got {self.clip_value}")
        _one_of(self.lr_schedule, LR_SCHEDULES, "lr_schedule")
        _require(self.lr_half_life_steps > 0, f"{{lr_half_life_steps}} must be > 0, got {self.lr_half_life_steps}")


@dataclasses.dataclass
class MonitorConfig:
    """The gradient-health monitor (see `model/gradient_callbacks.py`) and its detectors' thresholds.

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

    enabled: bool = setting(True, "turn the gradient monitor off", flag="--no-grad-monitor")
    every: int = setting(1, "keep the gradient measurements of every N-th step (NaN is checked at every step)",
                         flag="--grad-every")
    exploding_norm: float = setting(1.0, "pre-clipping gradient norm that counts as large")
    exploding_share: float = setting(0.5, "warn of exploding gradients when this share of recent steps is large")
    weight_growth: float = setting(10.0, "warn when a recurrent kernel's norm grows by more than this factor")
    vanishing_ratio: float = setting(1e-2, "warn of vanishing gradients when the first recurrent layer's gradient "
                                           "is below this fraction of the output layer's (and the loss is flat)")
    vanishing_floor: float = setting(1e-6, "...or below this absolute norm")
    vanishing_time_ratio: float = setting(1e-8, "...or when the last step's gradient reaching the first step of a "
                                                "sequence is below this fraction of the last step's")
    flat_loss: float = setting(0.03, "a loss that improved by less than this fraction counts as flat")

    def validate(self) -> None:
        _require(self.every > 0, f"{{every}} must be a positive integer, got {self.every}")
        _require(self.exploding_norm > 0, f"{{exploding_norm}} must be > 0, got {self.exploding_norm}")
        _require(0 < self.exploding_share <= 1, f"{{exploding_share}} must be in (0, 1], got {self.exploding_share}")
        _require(self.weight_growth > 1, f"{{weight_growth}} must be > 1, got {self.weight_growth}")
        _require(0 < self.vanishing_ratio < 1, f"{{vanishing_ratio}} must be in (0, 1), got {self.vanishing_ratio}")
        _require(self.vanishing_floor >= 0, f"{{vanishing_floor}} must be >= 0, got {self.vanishing_floor}")
        _require(0 < self.vanishing_time_ratio < 1,
                 f"{{vanishing_time_ratio}} must be in (0, 1), got {self.vanishing_time_ratio}")
        _require(0 <= self.flat_loss < 1, f"{{flat_loss}} must be in [0, 1), got {self.flat_loss}")


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
        strategy: `default`, `mirrored` or `multiworker` (see `model.distribute`).
        runs_dir: Parent directory of run directories.
        run_id: Name of this run's directory; reusing one resumes that run.
        monitor: The gradient-health monitor's settings.
    """

    epochs: int = setting(10, "maximum number of epochs")
    batch_size: int = setting(64, "windows per batch")
    steps_per_epoch: Optional[int] = setting(None, "cap on batches per epoch (default: the whole training set)")
    patience: int = setting(3, "early-stopping patience in epochs (0: off)")
    time_budget_minutes: Optional[float] = setting(None, "stop training after this much wall time")
    seed: int = setting(1337, "seed of the weights' initialisation and the shuffling")
    strategy: str = setting("default", f"{' | '.join(STRATEGIES)}: one device, every local GPU, or several "
                                       "workers configured by TF_CONFIG (see model/distribute.py)")
    runs_dir: str = setting("runs", "parent of run directories")
    run_id: Optional[str] = setting(None, "run directory name; reuse an interrupted run's id to resume it")
    monitor: MonitorConfig = setting(factory=MonitorConfig, cli=False)  # flags of their own group

    def validate(self) -> None:
        self.monitor.validate()
        _require(self.strategy in STRATEGIES,
                 f"unknown {{strategy}} {self.strategy!r}; choose one of: {', '.join(STRATEGIES)}")
        _require(not (self.strategy == "multiworker" and self.time_budget_minutes),
                 "{time_budget_minutes} cannot be used with {strategy} multiworker: each worker's clock would "
                 "stop it at another step; use {epochs}")
        _require(self.epochs > 0, f"{{epochs}} must be a positive integer, got {self.epochs}")
        _require(self.batch_size > 0, f"{{batch_size}} must be a positive integer, got {self.batch_size}")
        _require(self.steps_per_epoch is None or self.steps_per_epoch > 0,
                 f"{{steps_per_epoch}} must be a positive integer, got {self.steps_per_epoch}")
        _require(self.patience >= 0, f"{{patience}} must be >= 0, got {self.patience}")
        _require(self.time_budget_minutes is None or self.time_budget_minutes > 0,
                 f"{{time_budget_minutes}} must be > 0, got {self.time_budget_minutes}")
        _require(self.run_id is None or (self.run_id and "/" not in self.run_id and self.run_id not in (".", "..")),
                 f"{{run_id}} must be a plain directory name, got {self.run_id!r}")


# -- the text pipeline ------------------------------------------------------------------

@dataclasses.dataclass
class TextDataConfig:
    """Which text, cut into which tokens and windows.

    Attributes:
        corpus: A UTF-8 text file; None: CPython's reference documentation.
        token_level: `"char"` or `"word"`.
        seq_len: Window length in tokens.
        val_fraction: Share of the corpus, at its end, kept for validation.
        max_vocab: Keep the most frequent tokens only (None: all).
    """

    corpus: Optional[str] = setting(None, "UTF-8 text file (default: CPython's reference documentation, "
                                          "pydoc_data.topics, shipped with Python)")
    token_level: str = setting("char", " | ".join(TOKEN_LEVELS))
    seq_len: int = setting(100, "window length in tokens")
    val_fraction: float = setting(0.1, "share of the corpus, at its end, kept for validation")
    max_vocab: Optional[int] = setting(None, "keep the most frequent tokens only; the rest map to [UNK]")

    def validate(self) -> None:
        _one_of(self.token_level, TOKEN_LEVELS, "token_level")
        _require(self.seq_len > 0, f"{{seq_len}} must be a positive integer, got {self.seq_len}")
        _require(0.0 < self.val_fraction < 1.0,
                 f"{{val_fraction}} must be between 0 and 1 (exclusive), got {self.val_fraction}")
        _require(self.max_vocab is None or self.max_vocab > 0,
                 f"{{max_vocab}} must be a positive integer, got {self.max_vocab}")


@dataclasses.dataclass
class SamplingConfig:
    """The sample printed at the end of a text run.

    Attributes:
        prompt: Text the sample continues.
        max_tokens: Length of the sample.
        temperature: Sampling temperature, > 0.
        top_k: Sample among the k most likely tokens (0: all).
        sample_seed: Seed of the sample.
    """

    prompt: str = setting("The ", "prompt of the sample printed at the end")
    max_tokens: int = setting(200, "length of that sample")
    temperature: float = setting(0.8, "sampling temperature, > 0")
    top_k: int = setting(0, "sample among the k most likely (0: all)")
    sample_seed: int = setting(0, "seed of the sample")

    def validate(self) -> None:
        _require(self.temperature > 0, f"{{temperature}} must be > 0, got {self.temperature} (use 0.01 for greedy)")
        _require(0 <= self.max_tokens <= MAX_TOKENS_LIMIT,
                 f"{{max_tokens}} must be between 0 and {MAX_TOKENS_LIMIT}, got {self.max_tokens}")
        _require(self.top_k >= 0, f"{{top_k}} must be >= 0 (0 samples from all tokens), got {self.top_k}")


# -- the series pipeline ----------------------------------------------------------------

@dataclasses.dataclass
class SeriesDataConfig:
    """Which prices, split how.

    Attributes:
        csv: A CSV of daily prices; None: the prices packaged in bokeh-sampledata.
        ticker: The series to use when the CSV holds several.
        target: The predicted column (None: Adj Close, else Close).
        features: Input columns (empty: the target alone).
        val_fraction: Share of the days, after the training span, for validation.
        test_fraction: Share of the days, at the end, for the test.
    """

    csv: Optional[str] = setting(None, "CSV of daily prices (default: bokeh_sampledata.stocks)")
    ticker: Optional[str] = setting(None, "series to use when the CSV holds several (default data: MSFT)")
    target: Optional[str] = setting(None, "predicted column (default: Adj Close, else Close)")
    features: tuple[str, ...] = setting((), "comma-separated input columns (default: the target)",
                                        example="Close,Volume")
    val_fraction: float = setting(0.15, "share of the days, after the training span, kept for validation")
    test_fraction: float = setting(0.15, "share of the days, at the end, kept for the test")

    def validate(self) -> None:
        _require(0 < self.val_fraction < 1 and 0 < self.test_fraction < 1
                 and self.val_fraction + self.test_fraction < 1,
                 "{val_fraction} and {test_fraction} must be in (0, 1) with a sum below 1, "
                 f"got {self.val_fraction} and {self.test_fraction}")


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

    window: int = setting(30, "W: days per input window")
    horizon: int = setting(1, "H: days predicted at once")
    transform: str = setting("log_returns", " | ".join(TRANSFORMS))
    loss: str = setting("mse", " | ".join(SERIES_LOSSES))
    quantiles: tuple[float, ...] = setting((), "e.g. 0.1,0.5,0.9: predict an interval", example="0.1,0.5,0.9")
    bidirectional: bool = setting(False, "Bidirectional recurrent layers")
    ma_days: int = setting(5, "k of the moving-average baseline")

    def validate(self) -> None:
        _require(self.window >= 2 and self.horizon >= 1,
                 f"{{window}} must be >= 2 and {{horizon}} >= 1, got {self.window} and {self.horizon}")
        _one_of(self.transform, TRANSFORMS, "transform")
        _one_of(self.loss, SERIES_LOSSES, "loss")
        _require(all(0 < q < 1 for q in self.quantiles) and list(self.quantiles) == sorted(set(self.quantiles)),
                 "{quantiles} must be increasing levels between 0 and 1, e.g. 0.1,0.5,0.9; "
                 f"got {','.join(map(str, self.quantiles))}")
        _require(self.ma_days > 0, f"{{ma_days}} must be a positive integer, got {self.ma_days}")


@dataclasses.dataclass
class BacktestConfig:
    """The walk through the test span after the export.

    Attributes:
        refit_every: Train further every k test steps on all data known by then (0: never).
        refit_epochs: Epochs per refit.
        interval_adapt_rate: With quantiles, the step size of the interval's
            adaptive recalibration (None: the rate that guarantees coverage
            within 3 points).
    """

    refit_every: int = setting(0, "walk-forward test: train further every k steps on all data known by then "
                                  "(0: never)")
    refit_epochs: int = setting(1, "epochs per walk-forward refit")
    interval_adapt_rate: Optional[float] = setting(
        None, "with --quantiles: step size of the interval's adaptive recalibration through the test span "
              "(default: the rate that guarantees coverage within 3 points)")

    def validate(self) -> None:
        _require(self.refit_every >= 0 and self.refit_epochs > 0,
                 "{refit_every} must be >= 0 and {refit_epochs} >= 1, "
                 f"got {self.refit_every} and {self.refit_epochs}")
        _require(self.interval_adapt_rate is None or 0 < self.interval_adapt_rate <= 1,
                 f"{{interval_adapt_rate}} must be in (0, 1], got {self.interval_adapt_rate}")
