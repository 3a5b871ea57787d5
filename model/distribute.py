"""Where training runs: one device, every local GPU, or several machines (tf.distribute).

    --strategy default       TensorFlow's default strategy: one device (the GPU if there is one)
    --strategy mirrored      tf.distribute.MirroredStrategy: every local GPU (the CPU when there is none)
    --strategy multiworker   tf.distribute.MultiWorkerMirroredStrategy, configured by TF_CONFIG

With `multiworker`, every worker runs the same command with its own TF_CONFIG:

    TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
                "task": {"type": "worker", "index": 0}}' python -m pipelines.text ...

`--batch-size` is the global batch: each step splits it between the workers
(tf.data's DATA auto-sharding: every worker builds the same seeded dataset
and keeps its share of each batch), so N workers train the same model as one
process with the same global batch, N times the compute. Gradients are summed
across workers with collective all-reduce before the optimiser applies them.

Only the chief (worker 0, or the task of type "chief") writes the run
directory, checkpoints, logs and the export. The other workers take part in
every step, every save and the export (saving may need collectives) but write
into a scratch directory that is deleted when they finish.

Every worker must stop at the same step, or the others wait forever in the
next all-reduce: so a multi-worker run has no wall-time budget (each worker's
clock would stop it at another step) and no BackupAndRestore (the other
workers cannot read the chief's backup): a killed multi-worker run is started
again with a new --run-id. Early stopping is safe: the validation loss is the
same on every worker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Optional

import tensorflow as tf

from model.config import STRATEGIES, InvalidSetting

_created: dict[str, tf.distribute.Strategy] = {}


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The strategy of that name, created once per process.

    MultiWorkerMirroredStrategy must exist before TensorFlow runs its first op,
    and only once: call this first thing in a training job.

    Raises:
        InvalidSetting: An unknown name, or `multiworker` without a usable TF_CONFIG.
    """
    if name not in STRATEGIES:
        raise InvalidSetting(f"unknown {{strategy}} {name!r}; choose one of: {', '.join(STRATEGIES)}")
    if name not in _created:
        if name == "default":
            _created[name] = tf.distribute.get_strategy()
        elif name == "mirrored":
            _created[name] = tf.distribute.MirroredStrategy()
        else:
            resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
            if not resolver.cluster_spec().as_dict():
                raise InvalidSetting("{strategy} multiworker needs the TF_CONFIG environment variable naming the "
                                 'cluster and this task, e.g. {"cluster": {"worker": ["host1:12345", '
                                 '"host2:12345"]}, "task": {"type": "worker", "index": 0}}')
            _created[name] = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
            _fix_keras_multi_worker_fit()
    return _created[name]


def _fix_keras_multi_worker_fit() -> None:
    """Two fixes Keras 3.15's `Model.fit` needs under MultiWorkerMirroredStrategy.

    1. Each step's logs are reduced across workers with
       `strategy.reduce("MEAN", value, axis=0)`, which fails on scalars such as
       the loss (tensorflow/tensorflow#72388): scalars are reduced with axis=None.
    2. To build the model symbolically, the first distributed (x, y) batch goes
       to `Strategy.reduce`, which takes one value, not a tuple. The build only
       needs shapes and dtypes: it gets the dataset's element spec instead, and
       no pass over the data is spent on it (a single process spends none, so
       both then see the same batches).
    """
    from keras.src.backend.tensorflow import trainer

    if getattr(trainer, "_multi_worker_fixed", False):
        return
    original_reduce = trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if trainer._collective_all_reduce_multi_worker(strategy) and reduction in ("auto", "mean"):
            def rank(v):  # a PerReplica value (several devices per worker) has no shape of its own
                local = strategy.experimental_local_results(v)[0] if isinstance(v, tf.distribute.DistributedValues) else v
                return local.shape.rank

            return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None if rank(v) == 0 else 0),
                                         values)
        return original_reduce(values, strategy, reduction)

    original_build = trainer.TensorFlowTrainer._maybe_symbolic_build

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None and self._distribute_strategy is not None:
            # The dataset's element spec has the shapes and dtypes; reading a batch would also
            # start (and waste) one pass of a dataset that reshuffles on every pass.
            data_batch, iterator = iterator.data_adapter.get_tf_dataset().element_spec, None
        return original_build(self, iterator=iterator, data_batch=data_batch)

    trainer.reduce_per_replica = reduce_per_replica
    trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    trainer._multi_worker_fixed = True


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's files: always, except on non-chief workers."""
    return bool(strategy.extended.should_checkpoint)


def worker_name(strategy: tf.distribute.Strategy) -> str:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return "worker 0"
    return f"{resolver.task_type} {resolver.task_id}"


def shard_by_data(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Shard by element: each worker keeps its share of every batch of the same seeded dataset.

    The datasets here are built from arrays, not files, so FILE sharding does
    not apply; naming DATA spares tf.data's fallback warning.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


@dataclasses.dataclass
class Placement:
    """A training job's strategy and where this process may write.

    Attributes:
        strategy: The tf.distribute strategy; build and compile models in its `scope()`.
        chief: Whether this process writes the run directory and the export.
        scratch: A non-chief worker's temporary directory (None on the chief).
    """

    strategy: tf.distribute.Strategy
    chief: bool
    scratch: Optional[Path] = None

    def runs_dir(self, runs_dir: str) -> str:
        """Where this process keeps run directories: the real one on the chief."""
        return runs_dir if self.chief else str(self.scratch / "runs")

    def output(self, output: str | Path) -> Path:
        """Where this process exports: `saved_models/<name>` on the chief, scratch elsewhere."""
        return Path(output) if self.chief else self.scratch / "saved_models" / Path(output).name


@contextlib.contextmanager
def placement(strategy_name: str) -> Iterator[Placement]:
    """Create (or reuse) the strategy; give non-chief workers a scratch directory, removed on exit."""
    strategy = make_strategy(strategy_name)
    chief = is_chief(strategy)
    scratch = None if chief else Path(tempfile.mkdtemp(prefix="rnn-worker-"))
    try:
        yield Placement(strategy, chief, scratch)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
