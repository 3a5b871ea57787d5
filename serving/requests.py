"""What a request asks for, and its gRPC inputs decoded and checked against the signature and the limits.

Beside the codec (`serving.tensors`): `ModelQuery` is a ModelSpec (or a REST
URL) unpacked once; `decode_tensor_protos` turns a Predict's TensorProtos into
arrays of the dtypes the signature declares, after checking names, dtypes and
declared sizes against `RequestLimits`, so that nothing large is allocated for
a request that will be refused. The REST API decodes JSON itself
(`serving.rest.decode_json`); both then go through `serving.prediction`,
which checks shapes (`check_shapes`) and rows (`check_rows`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Optional

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2

from serving import tensors
from serving.limits import DEFAULT_LIMITS, RequestLimits
from serving.models import ServingError
from serving.saved_model_bundle import Signature


@dataclasses.dataclass(frozen=True)
class ModelQuery:
    """Which model version and signature a request asks for (see `ModelManager.resolve`).

    Attributes:
        name: The model's name.
        version: A version number, or None for the newest loaded.
        label: A version label, or None.
        signature_name: The signature; empty for the default one.
    """

    name: str
    version: Optional[int] = None
    label: Optional[str] = None
    signature_name: str = ""

    @classmethod
    def from_spec(cls, spec: model_pb2.ModelSpec) -> "ModelQuery":
        """A gRPC request's ModelSpec (version and version_label are a oneof: unset is None)."""
        return cls(spec.name, spec.version.value if spec.HasField("version") else None,
                   spec.version_label if spec.HasField("version_label") else None, spec.signature_name)


def require_model_spec(request) -> None:
    """Every request names its model (predict_impl.cc and the other services: "Missing ModelSpec")."""
    if not request.HasField("model_spec"):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec: set model_spec.name")


def check_names(names: Iterable[str], signature: Signature) -> None:
    """Every input the signature takes, and no other.

    Raises:
        ServingError: INVALID_ARGUMENT naming the first missing or unknown input and listing the inputs.
    """
    specs, names = signature.inputs, set(names)
    missing = sorted(set(specs) - names)
    unknown = sorted(names - set(specs))
    if missing or unknown:
        expected = ", ".join(f"{name} ({spec.dtype.name} {spec.shape.as_list()})"
                             for name, spec in sorted(specs.items()))
        problem = f"unknown input {unknown[0]!r}" if unknown else f"missing input {missing[0]!r}"
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"{problem} for signature {signature.key!r}; it takes: {expected}")


def check_shapes(arrays: dict[str, np.ndarray], signature: Signature) -> None:
    """Each input's shape against the signature's (names are the decoder's job, dtypes too).

    Raises:
        ServingError: INVALID_ARGUMENT naming the input and the shape it should have.
    """
    for name, spec in signature.inputs.items():
        if not spec.shape.is_compatible_with(arrays[name].shape):
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {name!r} must have shape {spec.shape.as_list()} (None: any size), "
                               f"got {list(arrays[name].shape)}")


def check_rows(arrays: dict[str, np.ndarray], limits: RequestLimits) -> None:
    """Rows per input against `limits.max_rows` (0: no limit).

    Raises:
        ServingError: INVALID_ARGUMENT naming the input over the limit.
    """
    for name, array in arrays.items():
        if limits.max_rows and array.ndim and len(array) > limits.max_rows:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {name!r} holds {len(array)} rows, over the limit of {limits.max_rows} "
                               "per request; split it into several requests")


def _proto_dtype(name: str, proto) -> Optional[tf.dtypes.DType]:
    if not proto.dtype:
        return None
    try:
        return tf.dtypes.as_dtype(proto.dtype)
    except TypeError:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"input {name!r} has an unknown dtype enum {proto.dtype}") from None


def _declared_dims(name: str, proto) -> list[int]:
    dims = [dim.size for dim in proto.tensor_shape.dim]
    if any(size < 0 for size in dims) or proto.tensor_shape.unknown_rank:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"input {name!r} has a shape with unknown or negative sizes: {dims}")
    return dims


def _string_bytes(proto, elements: int) -> int:
    """Bytes of a string tensor once decoded, its last string repeated to fill the shape as TensorFlow does."""
    values = proto.string_val
    return sum(map(len, values)) + max(0, elements - len(values)) * (len(values[-1]) if values else 0)


def decode_tensor_protos(request_inputs, signature: Signature,
                         limits: RequestLimits = DEFAULT_LIMITS) -> dict[str, np.ndarray]:
    """A Predict's TensorProtos as arrays, each of the dtype its signature input declares.

    Names, dtypes and declared sizes are all checked before anything is
    decoded: a proto can claim a huge shape in a few bytes, and decoding it
    would allocate that much.

    Args:
        request_inputs: The request's `inputs` map (name -> TensorProto).
        signature: The signature the request runs.
        limits: The elements and string bytes a request may hold.

    Returns:
        Input name -> array, exactly the signature's inputs.

    Raises:
        ServingError: INVALID_ARGUMENT naming the input and what is wrong with it.
    """
    specs = signature.inputs
    check_names(request_inputs, signature)
    elements = string_bytes = 0
    for name, proto in request_inputs.items():
        dtype = _proto_dtype(name, proto)
        if dtype != specs[name].dtype:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"input {name!r} must be "
                               f"{specs[name].dtype.name}, got {dtype.name if dtype else 'no dtype'}")
        dims = _declared_dims(name, proto)
        elements += math.prod(dims)
        if elements > limits.max_elements:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {name!r} of shape {dims} brings the request to {elements:,} elements, over "
                               f"the limit of {limits.max_elements:,} per request")
        if dtype == tf.string:
            string_bytes += _string_bytes(proto, math.prod(dims))
            if string_bytes > limits.max_string_bytes:
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"input {name!r} brings the request to {string_bytes:,} bytes of strings once "
                                   f"decoded, over the limit of {limits.max_string_bytes:,}")
    arrays = {}
    for name, proto in request_inputs.items():
        try:
            arrays[name] = tensors.to_array(proto)
        except Exception as error:  # noqa: BLE001 - a malformed TensorProto
            detail = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {name!r} is not a valid tensor: {detail}") from None
    return arrays
