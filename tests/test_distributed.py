"""Training with tf.distribute: two real worker processes on loopback against one process.

The workers are configured by TF_CONFIG, as on a cluster, and run the text
pipeline's own training function. Both must end with the same weights, equal
to one process training on the same global batch, and only the chief may
write the run directory and the export.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import free_port, with_cudnn_kernels

ROOT = Path(__file__).resolve().parents[1]

WORKER = """
import json, sys
import keras
import numpy as np
from model.config import ModelConfig, MonitorConfig, OptimizerConfig, TrainingConfig
from pipelines.text import train_text_model
from pipelines.text_data import prepare_text, read_corpus

corpus, workdir, weights_out, strategy = sys.argv[1:5]


class SaveWeights(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        np.savez(weights_out + ".initial.npz", *[np.asarray(w) for w in self.model.get_weights()])

    def on_train_end(self, logs=None):
        np.savez(weights_out, *[np.asarray(w) for w in self.model.get_weights()])


data = prepare_text(read_corpus(corpus), "char", seq_len=20)
summary = train_text_model(
    data, ModelConfig(cell="lstm", units=16, embedding_dim=8), OptimizerConfig(learning_rate=1e-2),
    TrainingConfig(epochs=2, batch_size=32, steps_per_epoch=5, patience=0, runs_dir=workdir + "/runs",
                   strategy=strategy),
    20, workdir + "/saved_models/text", extra_callbacks=[SaveWeights()])
print(json.dumps({"chief": summary["chief"], "worker": summary["worker"],
                  "val_loss": summary["val_loss_nats_per_token"]}))
"""


def run_worker(corpus: Path, workdir: Path, weights: Path, strategy: str, tf_config: dict | None = None):
    """A worker process; its output goes to files (a full pipe would stall it in the middle of a collective)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    scratch = weights.parent / f"{weights.stem}-tmp"  # its own TMPDIR: the scratch check reads only this
    scratch.mkdir()
    env["TMPDIR"] = str(scratch)
    out, err = open(weights.with_suffix(".out"), "w"), open(weights.with_suffix(".err"), "w")
    process = subprocess.Popen([sys.executable, "-c", WORKER, str(corpus), str(workdir), str(weights), strategy],
                               cwd=ROOT, env=env, stdout=out, stderr=err, text=True)
    process.files = (weights.with_suffix(".out"), weights.with_suffix(".err"), scratch)
    return process


def finish(process: subprocess.Popen) -> dict:
    process.wait(timeout=600)
    out, err, _ = process.files
    assert process.returncode == 0, err.read_text()[-3000:]
    return json.loads(out.read_text().strip().splitlines()[-1])


def load_weights(path: Path) -> list[np.ndarray]:
    with np.load(path) as archive:
        return [archive[f"arr_{i}"] for i in range(len(archive.files))]


@pytest.fixture(scope="module")
def trained(corpus_file, tmp_path_factory):
    single_dir, multi_dir = tmp_path_factory.mktemp("single"), tmp_path_factory.mktemp("multi")
    single = finish(run_worker(corpus_file, single_dir, single_dir / "w.npz", "default"))
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    workers = [run_worker(corpus_file, multi_dir, multi_dir / f"w{i}.npz", "multiworker",
                          {"cluster": cluster, "task": {"type": "worker", "index": i}}) for i in range(2)]
    try:
        reports = [finish(worker) for worker in workers]
    finally:  # one failed worker leaves the other waiting in a collective: stop it
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    return {"single": single, "reports": reports, "single_dir": single_dir, "multi_dir": multi_dir,
            "scratch": [worker.files[2] for worker in workers]}


def test_two_workers_end_with_identical_weights(trained):
    first, second = (load_weights(trained["multi_dir"] / f"w{i}.npz") for i in range(2))
    assert len(first) == len(second) > 0
    for a, b in zip(first, second):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_two_workers_match_one_process_on_the_same_global_batch(trained):
    multi = load_weights(trained["multi_dir"] / "w0.npz")
    single = load_weights(trained["single_dir"] / "w.npz")
    initial = load_weights(trained["single_dir"] / "w.npz.initial.npz")
    moved = max(np.abs(s - i).max() for s, i in zip(single, initial))
    for a, b in zip(multi, single):
        # Sums in another order (all-reduce of two halves): float32 round-off, nothing more.
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    assert moved > 1e-2  # the comparison means something: training moved the weights
    assert trained["reports"][0]["val_loss"] == pytest.approx(trained["single"]["val_loss"], abs=1e-5)


def test_only_the_chief_writes_the_run_and_the_export(trained):
    chiefs = [report for report in trained["reports"] if report["chief"]]
    assert [report["worker"] for report in chiefs] == ["worker 0"]
    runs = list((trained["multi_dir"] / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "summary.json").is_file()
    assert [p.name for p in (trained["multi_dir"] / "saved_models" / "text").iterdir()] == ["1"]
    assert not [p for scratch in trained["scratch"] for p in scratch.glob("rnn-worker-*")], "a worker left its scratch"


def test_multiworker_without_tf_config_is_a_clean_error(corpus_file, tmp_path):
    result = subprocess.run([sys.executable, "-m", "pipelines.text", "--corpus", str(corpus_file), "--strategy",
                             "multiworker", "--runs-dir", str(tmp_path / "runs"), "--output",
                             str(tmp_path / "sm" / "t")], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={k: v for k, v in os.environ.items() if k != "TF_CONFIG"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--strategy multiworker needs the TF_CONFIG environment variable" in result.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "sm").exists()


def test_the_series_pipeline_trains_under_mirrored_strategy_and_exports(exported_stock, tmp_path):
    from model.config import ForecastConfig, ModelConfig, OptimizerConfig, TrainingConfig
    from pipelines.series import train_series_model
    from pipelines.series_data import chronological_split

    series = exported_stock[2]
    summary = train_series_model(
        series, chronological_split(len(series.dates), 10, 1), ForecastConfig(window=10), ModelConfig(units=4),
        OptimizerConfig(), TrainingConfig(epochs=1, batch_size=32, patience=0, runs_dir=str(tmp_path / "runs"),
                                          strategy="mirrored"), tmp_path / "saved_models" / "stock")
    assert summary["chief"] and summary["config"]["training"]["strategy"] == "mirrored"
    assert (Path(summary["export_path"]) / "saved_model.pb").is_file()
    assert np.isfinite(summary["best_val_loss"])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_model_set_to_cudnn_kernels_exports_a_graph_a_cpu_server_runs(cell, tmp_path):
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    from model.builders import build_next_token_model
    from model.config import ModelConfig
    from model.series_model import build_next_value_model, cpu_portable_copy
    from model.text_export import export_text_model

    vocabulary = list("abcdefgh ")
    gpu_model = with_cudnn_kernels(build_next_token_model(len(vocabulary) + 2, ModelConfig(cell=cell, units=8)))
    assert all(layer.get_config()["use_cudnn"] is True for layer in gpu_model.layers if "use_cudnn" in layer.get_config())
    version = export_text_model(gpu_model, tmp_path / "text", vocabulary, "char", [1] * len(vocabulary), 10)
    graph = saved_model_pb2.SavedModel.FromString((version / "saved_model.pb").read_bytes()).meta_graphs[0].graph_def
    ops = {node.op for node in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
    assert not [op for op in ops if "Cudnn" in op]
    with tf.device("/CPU:0"):
        assert tf.saved_model.load(str(version)).signatures["serving_default"](
            text=tf.constant(["abc"]))["top_k_tokens"].shape == (1, 5)

    series_model = with_cudnn_kernels(build_next_value_model(5, [True], 0, 1, ModelConfig(cell=cell, units=4)))
    portable = cpu_portable_copy(series_model)  # what the series export traces
    assert not any(layer.get_config().get("use_cudnn") is True for layer in portable.layers)
    window = np.linspace(10.0, 11.0, 5, dtype=np.float32)[None, :, None]
    np.testing.assert_allclose(portable.predict(window, verbose=0), series_model.predict(window, verbose=0), atol=1e-6)


def test_multiworker_refuses_a_wall_time_budget(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pipelines.text", "--strategy", "multiworker",
                             "--time-budget-minutes", "5", "--output", str(tmp_path / "sm" / "t")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "--time-budget-minutes cannot be used with --strategy multiworker" in result.stderr
