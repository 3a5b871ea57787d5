"""The embedded server loads a version as TensorFlow Serving does, and refuses what it would refuse.

Session-based loader (restore op, init op), then the version's warmup file
replayed through the Predict path; AVAILABLE only if every record succeeds,
otherwise END with the error while the versions already loaded keep serving
(`saved_model_warmup_util.cc`). With batching on, BatchingSession's rules and
codes apply to every request, warmup included. A real server over gRPC on
loopback, in this process so that versions can be published between refreshes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import model_pb2, predict_pb2

from model.export import WARMUP_FILE, write_warmup_requests
from serving.batching import BatchingOptions
from serving.lifecycle import Server
from serving.prediction_client import PredictionClient, ServingCallError

from conftest import copy_version

GENERATE = {"text": np.array(["the"], object), "max_tokens": np.array([4], np.int32),
            "temperature": np.array([1.0], np.float32), "seed": np.array([1], np.int64)}


@pytest.fixture()
def text_server(exported_lstm, tmp_path, request):
    """A server for one text model whose version 1 is the trained export; `batching` via indirect params."""
    base = tmp_path / "models" / "text"
    copy_version(exported_lstm[1], base, 1)
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "text" base_path: "{base}" model_platform: "tensorflow" '
                      'model_version_policy { latest { num_versions: 2 } } } }')
    batching = BatchingOptions(batch_timeout_micros=0) if getattr(request, "param", False) else None
    server = Server(str(config), port=0, file_system_poll_wait_seconds=0, batching=batching).start()
    try:
        yield server, base
    finally:
        server.stop(grace=1)


def _publish(base: Path, source: Path, version: int, change) -> Path:
    """Publish `source` as `version` after `change(directory)` altered it (before it becomes visible)."""
    staging = base.parent / f"staging-{version}"
    shutil.copytree(source, staging)
    change(staging)
    target = base / str(version)
    staging.rename(target)
    return target


def _states(server: Server) -> dict[int, tuple[str, str]]:
    with PredictionClient(f"127.0.0.1:{server.port}", "text") as client:
        return {row["version"]: (row["state"], row["error"]) for row in client.status()}


def _assert_version_1_answers(server: Server) -> None:
    with PredictionClient(f"127.0.0.1:{server.port}", "text", version=1) as client:
        assert len(client.generate("the", max_tokens=5)) == 5


def test_a_version_with_good_warmup_becomes_available_and_serves(text_server, exported_lstm):
    server, base = text_server
    _publish(base, exported_lstm[1], 2, lambda d: None)
    server.models.refresh()
    assert _states(server) == {1: ("AVAILABLE", ""), 2: ("AVAILABLE", "")}
    with PredictionClient(f"127.0.0.1:{server.port}", "text") as client:
        assert client.predict({"rows": np.array([0], np.int32)}, "metadata")["cell"][0] == "lstm"


def _bad_warmup_records(name: str):
    if name == "a request the model refuses":
        return [("serving_default", {"text": np.array(["the"], object)}),
                ("generate", {**GENERATE, "temperature": np.array([0.0], np.float32)})]
    if name == "an unknown signature":
        return [("no_such_signature", {"text": np.array(["the"], object)})]
    if name == "a missing input":
        return [("generate", {"text": np.array(["the"], object)})]
    raise AssertionError(name)


@pytest.mark.parametrize("case, message", [
    ("a request the model refuses", "warmup record 2 (signature 'generate') failed: temperature must be > 0"),
    ("an unknown signature", "warmup record 1 (signature 'no_such_signature') failed: Serving signature key "
                             '"no_such_signature" not found'),
    ("a missing input", "warmup record 1 (signature 'generate') failed: missing input 'max_tokens'"),
])
def test_a_version_whose_warmup_fails_is_refused_and_the_previous_keeps_serving(text_server, exported_lstm,
                                                                                case, message):
    server, base = text_server
    _publish(base, exported_lstm[1], 2, lambda d: write_warmup_requests(d, "text", _bad_warmup_records(case)))
    server.models.refresh()
    states = _states(server)
    assert states[1] == ("AVAILABLE", "")
    assert states[2][0] == "END" and message in states[2][1], states[2]
    _assert_version_1_answers(server)
    with PredictionClient(f"127.0.0.1:{server.port}", "text", version=2) as client:
        with pytest.raises(ServingCallError) as refused:
            client.generate("the")
    assert refused.value.code == grpc.StatusCode.NOT_FOUND  # never served


def test_a_warmup_file_that_is_not_tfrecord_is_refused(text_server, exported_lstm):
    server, base = text_server
    _publish(base, exported_lstm[1], 2, lambda d: (d / WARMUP_FILE).write_bytes(b"\x00" * 40 + b"not a record"))
    server.models.refresh()
    state, error = _states(server)[2]
    assert state == "END" and "Please verify your warmup data is in TFRecord format" in error, error
    _assert_version_1_answers(server)


def test_more_warmup_records_than_tensorflow_serving_allows_are_refused(text_server, exported_lstm):
    server, base = text_server
    records = [("serving_default", {"text": np.array(["t"], object)})] * 1001
    _publish(base, exported_lstm[1], 2, lambda d: write_warmup_requests(d, "text", records))
    server.models.refresh()
    state, error = _states(server)[2]
    assert state == "END" and "Number of warmup records exceeds the maximum (1000)" in error, error


def _unbatchable_saved_model(directory: Path) -> None:
    """A SavedModel TensorFlow Serving loads without batching but not with it (as our old exports were):
    a signature without inputs, and one whose output has no batch dimension."""
    import tensorflow as tf

    module = tf.Module()
    module.scale = tf.Variable(2.0)
    signatures = {
        "serving_default": tf.function(lambda x: {"y": x * module.scale},
                                       input_signature=[tf.TensorSpec([None], tf.float32, name="x")]),
        "facts": tf.function(lambda: {"answer": tf.constant(42)}, input_signature=[]),
        "total": tf.function(lambda x: {"sum": tf.reduce_sum(x) * module.scale},
                             input_signature=[tf.TensorSpec([None], tf.float32, name="x")]),
    }
    tf.saved_model.save(module, str(directory), signatures=signatures)


@pytest.mark.parametrize("text_server", [False, True], indirect=True, ids=["batching off", "batching on"])
def test_a_signature_without_inputs_in_warmup_loads_only_without_batching(text_server, tmp_path):
    server, base = text_server
    batching = server.predictions.batching is not None
    source = tmp_path / "unbatchable"
    _unbatchable_saved_model(source)
    _publish(base, source, 2, lambda d: write_warmup_requests(d, "text", [
        ("serving_default", {"x": np.array([1.0], np.float32)}), ("facts", {})]))
    server.models.refresh()
    state, error = _states(server)[2]
    if batching:  # TensorFlow Serving's warmup runs through its BatchingSession: this version never serves
        assert state == "END" and "Batching Run() must have at least one input tensor" in error, error
        _assert_version_1_answers(server)
    else:
        assert state == "AVAILABLE", error


@pytest.mark.parametrize("text_server", [False, True], indirect=True, ids=["batching off", "batching on"])
def test_with_batching_an_output_without_batch_dimension_is_failed_precondition(text_server, tmp_path):
    server, base = text_server
    source = tmp_path / "unbatchable"
    _unbatchable_saved_model(source)
    _publish(base, source, 3, lambda d: None)
    server.models.refresh()
    with PredictionClient(f"127.0.0.1:{server.port}", "text", version=3) as client:
        request = {"x": np.array([1.0, 2.0], np.float32)}
        np.testing.assert_allclose(client.predict(request)["y"], [2.0, 4.0])
        if server.predictions.batching is None:
            assert float(client.predict(request, "total")["sum"]) == 6.0
            assert int(client.predict({}, "facts")["answer"]) == 42
        else:
            with pytest.raises(ServingCallError, match="Batched output tensor has 0 dimensions") as scalar:
                client.predict(request, "total")
            assert scalar.value.code == grpc.StatusCode.FAILED_PRECONDITION
            with pytest.raises(ServingCallError, match="must have at least one input tensor") as no_input:
                client.predict({}, "facts")
            assert no_input.value.code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("text_server", [True], indirect=True)
def test_with_batching_every_request_follows_batching_sessions_rules(text_server):
    server, _ = text_server
    stub_target = f"127.0.0.1:{server.port}"
    with PredictionClient(stub_target, "text") as client:
        with pytest.raises(ServingCallError, match="Batching Run\\(\\) input tensors must have equal "
                                                   "0th-dimension size") as unequal:
            client.predict({**GENERATE, "text": np.array(["a", "b"], object)}, "generate")
        assert unequal.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert len(client.predict({"rows": np.array([5, 6], np.int32)}, "metadata")["vocabulary"]) == 2


def test_without_batching_a_scalar_where_the_signature_declares_a_batch_is_refused(text_server):
    server, _ = text_server
    with PredictionClient(f"127.0.0.1:{server.port}", "text") as client:
        with pytest.raises(ServingCallError, match="input 'rows' must have shape \\[None\\]") as refused:
            client.predict({"rows": np.int32(0)}, "metadata")
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_batched_outputs_without_a_batch_dimension_fail_with_failed_precondition():
    from serving.models import ServingError
    from serving.prediction import check_batched_outputs

    with pytest.raises(ServingError, match="Batched output tensor has 0 dimensions") as scalar:
        check_batched_outputs({"seq_len": np.array(20)}, rows=1)
    assert scalar.value.code == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(ServingError, match="0th dimension does not equal") as rows:
        check_batched_outputs({"vocabulary": np.zeros([45], object)}, rows=2)
    assert rows.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert check_batched_outputs({"x": np.zeros([2, 3])}, rows=2)["x"].shape == (2, 3)


@pytest.mark.parametrize("damage, message", [
    ("truncated variables", "OutOfRangeError: Read less bytes than requested"),
    ("a saved_model.pb from something else", "Cannot parse file"),
    ("no variables directory", "Could not find variable"),  # loads (nothing to restore); warmup fails
])
def test_a_version_the_session_loader_cannot_load_is_reported_and_nothing_else_stops(text_server, exported_lstm,
                                                                                     damage, message):
    server, base = text_server

    def break_it(directory: Path) -> None:
        if damage == "truncated variables":
            data = next((directory / "variables").glob("variables.data-*"))
            data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
        elif damage == "a saved_model.pb from something else":
            request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="text"))
            (directory / "saved_model.pb").write_bytes(request.SerializeToString() + b"\x08\x96\x01garbage")
        else:
            shutil.rmtree(directory / "variables")

    _publish(base, exported_lstm[1], 2, break_it)
    server.models.refresh()
    states = _states(server)
    assert states[2][0] == "END" and message in states[2][1], states[2]
    assert states[1] == ("AVAILABLE", "")
    _assert_version_1_answers(server)
