"""Every export runs under the session-based loader, as TensorFlow Serving, Java, Go and C programs load it.

Python's `tf.saved_model.load` is object-based and forgiving; TensorFlow
Serving imports the MetaGraph into a Session, runs the restore and init ops,
and calls `Session.run` on the tensors a SignatureDef names. The "other apps"
here import nothing from this repository: a Python process with only
TensorFlow, `saved_model_cli`, and a C program built against the C API that
the tensorflow wheel ships.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from model.builders import build_next_token_model
from model.config import ModelConfig
from model.series_export import export_series_model
from model.series_model import build_next_value_model, fit_scaling
from model.text_export import export_text_model

from conftest import ROOT, with_cudnn_kernels

CHARS = list("the quickbrownfxjmpsvlazydg.T\n")
WORDS = "the quick brown fox jumps over a lazy dog".split()

# Every shape of export the pipelines write (with the two the pipelines train in conftest:
# an LSTM, char level, 1 layer; a stock LSTM with horizon 1 and quantiles).
TEXT_EXPORTS = {
    "text_gru_word_2layers_cudnn": dict(cell="gru", layers=2, token_level="word", cudnn=True),
    "text_simple_rnn_char_2layers": dict(cell="simple_rnn", layers=2, token_level="char"),
    "text_lstm_char_cudnn": dict(cell="lstm", layers=1, token_level="char", cudnn=True),
}
SERIES_EXPORTS = {
    "stock_gru_h3_bidirectional_two_features": dict(cell="gru", window=8, horizon=3, features=2, bidirectional=True),
    "stock_simple_rnn_h2_quantiles_bidirectional_scaled": dict(
        cell="simple_rnn", window=6, horizon=2, bidirectional=True, quantiles=(0.25, 0.5, 0.75), transform="scaled"),
    "stock_lstm_cudnn": dict(cell="lstm", window=10, horizon=1, cudnn=True),
}


def _prices(days: int, features: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    walk = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.01, size=(days, 1)), axis=0))
    volume = rng.integers(1_000, 5_000, size=(days, 1)).astype(float)
    return np.concatenate([walk, volume], axis=1)[:, :features]


def _export_text(base: Path, cell: str, layers: int, token_level: str, cudnn: bool = False) -> Path:
    vocabulary = WORDS if token_level == "word" else CHARS
    model = build_next_token_model(len(vocabulary) + 2, ModelConfig(cell=cell, units=8, layers=layers,
                                                                    embedding_dim=6))
    if cudnn:  # as a GPU training run has it
        model = with_cudnn_kernels(model)
    return export_text_model(model, base, vocabulary, token_level, list(range(1, len(vocabulary) + 1)), 12)


def _export_series(base: Path, cell: str, window: int, horizon: int, features: int = 1, quantiles=(),
                   bidirectional: bool = False, transform: str = "log_returns", cudnn: bool = False) -> Path:
    log_features = [True, False][:features]
    model = build_next_value_model(window, log_features, 0, horizon, ModelConfig(cell=cell, units=4),
                                   transform, quantiles, bidirectional)
    if cudnn:
        model = with_cudnn_kernels(model)
    prices = _prices(200, features)
    model.get_layer("price_scaling").set_stats(fit_scaling(prices, 0, transform, log_features))
    names = ["close", "volume"][:features]
    return export_series_model(model, base, {
        "cell": cell, "window": window, "horizon": horizon, "features": names, "log_features": log_features,
        "target": "close", "transform": transform, "quantile_levels": list(quantiles)}, prices[-window:])


@pytest.fixture(scope="module")
def exports(tmp_path_factory, exported_lstm, exported_stock) -> dict[str, Path]:
    """name -> version directory: every kind above, plus the two trained by the pipelines themselves."""
    root = tmp_path_factory.mktemp("exports")
    built = {name: _export_text(root / name, **spec) for name, spec in TEXT_EXPORTS.items()}
    built |= {name: _export_series(root / name, **spec) for name, spec in SERIES_EXPORTS.items()}
    built["pipeline_text"] = exported_lstm[1]
    built["pipeline_stock"] = exported_stock[1]
    return built


def _signature_defs(version: Path):
    meta_graph = saved_model_pb2.SavedModel.FromString((version / "saved_model.pb").read_bytes()).meta_graphs[0]
    return {key: value for key, value in meta_graph.signature_def.items() if not key.startswith("__")}


def example_inputs(version: Path) -> dict[str, dict[str, np.ndarray]]:
    """Three rows for every signature of an export."""
    metadata = json.loads((version / "assets" / "metadata.json").read_text(encoding="utf-8"))
    rows = np.array([0, 1, 2], np.int32)
    if metadata["model_kind"] == "next_value":
        days, features = metadata["window"], len(metadata["features"])
        windows = np.stack([_prices(days, features, seed) for seed in (1, 2, 3)]).astype(np.float32)
        return {"serving_default": {"window": windows}, "metadata": {"rows": rows}}
    words = metadata["token_level"] == "word"
    text = np.array(["the quick", "", "lazy dog"] if words else ["The qu", "", "Ωμ dog"], dtype=object)
    generate = {"text": text, "max_tokens": np.array([12, 0, 5], np.int32),
                "temperature": np.array([0.7, 1.0, 1.5], np.float32), "seed": np.array([1, 2, 3], np.int64)}
    return {"serving_default": {"text": text}, "generate": generate,
            "generate_top_k": {**generate, "top_k": np.array([3, 0, 1], np.int32)}, "metadata": {"rows": rows}}


_OBJECT_LOADED: dict[Path, object] = {}


def _object_loaded(version: Path):
    """`tf.saved_model.load` of a version, once per test session."""
    if version not in _OBJECT_LOADED:
        _OBJECT_LOADED[version] = tf.saved_model.load(str(version))
    return _OBJECT_LOADED[version]


def _object_loader_answers(version: Path, inputs: dict[str, dict[str, np.ndarray]]):
    loaded = _object_loaded(version)
    return {key: {name: value.numpy() for name, value in loaded.signatures[key](
        **{k: tf.constant(v) for k, v in arrays.items()}).items()} for key, arrays in inputs.items()}


def _assert_same(answer, expected, where: str) -> None:
    assert set(answer) == set(expected), where
    for name, value in expected.items():
        got = np.asarray(answer[name])
        if value.dtype == object:
            assert [v.decode("utf-8") for v in value.ravel()] == list(got.ravel()), f"{where}: {name}"
        else:
            np.testing.assert_allclose(got, value, rtol=1e-5, atol=1e-6, err_msg=f"{where}: {name}")


ONLY_TENSORFLOW = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf

    requests = json.load(open(sys.argv[1], encoding="utf-8"))
    answers = {}
    for version, signatures in requests.items():
        graph = tf.Graph()
        with tf.compat.v1.Session(graph=graph) as session:  # restore op, init op, as TF Serving loads
            meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], version)
            keys = sorted(key for key in meta_graph.signature_def if not key.startswith("__"))
            outputs = {}
            for key, inputs in signatures.items():
                signature = meta_graph.signature_def[key]
                feed = {signature.inputs[name].name: np.array(
                            [v.encode("utf-8") for v in value] if dtype == "string" else value,
                            dtype=object if dtype == "string" else dtype)
                        for name, (dtype, value) in inputs.items()}
                fetch = {name: info.name for name, info in signature.outputs.items()}
                result = session.run(fetch, feed)
                outputs[key] = {name: (np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(value)
                                       if value.dtype == object else value).tolist()
                                for name, value in result.items()}
        answers[version] = {"signatures": keys, "outputs": outputs}
    project = [m for m in sys.modules if m.split(".")[0] in ("model", "pipelines", "serving")]
    print(json.dumps({"answers": answers, "project_modules": project}))
""")


