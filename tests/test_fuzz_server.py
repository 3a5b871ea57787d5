"""Property-based fuzzing of Predict against a running server (hypothesis).

Requests are drawn from well-formed ones (arrays of any dtype and shape, odd
values: NaN, Inf, huge numbers, invalid UTF-8) and from TensorProtos written
field by field (any dtype number, negative or enormous dimensions, content
that does not match the shape). Whatever arrives, the answer is OK or one of
the codes TensorFlow Serving uses for a bad request, never INTERNAL or
UNKNOWN, and the server process is still there to answer the next one.

Examples are derandomized (the same ones on every run, so CI is
reproducible) and bounded; raise FUZZ_EXAMPLES to search longer.
"""

from __future__ import annotations

import os
import signal

import grpc
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_service_pb2_grpc

from conftest import publish_text_and_stock, start_server

PROPER_CODES = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNIMPLEMENTED}
INPUT_NAMES = ["text", "window", "max_tokens", "temperature", "seed", "top_k", "junk"]
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))


@pytest.fixture(scope="module")
def fuzzed_server(exported_lstm, exported_stock, tmp_path_factory):
    _, config = publish_text_and_stock(tmp_path_factory.mktemp("fuzz"), exported_lstm[1], exported_stock[1])
    process, target = start_server(config, "--file_system_poll_wait_seconds", "0")
    channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)])
    yield process, prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.integers(-60, 60),
                    st.sampled_from([0.0, -0.0, 1e-30, 1e30, 3e38]))
DTYPES = [np.float32, np.float64, np.int32, np.int64, np.float16, np.bool_, object]


@st.composite
def array_tensor(draw) -> tensor_pb2.TensorProto:
    """A well-formed tensor: any dtype, rank 0-3, small sizes, odd values."""
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.lists(st.integers(0, 12), max_size=3))
    size = int(np.prod(shape)) if shape else 1
    if dtype is object:
        values = draw(st.lists(st.one_of(st.binary(max_size=24), st.text(max_size=12).map(str.encode)),
                               min_size=size, max_size=size))
        array = np.array(values, dtype=object).reshape(shape)
    else:
        values = draw(st.lists(NUMBERS, min_size=size, max_size=size))
        with np.errstate(all="ignore"):
            array = np.array(values, dtype=np.float64).astype(dtype).reshape(shape)
    return tf.make_tensor_proto(array)


@st.composite
def raw_tensor(draw) -> tensor_pb2.TensorProto:
    """A TensorProto written field by field: any dtype number, any dims, content that may not fit."""
    proto = tensor_pb2.TensorProto(dtype=draw(st.one_of(st.integers(0, 30), st.just(999))))
    for size in draw(st.lists(st.one_of(st.integers(-2, 12), st.integers(10**6, 10**9)), max_size=4)):
        proto.tensor_shape.dim.add(size=size)
    content = draw(st.sampled_from(["none", "bytes", "floats", "ints", "strings"]))
    if content == "bytes":
        proto.tensor_content = draw(st.binary(max_size=64))
    elif content == "floats":
        proto.float_val.extend(draw(st.lists(st.floats(width=32), max_size=8)))
    elif content == "ints":
        proto.int_val.extend(draw(st.lists(st.integers(-2**31, 2**31 - 1), max_size=8)))
    elif content == "strings":
        proto.string_val.extend(draw(st.lists(st.binary(max_size=16), max_size=8)))
    return proto


@st.composite
def predict_request(draw) -> predict_pb2.PredictRequest:
    spec = model_pb2.ModelSpec(name=draw(st.sampled_from(["text", "stock", "", "nope", "../text"])),
                               signature_name=draw(st.sampled_from(["", "serving_default", "generate",
                                                                    "generate_top_k", "nope"])))
    version = draw(st.one_of(st.none(), st.integers(-1, 3)))
    if version is not None:
        spec.version.value = version
    elif draw(st.booleans()):
        spec.version_label = draw(st.sampled_from(["stable", "canary"]))
    request = predict_pb2.PredictRequest(model_spec=spec, output_filter=draw(
        st.lists(st.sampled_from(["top_k_tokens", "generated", "next_value", "nope"]), max_size=2)))
    for name in draw(st.lists(st.sampled_from(INPUT_NAMES), max_size=5, unique=True)):
        request.inputs[name].CopyFrom(draw(st.one_of(array_tensor(), raw_tensor())))
    return request


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(request=predict_request())
def test_every_answer_is_ok_or_a_proper_error_and_the_server_never_dies(fuzzed_server, request):
    process, stub = fuzzed_server
    try:
        stub.Predict(request, timeout=60)
        code, details = grpc.StatusCode.OK, ""
    except grpc.RpcError as error:
        code, details = error.code(), error.details()
    assert process.poll() is None, f"the server died on {request}"
    assert code in PROPER_CODES, f"{code.name}: {details}\nrequest: {request}"
    if code != grpc.StatusCode.OK:
        assert details and "\n" not in details, details


def test_the_server_answers_normally_after_the_fuzzing(fuzzed_server):
    process, stub = fuzzed_server
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="text"))
    request.inputs["text"].CopyFrom(tf.make_tensor_proto(np.array([b"the quick"], dtype=object)))
    reply = stub.Predict(request, timeout=60)
    assert tf.make_ndarray(reply.outputs["top_k_probabilities"]).shape == (1, 5)
    assert process.poll() is None
