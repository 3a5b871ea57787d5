"""Export a trained next-value model as a self-contained SavedModel.

    serving_default  window float32 [b, W, F]   raw prices (and other features), oldest first
                     -> next_value [b, H]       the next H values of the target, in price units
                        quantiles [b, H, Q]     when trained with quantiles (levels in metadata)
    metadata         rows [b] int32 (any values)
                     -> model_kind [b], cell [b], window [b], horizon [b], features [b, F],
                        target [b], transform [b], quantile_levels [b, Q]
                        (the same facts in each of the b rows, as TensorFlow Serving's
                        batching requires of every output)

W, H, the feature names, the target and the transform are inside the
SavedModel (this signature and `assets/metadata.json`), so a client needs
nothing else. A window holding NaN or Inf, or a non-positive price under the
log-returns transform, is refused with a message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from model import export
from model.series_model import cpu_portable_copy, price_scaling


class SeriesModelSignatures:
    """The serving signatures of a next-value model.

    A plain object, not a `tf.Module`: what is saved is only the functions and
    the variables they use (see `export.save_signatures`), not the Keras model
    (whose optimizer state serving has no use for).

    Args:
        model: A trained model from `model.series_model.build_next_value_model`.
        metadata: Facts recorded in the SavedModel (see `export_series_model`).
    """

    def __init__(self, model: keras.Model, metadata: dict[str, Any]):
        # A copy that never selects cuDNN kernels, so a GPU-trained model exports CPU ops.
        self.network = cpu_portable_copy(model)
        self._scaling = price_scaling(self.network)
        self._window, self._features = metadata["window"], len(metadata["features"])
        self._feature_names = list(metadata["features"])
        self._target_index = metadata["features"].index(metadata["target"])
        self._log_prices = metadata["transform"] == "log_returns"
        self._price_columns = tf.constant([bool(flag) for flag in metadata["log_features"]])
        quantiles = metadata["quantile_levels"]
        self._median = int(np.argmin(np.abs(np.asarray(quantiles) - 0.5))) if quantiles else None
        self._metadata = {key: tf.constant(value) for key, value in {
            "model_kind": "next_value", "cell": metadata["cell"], "window": np.int32(metadata["window"]),
            "horizon": np.int32(metadata["horizon"]), "features": metadata["features"],
            "target": metadata["target"], "transform": metadata["transform"],
            "quantile_levels": np.asarray(quantiles, np.float32)}.items()}

        spec = tf.TensorSpec([None, self._window, self._features], tf.float32, name="window")
        self.predict = tf.function(self._predict, input_signature=[spec])
        self.metadata = tf.function(lambda rows: export.facts_per_row(self._metadata, tf.shape(rows)[0]),
                                    input_signature=[tf.TensorSpec([None], tf.int32, name="rows")])

    def _predict(self, window):
        expected = (f"window must have shape [batch, {self._window}, {self._features}]: {self._window} days "
                    f"of {', '.join(self._feature_names)}, oldest first")
        # The signature declares this shape, but a loaded signature does not enforce it.
        with tf.control_dependencies([tf.debugging.assert_equal(
                tf.shape(window)[1:], tf.constant([self._window, self._features]), message=expected)]):
            window = tf.identity(window)
        checks = [tf.debugging.assert_all_finite(
            window, message=f"window holds NaN or Inf: send {self._window} finite values per feature")]
        if self._log_prices:
            prices = tf.boolean_mask(tf.reshape(window, [-1, self._features]), self._price_columns, axis=1)
            checks.append(tf.debugging.assert_positive(
                prices, message="window holds a price <= 0: prices must be positive (log-returns model)"))
        with tf.control_dependencies(checks):
            z = self.network(window, training=False)
        last = window[:, -1, self._target_index]
        values = self._scaling.to_prices(z, last)
        if self._median is None:
            return {"next_value": values}
        return {"next_value": values[:, :, self._median], "quantiles": values}

    def signatures(self) -> dict[str, Any]:
        return {"serving_default": self.predict, "metadata": self.metadata}


def export_series_model(model: keras.Model, base_dir: str | Path, metadata: dict[str, Any],
                        warmup_window: np.ndarray) -> Path:
    """Export a trained next-value model as the next version under `base_dir`.

    Args:
        model: The trained model.
        base_dir: `saved_models/<name>`.
        metadata: At least cell, window, horizon, features, log_features,
            target, transform and quantile_levels; written to `assets/metadata.json`.
        warmup_window: One real `[W, F]` window for the TF Serving warmup request.

    Returns:
        The version directory written.
    """
    metadata = {"model_kind": "next_value", **metadata,
                "signatures": {"serving_default": "window [b, W, F] -> next_value [b, H]"
                               + (", quantiles [b, H, Q]" if metadata["quantile_levels"] else ""),
                               "metadata": "rows [b] -> model_kind, cell, window, horizon, features, target, "
                                           "transform, quantile_levels (one row each)"}}
    module = SeriesModelSignatures(model, metadata)

    def write(directory: Path) -> None:
        export.save_signatures(directory, module.signatures())
        export.write_metadata(directory, metadata)
        export.write_warmup_requests(directory, Path(base_dir).name, [
            ("serving_default", {"window": np.asarray(warmup_window, np.float32)[None]}),
            ("metadata", {"rows": np.array([0], np.int32)})])

    return export.export_new_version(base_dir, write)