def _clean_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key != "PYTHONPATH"} | {"TF_CPP_MIN_LOG_LEVEL": "2"}


def test_a_process_with_only_tensorflow_runs_every_signature_of_every_export_in_a_session(exports, tmp_path):
    requests, expected = {}, {}
    for name, version in exports.items():
        inputs = example_inputs(version)
        assert set(inputs) == set(_signature_defs(version)), name  # every signature is exercised
        requests[str(version)] = {key: {input_name: ("string" if array.dtype == object else array.dtype.name,
                                                     array.tolist()) for input_name, array in arrays.items()}
                                  for key, arrays in inputs.items()}
        expected[str(version)] = (name, _object_loader_answers(version, inputs))
    request_file = tmp_path / "requests.json"
    request_file.write_text(json.dumps(requests, ensure_ascii=False), encoding="utf-8")
    script = tmp_path / "other_app.py"
    script.write_text(ONLY_TENSORFLOW)
    result = subprocess.run([sys.executable, str(script), str(request_file)], cwd=tmp_path, env=_clean_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    reply = json.loads(result.stdout.strip().splitlines()[-1])
    assert reply["project_modules"] == []
    for version, (name, object_answers) in expected.items():
        answer = reply["answers"][version]
        assert answer["signatures"] == sorted(object_answers), name
        for key, outputs in object_answers.items():
            # Same probabilities and values to float32 tolerance; the same generated text for the same seed.
            _assert_same(answer["outputs"][key], outputs, f"{name} {key}")


def test_every_signature_obeys_tensorflow_servings_batching_rules(exports):
    """At least one input; every input and output has a leading batch dimension (BatchingSession)."""
    for name, version in exports.items():
        for key, signature in _signature_defs(version).items():
            where = f"{name} {key}"
            assert signature.inputs, f"{where}: a signature without inputs cannot be batched"
            for tensor_name, info in [*signature.inputs.items(), *signature.outputs.items()]:
                dims = [dim.size for dim in info.tensor_shape.dim]
                assert not info.tensor_shape.unknown_rank and dims and dims[0] == -1, \
                    f"{where}: {tensor_name} has shape {dims}, not [batch, ...]"
        # And at run time: every output has as many rows as the request, for 1 and for 3 rows.
        loaded = _object_loaded(version)
        for key, arrays in example_inputs(version).items():
            for rows in (1, 3):
                outputs = loaded.signatures[key](**{k: tf.constant(v[:rows]) for k, v in arrays.items()})
                assert {k: int(v.shape[0]) for k, v in outputs.items()} == {k: rows for k in outputs}, name


def test_each_weight_is_one_variable_restored_from_the_checkpoint(exports):
    """The cause of the old failure: the functions read variables no checkpoint entry restored."""
    for name, version in exports.items():
        graph = saved_model_pb2.SavedModel.FromString((version / "saved_model.pb").read_bytes()).meta_graphs[0]
        handles = [node.attr["shared_name"].s.decode() for node in graph.graph_def.node if node.op == "VarHandleOp"]
        stored = [key for key, _ in tf.train.list_variables(str(version / "variables" / "variables"))
                  if key != "_CHECKPOINTABLE_OBJECT_GRAPH"]
        assert len(handles) == len(set(handles)) == len(stored), f"{name}: {handles} vs {stored}"
        assert not [h for h in handles if "optimizer" in h or h.startswith("adam")], name  # no training state


def _saved_model_cli(*args: str) -> str:
    cli = Path(sys.executable).with_name("saved_model_cli")
    result = subprocess.run([str(cli), *args], env=_clean_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _cli_result(stdout: str, key: str) -> str:
    match = re.search(rf"Result for output key {key}:\n(.*?)(?:\nResult for output key|\Z)", stdout, re.S)
    assert match, stdout[-2000:]
    return match.group(1).strip()


def test_saved_model_cli_runs_generation_and_next_value(exports):
    text, stock = exports["pipeline_text"], exports["pipeline_stock"]
    stdout = _saved_model_cli("run", "--dir", str(text), "--tag_set", "serve", "--signature_def", "generate",
                              "--input_exprs", 'text=["The qu"];max_tokens=[30];temperature=[0.5];seed=[1]')
    generated = ast.literal_eval(_cli_result(stdout, "generated"))[0].decode("utf-8")
    expected = _object_loader_answers(text, {"generate": {
        "text": np.array(["The qu"], object), "max_tokens": np.array([30], np.int32),
        "temperature": np.array([0.5], np.float32), "seed": np.array([1], np.int64)}})
    assert generated == expected["generate"]["generated"][0].decode("utf-8") and len(generated) == 30

    window = _prices(10, 1, seed=4)
    stdout = _saved_model_cli("run", "--dir", str(stock), "--tag_set", "serve", "--signature_def",
                              "serving_default", "--input_exprs", f"window={window[None].tolist()}")
    printed = float(re.findall(r"[-+]?\d+\.\d*(?:e[-+]?\d+)?", _cli_result(stdout, "next_value"))[0])
    expected = _object_loader_answers(stock, {"serving_default": {"window": window[None].astype(np.float32)}})
    np.testing.assert_allclose(printed, expected["serving_default"]["next_value"][0, 0], rtol=1e-5)


def _tensor_names(version: Path, key: str) -> tuple[dict[str, str], dict[str, str]]:
    signature = _signature_defs(version)[key]
    return ({name: info.name for name, info in signature.inputs.items()},
            {name: info.name for name, info in signature.outputs.items()})


@pytest.fixture(scope="module")
def c_program(tmp_path_factory) -> Path:
    """serving/c_api/run_saved_model.c built with gcc against the tensorflow wheel's C API."""
    assert shutil.which("gcc"), "gcc is needed to build the C example (apt-get install gcc)"
    binary = tmp_path_factory.mktemp("c") / "run_saved_model"
    result = subprocess.run(["make", "-s", f"PY={sys.executable}", f"C_EXAMPLE={binary}", str(binary)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return binary


def _run_c(binary: Path, version: Path, feeds: list[str], fetches: list[str]) -> dict[str, str]:
    result = subprocess.run([str(binary), str(version), *feeds, "--", *fetches], env=_clean_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.split(" ", 1)[0] in fetches]
    unescape = lambda text: re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), text)  # noqa: E731
    return {line.split(" ", 1)[0]: unescape(line.split("]:", 1)[1]) for line in lines}


def test_a_c_program_runs_generation_and_next_value_through_the_c_api(exports, c_program):
    text = exports["pipeline_text"]
    inputs, outputs = _tensor_names(text, "generate")
    printed = _run_c(c_program, text, [f"{inputs['text']}=string:The qu", f"{inputs['max_tokens']}=int32:30",
                                       f"{inputs['temperature']}=float:0.5", f"{inputs['seed']}=int64:1"],
                     [outputs["generated"]])
    expected = _object_loader_answers(text, {"generate": {
        "text": np.array(["The qu"], object), "max_tokens": np.array([30], np.int32),
        "temperature": np.array([0.5], np.float32), "seed": np.array([1], np.int64)}})
    assert printed[outputs["generated"]] == " " + expected["generate"]["generated"][0].decode("utf-8")

    stock = exports["pipeline_stock"]
    inputs, outputs = _tensor_names(stock, "serving_default")
    window = _prices(10, 1, seed=5).astype(np.float32)
    values = ",".join(f"{v:.9g}" for v in window.ravel())
    printed = _run_c(c_program, stock, [f"{inputs['window']}=float[1,10,1]:{values}"],
                     [outputs["next_value"], outputs["quantiles"]])
    expected = _object_loader_answers(stock, {"serving_default": {"window": window[None]}})["serving_default"]
    np.testing.assert_allclose([float(v) for v in printed[outputs["next_value"]].split()],
                               expected["next_value"].ravel(), rtol=1e-5)
    np.testing.assert_allclose([float(v) for v in printed[outputs["quantiles"]].split()],
                               expected["quantiles"].ravel(), rtol=1e-5)


def test_the_c_program_reports_a_missing_tensor_and_a_broken_export(exports, c_program, tmp_path):
    result = subprocess.run([str(c_program), str(exports["pipeline_text"]), "no_such_tensor:0=int32:1", "--",
                             "x:0"], env=_clean_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "no such operation in the graph" in result.stderr
    broken = tmp_path / "broken"
    shutil.copytree(exports["pipeline_text"], broken)
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    result = subprocess.run([str(c_program), str(broken), "a:0=int32:1", "--", "b:0"], env=_clean_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "error: loading the SavedModel" in result.stderr


def test_every_exports_warmup_file_replays_under_the_session_loader_with_batching(exports):
    """What TensorFlow Serving does when it loads a version with batching on: every record must succeed."""
    from serving.batching import BatchingOptions, BatchScheduler
    from serving.models import load_version
    from serving.prediction import Predictor

    service = Predictor(None, BatchScheduler(BatchingOptions(batch_timeout_micros=0)))
    for name, version in exports.items():
        loaded = load_version(name, 1, version)
        try:
            assert service.warm_up(loaded) == len(_signature_defs(version)), name  # one record per signature
        finally:
            loaded.bundle.close()
