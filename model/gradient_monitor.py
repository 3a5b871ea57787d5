"""The training step that measures its gradients.

Keras's training step computes the gradients, hands them to the optimiser
(which clips them) and throws them away; its TensorBoard callback logs none.
`MonitoredModel` is a Keras model whose training step also measures, at every
step and inside the compiled graph:

- the global gradient norm before clipping, and after clipping exactly as the
  optimiser clips (`clipnorm`, `global_clipnorm`, `clipvalue` or none);
- the norm of every trainable variable's gradient;
- whether the loss and the gradients are finite. A step with a non-finite
  gradient is not applied.

All of it goes into one small vector that the callbacks of
`model/gradient_callbacks.py` read after each step: `GradientRecorder` keeps and
writes the measurements, `GradientHealthCheck` judges them. The weights' norms
are read there, after the step (in the graph, reading the weights next to their
update costs a copy of every kernel: a 50% slower step for an LSTM-256).
"""

from __future__ import annotations

import keras
import tensorflow as tf

# Layout of the vector written at each step: these fields, then one gradient
# norm per variable.
STEP_FIELDS = ("loss", "grad_norm", "grad_norm_clipped", "finite")


def clip_like_optimizer(optimizer: keras.optimizers.Optimizer, grads: list) -> list:
    """The gradients as the optimiser will see them after its own clipping.

    Args:
        optimizer: A Keras optimiser; its `clipnorm`, `global_clipnorm` or
            `clipvalue` (at most one is set) decides.
        grads: The gradients as the tape returned them (an embedding's is
            `IndexedSlices`, clipped as the optimiser clips it: by the norm of
            its rows before repeated rows are summed).

    Returns:
        The clipped gradients (the same list when the optimiser does not clip).
    """
    if optimizer.clipnorm:
        return [g if g is None else tf.clip_by_norm(g, optimizer.clipnorm) for g in grads]
    if optimizer.global_clipnorm:
        return tf.clip_by_global_norm(grads, optimizer.global_clipnorm)[0]
    if optimizer.clipvalue:
        return [g if g is None else clip_values(g, optimizer.clipvalue) for g in grads]
    return grads


def clip_values(gradient, limit: float):
    """Elementwise clipping; an IndexedSlices' rows are clipped before repeated rows are summed, as Keras does."""
    if isinstance(gradient, tf.IndexedSlices):
        return tf.IndexedSlices(tf.clip_by_value(gradient.values, -limit, limit), gradient.indices,
                                gradient.dense_shape)
    return tf.clip_by_value(gradient, -limit, limit)


def dense_norm(gradient) -> tf.Tensor:
    """The norm of a gradient as the update applies it (repeated embedding rows summed); 0 for None."""
    return tf.constant(0.0) if gradient is None else tf.norm(tf.convert_to_tensor(gradient))


def clipped_global_norm(optimizer: keras.optimizers.Optimizer, grads: list, norms: tf.Tensor) -> tf.Tensor:
    """The global norm of the gradients after the optimiser's clipping, without materialising them.

    Clipping by norm only rescales each gradient (clipnorm) or all of them
    (global_clipnorm), so the clipped norms follow from the norms the
    optimiser computes: for an embedding's IndexedSlices, the norm of its rows
    before repeated rows are summed. Clipping by value is elementwise and is
    applied for real.

    Args:
        optimizer: Decides the clipping.
        grads: The tape's gradients.
        norms: `dense_norm` of each gradient.
    """
    def clipping_norm(g):  # the norm the optimiser's clipping sees
        if g is None:
            return tf.constant(0.0)
        return tf.norm(g.values) if isinstance(g, tf.IndexedSlices) else None

    each = tf.unstack(norms, num=len(grads))
    if optimizer.clipnorm:
        seen = tf.stack([n if (c := clipping_norm(g)) is None else c for g, n in zip(grads, each)])
        return tf.norm(norms * tf.minimum(1.0, optimizer.clipnorm / tf.maximum(seen, 1e-30)))
    if optimizer.global_clipnorm:
        seen = tf.norm(tf.stack([n if (c := clipping_norm(g)) is None else c for g, n in zip(grads, each)]))
        return tf.norm(norms) * tf.minimum(1.0, optimizer.global_clipnorm / tf.maximum(seen, 1e-30))
    if optimizer.clipvalue:
        return tf.norm(tf.stack([dense_norm(g) for g in clip_like_optimizer(optimizer, grads)]))
    return tf.norm(norms)


