"""NumPy arrays <-> TensorProto: the wire format of TensorFlow Serving's Predict.

Two ways to write a tensor: `to_proto` packs numbers in `tensor_content` as
`tf.make_tensor_proto` does (the client's requests); `to_proto_field` writes
them to the typed fields (`float_val`, `int_val`, `string_val`...), as
TensorFlow Serving writes every Predict output by default
(`Tensor::AsProtoField`: `kAsProtoField` in `server_core.h`, `predict_util.cc`).
`to_array` reads either.

`tf.make_tensor_proto` and `tf.make_ndarray` handle every dtype and every way
a TensorProto can hold its values, and cost 10-20 µs a call when hot and
0.1-0.2 ms in a process whose cores are busy with the model (measured in a
live client/server loop). The shapes every request here uses, numbers packed
in `tensor_content` and byte strings in `string_val`, take a few µs through
the protobuf fields directly. Anything else goes through TensorFlow's
functions, so the semantics stay TensorFlow's (a short `float_val` filling
the shape with its last value, half floats, numbers in `*_val` fields...).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

# Numeric dtypes read and written as raw little-endian bytes (`tensor_content`), as TensorFlow does.
_PACKED = {np.dtype(np.float32): types_pb2.DT_FLOAT, np.dtype(np.float64): types_pb2.DT_DOUBLE,
           np.dtype(np.int32): types_pb2.DT_INT32, np.dtype(np.int64): types_pb2.DT_INT64}
_PACKED_BY_ENUM = {enum: dtype for dtype, enum in _PACKED.items()}


def _shape(dims) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=n) for n in dims])


def to_proto(value) -> tensor_pb2.TensorProto:
    """An array (or anything `np.asarray` takes) as a TensorProto, as `tf.make_tensor_proto` would write it.

    Args:
        value: NumPy float32/float64/int32/int64 arrays of two elements or
            more and object arrays of bytes take the fast path; anything else
            (Python lists and numbers included) is passed to `tf.make_tensor_proto`.

    Returns:
        The TensorProto.
    """
    if not isinstance(value, (np.ndarray, np.generic)):
        return tf.make_tensor_proto(value)  # Python values: TensorFlow's own choice of dtype (float32, int32...)
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    enum = _PACKED.get(array.dtype)
    # TensorFlow packs arrays of more than one element; it writes single values to `*_val`.
    if enum is not None and array.dtype.isnative and array.size > 1:  # native: little-endian wherever TF runs
        return tensor_pb2.TensorProto(dtype=enum, tensor_shape=_shape(array.shape), tensor_content=array.tobytes())
    if array.dtype == object:
        values = array.ravel().tolist()
        if all(type(v) is bytes for v in values):
            return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=_shape(array.shape),
                                          string_val=values)
    return tf.make_tensor_proto(array)


# dtype -> (enum, typed field) as Tensor::AsProtoField writes it.
_TYPED_FIELDS = {
    np.dtype(np.float32): (types_pb2.DT_FLOAT, "float_val"), np.dtype(np.float64): (types_pb2.DT_DOUBLE, "double_val"),
    np.dtype(np.int32): (types_pb2.DT_INT32, "int_val"), np.dtype(np.int64): (types_pb2.DT_INT64, "int64_val"),
    np.dtype(np.int16): (types_pb2.DT_INT16, "int_val"), np.dtype(np.int8): (types_pb2.DT_INT8, "int_val"),
    np.dtype(np.uint8): (types_pb2.DT_UINT8, "int_val"), np.dtype(np.uint16): (types_pb2.DT_UINT16, "int_val"),
    np.dtype(np.uint32): (types_pb2.DT_UINT32, "uint32_val"), np.dtype(np.uint64): (types_pb2.DT_UINT64, "uint64_val"),
    np.dtype(np.bool_): (types_pb2.DT_BOOL, "bool_val"),
}
_TYPED_BY_ENUM = {enum: (dtype, field) for dtype, (enum, field) in _TYPED_FIELDS.items()}


def to_proto_field(value, into: tensor_pb2.TensorProto | None = None) -> tensor_pb2.TensorProto:
    """An array as TensorFlow Serving writes a Predict output: dtype, shape and the typed field.

    Args:
        value: A NumPy array (or scalar) of a numeric or bool dtype, or an object array of bytes/str.
        into: An empty TensorProto to fill in place (e.g. `response.outputs[key]`: no copy); None: a new one.

    Returns:
        The TensorProto, with every value in its `*_val` field and `tensor_content` empty.
    """
    proto = tensor_pb2.TensorProto() if into is None else into
    array = np.asarray(value)
    proto.tensor_shape.SetInParent()  # present even for a scalar, as TensorFlow's AsProtoField writes it
    proto.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=n) for n in array.shape)
    if array.dtype == object or array.dtype.kind in "SU":
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in array.ravel().tolist())
    elif array.dtype == np.float16:
        proto.dtype = types_pb2.DT_HALF
        proto.half_val.extend(array.ravel().view(np.uint16).tolist())
    else:
        proto.dtype, field = _TYPED_FIELDS[array.dtype.newbyteorder("=")]
        getattr(proto, field).extend(array.ravel().tolist())
    return proto


def to_array(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """A TensorProto as a (writable) array, as `tf.make_ndarray` would read it.

    Raises:
        Whatever `tf.make_ndarray` raises for a proto off the fast path that
        does not describe a tensor.
    """
    dims = [d.size for d in proto.tensor_shape.dim]
    if all(n >= 0 for n in dims):
        count = math.prod(dims)
        dtype = _PACKED_BY_ENUM.get(proto.dtype)
        if dtype is not None and proto.tensor_content and len(proto.tensor_content) == count * dtype.itemsize:
            return np.frombuffer(proto.tensor_content, dtype).reshape(dims).copy()
        if proto.dtype == types_pb2.DT_STRING and len(proto.string_val) == count:
            array = np.empty(count, dtype=object)
            array[:] = list(proto.string_val)
            return array.reshape(dims)
        typed = _TYPED_BY_ENUM.get(proto.dtype)
        if typed is not None and not proto.tensor_content and len(getattr(proto, typed[1])) == count:
            return np.array(getattr(proto, typed[1]), dtype=typed[0]).reshape(dims)
    return tf.make_ndarray(proto)
