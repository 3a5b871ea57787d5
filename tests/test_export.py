"""The exported SavedModel: layout, signatures, sampling, errors, warmup file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from model.builders import build_next_token_model
from model.config import MAX_TOKENS_LIMIT, ModelConfig
from model.export import WARMUP_FILE, export_new_version
from model.vocabulary import FIRST_TOKEN_ID, encode, id_space_size

from conftest import train_tiny


def generate(loaded, texts, max_tokens=20, temperature=1.0, seeds=None, top_k=None):
    n = len(texts)
    inputs = dict(
        text=tf.constant(texts, tf.string),
        max_tokens=tf.constant(max_tokens if isinstance(max_tokens, list) else [max_tokens] * n, tf.int32),
        temperature=tf.constant(temperature if isinstance(temperature, list) else [temperature] * n, tf.float32),
        seed=tf.constant(seeds if seeds is not None else list(range(n)), tf.int64))
    if top_k is None:
        out = loaded.signatures["generate"](**inputs)
    else:
        out = loaded.signatures["generate_top_k"](**inputs, top_k=tf.constant([top_k] * n, tf.int32))
    return [s.decode("utf-8") for s in out["generated"].numpy()]


def test_tf_serving_layout_with_metadata_and_warmup(exported_lstm):
    summary, version = exported_lstm
    assert version.name == "1" and version.parent.name == "tiny"
    assert (version / "saved_model.pb").is_file() and (version / "variables").is_dir()
    assert (version / WARMUP_FILE).is_file()
    metadata = json.loads((version / "assets" / "metadata.json").read_text(encoding="utf-8"))
    assert metadata["model_kind"] == "next_token" and metadata["cell"] == "lstm"
    assert metadata["seq_len"] == 20 and metadata["token_level"] == "char"
    assert len(metadata["vocabulary"]) == summary["vocabulary_size"]
    assert [p.name for p in version.parent.iterdir()] == ["1"]  # no staging directory left behind


def test_signatures_and_their_output_names(loaded_lstm):
    signatures = loaded_lstm.signatures
    assert set(signatures) == {"serving_default", "generate", "generate_top_k", "metadata"}
    assert set(signatures["serving_default"].structured_outputs) == {
        "probabilities", "top_k_tokens", "top_k_probabilities"}
    assert set(signatures["generate"].structured_outputs) == {"generated"}
    inputs = signatures["generate"].structured_input_signature[1]
    assert {name: (spec.dtype, spec.shape.as_list()) for name, spec in inputs.items()} == {
        "text": (tf.string, [None]), "max_tokens": (tf.int32, [None]),
        "temperature": (tf.float32, [None]), "seed": (tf.int64, [None])}


def test_metadata_signature_answers_the_same_facts_in_every_row(loaded_lstm, exported_lstm):
    out = loaded_lstm.signatures["metadata"](rows=tf.constant([7, 0, 3]))  # values are ignored
    assert list(out["cell"].numpy()) == [b"lstm"] * 3 and list(out["token_level"].numpy()) == [b"char"] * 3
    assert list(out["seq_len"].numpy()) == [20] * 3
    vocabulary = json.loads((exported_lstm[1] / "assets" / "metadata.json").read_text())["vocabulary"]
    assert out["vocabulary"].shape == (3, exported_lstm[0]["vocabulary_size"])
    assert [t.decode() for t in out["vocabulary"].numpy()[2]] == vocabulary


def _keras_model_of_run(summary) -> tuple:
    """Rebuild the trained Keras model from the run's best checkpoint (what was exported)."""
    metadata = json.loads((Path(summary["export_path"]) / "assets" / "metadata.json").read_text())
    vocabulary = metadata["vocabulary"]
    config = ModelConfig(**summary["config"]["model"])
    model = build_next_token_model(id_space_size(vocabulary), config)
    model.load_weights(Path(summary["run_dir"]) / "best.weights.h5")
    return model, vocabulary


