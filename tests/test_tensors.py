"""The wire codec writes and reads exactly what TensorFlow's own functions do."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from serving.tensors import to_array, to_proto, to_proto_field

SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
NUMERIC = st.sampled_from([np.float32, np.float64, np.int32, np.int64]).flatmap(
    lambda dtype: hnp.arrays(dtype, SHAPES))
BYTES = SHAPES.flatmap(lambda shape: st.lists(st.binary(max_size=12), min_size=int(np.prod(shape)),
                                              max_size=int(np.prod(shape))).map(
    lambda values: np.array(values + [None], dtype=object)[:-1].reshape(shape)))


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and (
        np.array_equal(a, b, equal_nan=True) if a.dtype != object else a.tolist() == b.tolist())


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.one_of(NUMERIC, BYTES))
def test_arrays_round_trip_exactly_as_tensorflow_writes_and_reads_them(array):
    proto = to_proto(array)
    assert proto == tf.make_tensor_proto(array)
    decoded = to_array(proto)
    assert same(decoded, tf.make_ndarray(proto)) and same(decoded, array)
    assert decoded.flags.writeable


def proto(dtype, dims, **fields) -> tensor_pb2.TensorProto:
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=n) for n in dims])
    return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=shape, **fields)


@pytest.mark.parametrize("odd", [
    proto(types_pb2.DT_FLOAT, [2, 3], float_val=[1.5]),  # one value fills the shape
    proto(types_pb2.DT_FLOAT, [3], float_val=[1.0, 2.0, 3.0]),  # values in float_val, not tensor_content
    proto(types_pb2.DT_INT64, [2], int64_val=[7, 8]),
    proto(types_pb2.DT_HALF, [2], half_val=[15360, 16384]),
    proto(types_pb2.DT_BOOL, [2], bool_val=[True, False]),
    proto(types_pb2.DT_STRING, [3], string_val=[b"only one"]),  # one string fills the shape
    proto(types_pb2.DT_FLOAT, [0]),
])
def test_protos_off_the_fast_path_read_as_tensorflow_reads_them(odd):
    assert same(to_array(odd), tf.make_ndarray(odd))


def outcome(function, argument):
    """What a call gives: ("ok", array or proto) or ("error", exception type)."""
    try:
        return "ok", function(argument)
    except Exception as error:  # noqa: BLE001 - the type is what is compared
        return "error", type(error)


@pytest.mark.parametrize("broken", [
    proto(types_pb2.DT_FLOAT, [4], tensor_content=b"\x00" * 6),  # bytes for 1.5 floats
    proto(types_pb2.DT_FLOAT, [-1], tensor_content=b"\x00" * 4),
    proto(types_pb2.DT_STRING, [2, 2], string_val=[b"a", b"b"]),
])
def test_a_proto_that_is_no_tensor_does_what_it_does_in_tensorflow(broken):
    (ours, mine), (theirs, tf_result) = outcome(to_array, broken), outcome(tf.make_ndarray, broken)
    assert ours == theirs
    assert same(mine, tf_result) if ours == "ok" else mine is tf_result


def test_other_arrays_are_written_by_tensorflow():
    for array in ([[1.0, 2.0]], [1, 2], 3.5, [b"a", b"b"], ["text"], np.array([True, False]),
                  np.array(["text"], dtype=object), np.array([1, 2], np.int8),
                  np.array([1.0, 2.0], np.float32).astype(">f4"), np.float32(3.0), np.array([7], np.int64)):
        (ours, mine), (theirs, tf_result) = outcome(to_proto, array), outcome(tf.make_tensor_proto, array)
        assert ours == theirs and (mine == tf_result if ours == "ok" else mine is tf_result)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.one_of(NUMERIC, BYTES))
def test_outputs_are_written_in_the_typed_fields_and_read_back_exactly(array):
    """Predict outputs as TensorFlow Serving writes them (AsProtoField): typed `*_val`, a shape even for scalars."""
    proto = to_proto_field(array)
    assert not proto.tensor_content and proto.HasField("tensor_shape")
    assert same(tf.make_ndarray(proto), array)
    filled = tensor_pb2.TensorProto()
    assert to_proto_field(array, into=filled) is filled and filled == proto  # in place: the same message