def recurrent_layer_names(model: keras.Model) -> list[str]:
    """Names of the model's recurrent layers (plain or `Bidirectional`), in order."""
    return [layer.name for layer in model.layers
            if isinstance(layer, (keras.layers.RNN, keras.layers.Bidirectional))]


def variable_label(variable: keras.Variable, recurrent_layers: set[str]) -> str:
    """`<layer>/<part>` for a trainable variable, e.g. `lstm_0/recurrent_kernel`.

    A `Bidirectional` layer's variables keep their direction:
    `bidirectional_0/forward_lstm_0/input_kernel`.
    """
    parts = variable.path.split("/")
    parts = [p for p in parts[:-1] if not p.endswith("_cell")] + parts[-1:]
    if parts[0] in recurrent_layers and parts[-1] == "kernel":
        parts[-1] = "input_kernel"
    return "/".join(parts)


class MonitoredModel(keras.Model):
    """A Keras functional model whose training step measures its gradients.

    Built like any functional model, `MonitoredModel(inputs, outputs)`. Set
    `monitor_gradients = False` before `fit` for Keras's own training step
    (the baseline of the overhead benchmark).
    """

    monitor_gradients = True

    def gradient_labels(self) -> list[str]:
        """One `<layer>/<part>` label per trainable variable, in the order of the step vector."""
        recurrent = set(recurrent_layer_names(self))
        return [variable_label(v, recurrent) for v in self.trainable_variables]

    @property
    def gradient_record(self) -> tf.Variable:
        """The vector the last training step wrote: `STEP_FIELDS`, then one gradient norm per variable."""
        record = self.__dict__.get("_gradient_record")
        if record is None:
            size = len(STEP_FIELDS) + len(self.trainable_variables)
            with tf.init_scope():  # created eagerly even when first asked for inside the traced step
                # Under tf.distribute each replica writes its own copy and reads give the first
                # replica's: the measurements are the local gradients of this worker's share.
                record = tf.Variable(tf.zeros([size]), trainable=False, name="gradient_record",
                                     synchronization=tf.VariableSynchronization.ON_READ,
                                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            # Kept out of Keras's tracking: it is not a weight and is never saved.
            object.__setattr__(self, "_gradient_record", record)
        return record

    def train_step(self, data):
        if not self.monitor_gradients:
            return super().train_step(data)
        # Keras's own training step (keras/src/backend/tensorflow/trainer.py), plus the measurements.
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            scaled_loss = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        grads = tape.gradient(scaled_loss, variables)  # handed to the optimiser unchanged
        grad_norms = tf.stack([dense_norm(g) for g in grads])
        grad_norm = tf.norm(grad_norms)
        clipped_norm = clipped_global_norm(self.optimizer, grads, grad_norms)
        finite = tf.logical_and(tf.reduce_all(tf.math.is_finite(grad_norms)), tf.math.is_finite(loss))
        self.skips_non_finite_steps = not tf.distribute.has_strategy()  # read by GradientHealthCheck
        if tf.distribute.has_strategy():
            # The update synchronises replicas (merge_call, all-reduce), which tf.distribute allows
            # in no control flow, and no replica may skip a step alone: apply it, as Keras does.
            # Every replica gets the same verdict, so all monitors stop at the same step.
            non_finite = tf.cast(tf.logical_not(finite), tf.float32)
            finite = tf.distribute.get_replica_context().all_reduce("SUM", non_finite) == 0
            self.optimizer.apply(grads, variables)
        else:  # A non-finite step is skipped, as Keras's LossScaleOptimizer skips one.
            tf.cond(finite, lambda: self.optimizer.apply(grads, variables), lambda: None)
        head = tf.stack([loss, grad_norm, clipped_norm, tf.cast(finite, tf.float32)])
        self.gradient_record.assign(tf.concat([head, grad_norms], axis=0))

        for metric in self.metrics:  # as the Keras guide "Customizing what happens in fit()" does
            if metric.name == "loss":
                metric.update_state(loss, sample_weight=tf.shape(tf.nest.flatten(x)[0])[0])
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