@pytest.fixture(scope="module", params=["simple_rnn", "gru"])
def other_cells(request, corpus_file, tmp_path_factory):
    summary = train_tiny(corpus_file, tmp_path_factory.mktemp(request.param), request.param, layers=2)
    return summary


def _assert_serving_matches_keras(summary):
    model, vocabulary = _keras_model_of_run(summary)
    loaded = tf.saved_model.load(summary["export_path"])
    prompts = ["The quick", "Over a lazy dog", "x"]
    out = loaded.signatures["serving_default"](text=tf.constant(prompts))
    probabilities = out["probabilities"].numpy()
    assert probabilities.shape == (3, len(vocabulary))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    for row, prompt in enumerate(prompts):
        logits = model(encode(list(prompt), vocabulary)[None, :]).numpy()[0, -1]
        expected = tf.nn.softmax(logits[FIRST_TOKEN_ID:]).numpy()  # padding/OOV excluded
        np.testing.assert_allclose(probabilities[row], expected, atol=1e-5)
    top = out["top_k_probabilities"].numpy()
    np.testing.assert_allclose(top, -np.sort(-probabilities, axis=1)[:, :top.shape[1]], rtol=1e-6)
    best = [vocabulary[i] for i in probabilities.argmax(axis=1)]
    assert [t.decode() for t in out["top_k_tokens"].numpy()[:, 0]] == best


def test_next_token_probabilities_equal_the_trained_keras_model_lstm(exported_lstm):
    _assert_serving_matches_keras(exported_lstm[0])


def test_next_token_probabilities_equal_the_trained_keras_model_other_cells(other_cells):
    _assert_serving_matches_keras(other_cells)


def test_generation_is_reproducible_per_seed_and_independent_of_the_batch(loaded_lstm):
    alone = generate(loaded_lstm, ["The "], max_tokens=40, seeds=[7])[0]
    assert len(alone) == 40
    assert generate(loaded_lstm, ["The "], max_tokens=40, seeds=[7])[0] == alone
    assert generate(loaded_lstm, ["The "], max_tokens=40, seeds=[8])[0] != alone
    # Merged with other requests (as TensorFlow Serving's batching does): same answer.
    batch = generate(loaded_lstm, ["A lazy", "The ", ""], max_tokens=[5, 40, 12], seeds=[1, 7, 3],
                     temperature=[0.5, 1.0, 2.0])
    assert batch[1] == alone
    assert [len(text) for text in batch] == [5, 40, 12]  # each row stops at its own max_tokens


def test_oov_is_never_sampled_and_unknown_prompt_characters_are_accepted(loaded_lstm, exported_lstm):
    vocabulary = set(exported_lstm[0] and json.loads(
        (exported_lstm[1] / "assets" / "metadata.json").read_text())["vocabulary"])
    texts = generate(loaded_lstm, ["Ωμέγα ✓ 日本", "", "zzz"], max_tokens=300, temperature=50.0)
    for text in texts:
        assert len(text) == 300
        assert set(text) <= vocabulary and "[UNK]" not in text


def test_greedy_decoding_two_ways_agree(loaded_lstm):
    cold = generate(loaded_lstm, ["The quick"], max_tokens=30, temperature=1e-4)[0]
    top1 = generate(loaded_lstm, ["The quick"], max_tokens=30, temperature=1.0, seeds=[99], top_k=1)[0]
    assert cold == top1
    probabilities = loaded_lstm.signatures["serving_default"](text=tf.constant(["The quick"]))
    assert cold[0] == probabilities["top_k_tokens"].numpy()[0, 0].decode()


def test_top_k_restricts_the_choice(loaded_lstm):
    prompt = "The quick"
    top = loaded_lstm.signatures["serving_default"](text=tf.constant([prompt]))["top_k_tokens"].numpy()[0]
    allowed = {t.decode() for t in top[:2]}
    firsts = {generate(loaded_lstm, [prompt], max_tokens=1, temperature=5.0, seeds=[s], top_k=2)[0]
              for s in range(40)}
    assert firsts <= allowed


