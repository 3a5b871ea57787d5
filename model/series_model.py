"""Next-value models for price series: in-model scaling, the network, the loss.

The model takes raw price windows `[batch, W, F]` and works in a normalised
space inside: `PriceScaling` turns a window into the network's inputs and
holds the statistics, fitted on the training span only, as non-trainable
weights. The network predicts, for each of the H next days, a standardised
value `z`; `PriceScaling.to_prices` maps it back to price units. So the
exported model answers in prices and clients never see a scaler.

Transforms:
    log_returns  inputs: standardised one-day log changes of each feature;
                 targets: z_h = (log(p_{t+h} / p_t) - h·μ) / (√h·σ), with μ, σ
                 the mean and spread of the target's one-day log returns.
    scaled       inputs: standardised levels; targets: (p_{t+h} - m) / s.
Log returns are the default: prices wander outside any training range, their
returns far less.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import keras
import numpy as np
from keras import ops

from model.builders import recurrent_layer
from model.config import ModelConfig
from model.gradient_monitor import MonitoredModel


@dataclasses.dataclass
class ScalingStats:
    """Statistics of the training span.

    Attributes:
        feature_mean, feature_std: Per input feature, `[F]`.
        target_mean, target_std: Of the target's one-day log return
            (log_returns) or of its level (scaled).
    """

    feature_mean: np.ndarray
    feature_std: np.ndarray
    target_mean: float
    target_std: float


def fit_scaling(train_values: np.ndarray, target_index: int, transform: str,
                log_features: Sequence[bool]) -> ScalingStats:
    """Fit the scaling on the training span (and nothing else).

    Args:
        train_values: float `[T_train, F]`, the training span only.
        target_index: Column of the target.
        transform: `"log_returns"` or `"scaled"`.
        log_features: Per feature, whether it is a price (log) or a count such
            as volume (log1p, since it can be 0).

    Returns:
        The statistics; spreads are floored so a constant column cannot divide by 0.
    """
    x = np.asarray(train_values, dtype=np.float64)
    if transform == "log_returns":
        logged = np.where(np.asarray(log_features)[None, :], np.log(x), np.log1p(x))
        features = np.diff(logged, axis=0)
        target = np.diff(np.log(x[:, target_index]))
    else:
        features, target = x, x[:, target_index]
    floor = 1e-8
    return ScalingStats(features.mean(axis=0), np.maximum(features.std(axis=0), floor),
                        float(target.mean()), float(max(target.std(), floor)))


@keras.saving.register_keras_serializable(package="rnn_serving")
class PriceScaling(keras.layers.Layer):
    """Raw price windows in, the network's standardised inputs out.

    The training-span statistics are non-trainable weights: they are saved with
    the checkpoints and the SavedModel, and `fit` never changes them.

    Args:
        transform: `"log_returns"` or `"scaled"`.
        log_features: Per feature, True for prices (log), False for counts (log1p).
        target_index: Column of the target feature.
        horizon: H, the number of predicted days (for the per-horizon scaling).
    """

    def __init__(self, transform: str, log_features: Sequence[bool], target_index: int, horizon: int, **kwargs):
        super().__init__(**kwargs)
        self.transform = transform
        self.log_features = [bool(flag) for flag in log_features]
        self.target_index = int(target_index)
        self.horizon = int(horizon)
        n = len(self.log_features)
        self.feature_mean = self.add_weight(shape=(n,), initializer="zeros", trainable=False, name="feature_mean")
        self.feature_std = self.add_weight(shape=(n,), initializer="ones", trainable=False, name="feature_std")
        self.target_mean = self.add_weight(shape=(), initializer="zeros", trainable=False, name="target_mean")
        self.target_std = self.add_weight(shape=(), initializer="ones", trainable=False, name="target_std")

    def set_stats(self, stats: ScalingStats) -> None:
        self.feature_mean.assign(stats.feature_mean.astype("float32"))
        self.feature_std.assign(stats.feature_std.astype("float32"))
        self.target_mean.assign(np.float32(stats.target_mean))
        self.target_std.assign(np.float32(stats.target_std))

    def call(self, window):
        if self.transform == "log_returns":
            is_price = ops.convert_to_tensor(self.log_features)
            logged = ops.where(is_price, ops.log(window), ops.log1p(window))
            window = logged[:, 1:, :] - logged[:, :-1, :]
        return (window - self.feature_mean) / self.feature_std

    def compute_output_shape(self, input_shape):
        steps = input_shape[1]
        if self.transform == "log_returns" and steps is not None:
            steps -= 1
        return (input_shape[0], steps, input_shape[2])

    def _horizon_scale(self):
        """Per-horizon mean and spread of z: h·μ and √h·σ for log returns, m and s for levels."""
        h = ops.arange(1, self.horizon + 1, dtype="float32")
        if self.transform == "log_returns":
            return h * self.target_mean, ops.sqrt(h) * self.target_std
        return ops.ones_like(h) * self.target_mean, ops.ones_like(h) * self.target_std

    def to_z(self, future, last):
        """Future target prices `[b, H]` (after the last observed price `[b]`) to standardised z."""
        mean, std = self._horizon_scale()
        if self.transform == "log_returns":
            return (ops.log(future / last[:, None]) - mean) / std
        return (future - mean) / std

    def to_prices(self, z, last):
        """Standardised z `[b, H]` or `[b, H, Q]` back to prices."""
        mean, std = self._horizon_scale()
        extra = len(z.shape) - 2
        for _ in range(extra):  # broadcast over quantiles
            mean, std = mean[:, None], std[:, None]
        value = z * std + mean
        if self.transform == "log_returns":
            return ops.reshape(last, (-1,) + (1,) * (1 + extra)) * ops.exp(value)
        return value

    def get_config(self):
        return {**super().get_config(), "transform": self.transform, "log_features": self.log_features,
                "target_index": self.target_index, "horizon": self.horizon}


@keras.saving.register_keras_serializable(package="rnn_serving")
class PinballLoss(keras.losses.Loss):
    """Quantile (pinball) loss, averaged over quantiles: its minimiser is the quantile.

    Args:
        quantiles: The quantile levels, e.g. (0.1, 0.5, 0.9), matching the
            last axis of the predictions.
    """

    def __init__(self, quantiles: Sequence[float], name: str = "pinball", **kwargs):
        super().__init__(name=name, **kwargs)
        self.quantiles = [float(q) for q in quantiles]

    def call(self, y_true, y_pred):
        error = ops.expand_dims(y_true, -1) - y_pred  # [b, H, Q]
        q = ops.convert_to_tensor(self.quantiles, dtype=y_pred.dtype)
        return ops.mean(ops.maximum(q * error, (q - 1.0) * error), axis=-1)

    def get_config(self):
        return {**super().get_config(), "quantiles": self.quantiles}


# The name of the `IntervalMargin` layer in a next-value model: how the pipelines find it.
INTERVAL_LAYER = "interval_margin"


@keras.saving.register_keras_serializable(package="rnn_serving")
class IntervalMargin(keras.layers.Layer):
    """Widens (or narrows) the outermost predicted quantiles by a calibrated, volatility-scaled margin.

    The margin of a window is `margin[h] × v`, with v the window's realised
    volatility (spread of its daily log returns) relative to the training
    span's: calm windows get a narrow margin, turbulent ones a wide one, so a
    calibration made in one regime carries over to another. `margin` is 0 while
    training and is set afterwards by conformal calibration on the validation
    span (`pipelines.intervals.calibrate`).

    Args:
        horizon: H.
        n_quantiles: Q (at least 2: the interval runs from the first to the last).
        target_index: Column of the target in the raw window.
    """

    def __init__(self, horizon: int, n_quantiles: int, target_index: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.horizon, self.n_quantiles, self.target_index = int(horizon), int(n_quantiles), int(target_index)
        self.margin = self.add_weight(shape=(self.horizon,), initializer="zeros", trainable=False, name="margin")
        self.reference_volatility = self.add_weight(shape=(), initializer="ones", trainable=False,
                                                    name="reference_volatility")

    def relative_volatility(self, window):
        """`[b]`: the spread of each raw window's daily log returns over the training span's."""
        prices = ops.log(ops.maximum(window[:, :, self.target_index], 1e-12))
        return ops.std(prices[:, 1:] - prices[:, :-1], axis=1) / self.reference_volatility

    def call(self, inputs):
        z, window = inputs
        offsets = self.margin[None, :] * self.relative_volatility(window)[:, None]  # [b, H]
        lower, upper = z[:, :, :1] - offsets[:, :, None], z[:, :, -1:] + offsets[:, :, None]
        if self.n_quantiles > 2:  # a negative margin must not push the bounds past the inner quantiles
            lower = ops.minimum(lower, z[:, :, 1:2])
            upper = ops.maximum(upper, z[:, :, -2:-1])
        return ops.concatenate([lower, z[:, :, 1:-1], upper], axis=2)

    def get_config(self):
        return {**super().get_config(), "horizon": self.horizon, "n_quantiles": self.n_quantiles,
                "target_index": self.target_index}


def build_next_value_model(window: int, log_features: Sequence[bool], target_index: int, horizon: int,
                           config: ModelConfig, transform: str = "log_returns",
                           quantiles: Sequence[float] = (), bidirectional: bool = False) -> keras.Model:
    """Raw window `[b, W, F]` -> PriceScaling -> N recurrent layers -> Dense -> z `[b, H]` (or `[b, H, Q]`).

    Args:
        window: W, days per input window.
        log_features: Per feature, price (True) or count (False).
        target_index: Column of the target.
        horizon: H, days predicted at once (direct multi-step output).
        config: Cell, units, layers, dropout.
        transform: `"log_returns"` or `"scaled"`.
        quantiles: Predict these quantiles instead of one value (pinball loss).
        bidirectional: Wrap each recurrent layer in `Bidirectional`: legitimate
            here, because the whole window is observed before the days after it
            are predicted.

    Returns:
        An uncompiled `MonitoredModel` (it measures its gradients while it
        trains); its `PriceScaling` layer still needs `set_stats`,
        and with quantiles its `IntervalMargin` layer a calibration.
    """
    prices = keras.Input(shape=(window, len(log_features)), name="window")
    x = PriceScaling(transform, log_features, target_index, horizon, name="price_scaling")(prices)
    for index in range(config.layers):
        last = index == config.layers - 1
        layer = recurrent_layer(config.cell, config.units, name=f"{config.cell}_{index}", return_sequences=not last)
        x = keras.layers.Bidirectional(layer, name=f"bidirectional_{index}")(x) if bidirectional else layer(x)
        if config.dropout > 0:
            x = keras.layers.Dropout(config.dropout, name=f"dropout_{index}")(x)
    if quantiles:
        z = keras.layers.Reshape((horizon, len(quantiles)), name="quantiles")(
            keras.layers.Dense(horizon * len(quantiles), name="head")(x))
        if len(quantiles) >= 2:
            z = IntervalMargin(horizon, len(quantiles), target_index, name=INTERVAL_LAYER)([z, prices])
    else:
        z = keras.layers.Dense(horizon, name="z")(x)
    return MonitoredModel(prices, z, name=f"next_value_{config.cell}")


def compile_next_value_model(model: keras.Model, optimizer: keras.optimizers.Optimizer, loss: str = "mse",
                             quantiles: Sequence[float] = ()) -> keras.Model:
    """Compile with MSE, Huber or, when quantiles are predicted, the pinball loss (all in z space)."""
    if quantiles:
        loss_fn = PinballLoss(quantiles)
    else:
        loss_fn = keras.losses.Huber() if loss == "huber" else keras.losses.MeanSquaredError()
    model.compile(optimizer=optimizer, loss=loss_fn)
    return model


def price_scaling(model: keras.Model) -> PriceScaling:
    return model.get_layer("price_scaling")


def with_cudnn(model: keras.Model, use_cudnn: bool) -> keras.Model:
    """A copy with the same weights whose LSTM/GRU layers (bidirectional ones included) set `use_cudnn`."""
    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, keras.layers.Bidirectional):
            for key in ("layer", "backward_layer"):
                if key in config and "use_cudnn" in config[key]["config"]:
                    config[key]["config"]["use_cudnn"] = use_cudnn
        elif "use_cudnn" in config:
            config["use_cudnn"] = use_cudnn
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def cpu_portable_copy(model: keras.Model) -> keras.Model:
    """A copy whose LSTM/GRU layers never pick cuDNN kernels, with the same weights.

    Keras uses fused cuDNN kernels on a GPU, and a graph traced there would
    hold ops a CPU-only TensorFlow Serving cannot run: exports trace this copy.
    """
    return with_cudnn(model, False)