def test_zero_tokens_and_empty_batches(loaded_lstm):
    assert generate(loaded_lstm, ["abc", ""], max_tokens=0) == ["", ""]
    assert generate(loaded_lstm, [], max_tokens=[], temperature=[], seeds=[]) == []


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": 0.0}, "temperature must be > 0"),
    ({"temperature": -1.0}, "temperature must be > 0"),
    ({"max_tokens": -1}, "max_tokens must be >= 0"),
    ({"max_tokens": MAX_TOKENS_LIMIT + 1}, f"max_tokens must be <= {MAX_TOKENS_LIMIT}"),
    ({"seeds": [1, 2]}, "seed must have one value per prompt"),
])
def test_bad_generation_requests_fail_with_a_message(loaded_lstm, kwargs, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        generate(loaded_lstm, ["The "], **kwargs)


def test_warmup_file_holds_replayable_prediction_logs(exported_lstm, loaded_lstm):
    from tensorflow_serving.apis import prediction_log_pb2

    records = list(tf.data.TFRecordDataset(str(exported_lstm[1] / WARMUP_FILE)).as_numpy_iterator())
    logs = [prediction_log_pb2.PredictionLog.FromString(record) for record in records]
    # Every signature, so a version that any signature of cannot run is never served.
    assert [log.predict_log.request.model_spec.signature_name for log in logs] == [
        "serving_default", "generate", "generate_top_k", "metadata"]
    for log in logs:
        request = log.predict_log.request
        assert request.model_spec.name == "tiny"
        inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
        outputs = loaded_lstm.signatures[request.model_spec.signature_name](**inputs)
        assert outputs  # each warmup request is accepted by its signature


def test_the_graph_has_no_cudnn_ops(exported_lstm):
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel.FromString((exported_lstm[1] / "saved_model.pb").read_bytes())
    graph = saved_model.meta_graphs[0].graph_def
    ops = {node.op for node in graph.node} | {node.op for f in graph.library.function for node in f.node_def}
    assert "MatMul" in ops
    assert not [op for op in ops if "Cudnn" in op]
    # Nor any traced Keras layer call (whose graph, traced on a GPU, would hold cuDNN ops).
    functions = [f.signature.name for f in graph.library.function]
    assert not [name for name in functions if "next_token_lstm" in name or "lstm_0" in name], functions


def test_word_level_export_generates_words(corpus_file, tmp_path):
    summary = train_tiny(corpus_file, tmp_path, "gru", token_level="word", seq_len=8)
    loaded = tf.saved_model.load(summary["export_path"])
    text = generate(loaded, ["the quick"], max_tokens=6, seeds=[3])[0]
    assert text.startswith(" ") and len(text.split()) == 6
    assert generate(loaded, [""], max_tokens=3)[0].count(" ") == 2  # no leading space without a prompt


def test_versions_increment_and_a_failed_export_leaves_nothing(tmp_path):
    base = tmp_path / "model"
    first = export_new_version(base, lambda d: (d / "saved_model.pb").write_text("x"))
    second = export_new_version(base, lambda d: (d / "saved_model.pb").write_text("y"))
    assert (first.name, second.name) == ("1", "2")

    def broken(directory):
        (directory / "half_written").write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        export_new_version(base, broken)
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]


def test_staging_left_by_a_dead_exporter_is_removed_and_a_live_ones_is_kept(tmp_path):
    import os
    import subprocess
    import sys

    from model.export import remove_abandoned_staging

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    abandoned = tmp_path / f".export-{int(dead.stdout)}-abc"
    (abandoned / "variables").mkdir(parents=True)
    live = tmp_path / f".export-{os.getppid()}-def"  # pytest's parent: alive
    live.mkdir()
    assert remove_abandoned_staging(tmp_path) == [abandoned]
    assert not abandoned.exists() and live.exists()
