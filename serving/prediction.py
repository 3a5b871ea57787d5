"""The one Predict path, shared by gRPC, REST and warmup: resolve, check, batch, run.

A transport unpacks its request into a `ModelQuery`, asks `Predictor.resolve`
for the version and signature, decodes its inputs against that signature
itself (TensorProtos for gRPC and warmup, JSON for REST) and hands the arrays
to `Predictor.predict`, which checks shapes, rows and the output filter, runs
the signature (through the batch scheduler with `--enable_batching`, with
BatchingSession's rules and codes) and returns the outputs as arrays.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Iterator, Optional, Sequence

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from serving.batching import BatchScheduler, QueueFull
from serving.limits import DEFAULT_LIMITS, RequestLimits
from serving.metrics import ServingMetrics
from serving.models import LoadedVersion, ModelManager, ServingError
from serving.requests import ModelQuery, check_rows, check_shapes, decode_tensor_protos
from serving.saved_model_bundle import Signature, error_message, replay_warmup, signature_key, status_code


@dataclasses.dataclass(frozen=True)
class Target:
    """What one Predict runs: a loaded version and one of its signatures.

    Attributes:
        loaded: The version.
        signature: The signature (its `key` is the name answered in the response's ModelSpec).
    """

    loaded: LoadedVersion
    signature: Signature

    @classmethod
    def of(cls, loaded: LoadedVersion, signature_name: str) -> "Target":
        """The signature a request names, of a version already chosen.

        Raises:
            ServingError: FAILED_PRECONDITION for a signature the version lacks.
        """
        return cls(loaded, loaded.signature(signature_name))


def check_batchable_inputs(inputs: dict[str, np.ndarray]) -> int:
    """BatchingSession's rules for a request's inputs (`batching_util.h`, ComputeTensorBatchSize).

    Returns:
        The request's rows (the inputs' common first dimension).

    Raises:
        ServingError: INVALID_ARGUMENT, as TensorFlow Serving answers with batching on.
    """
    if not inputs:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Batching Run() must have at least one input tensor "
                           "(with --enable_batching every signature needs an input with a batch dimension)")
    if any(array.ndim == 0 for array in inputs.values()):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Batching Run() input tensors must have at least one "
                           f"dimension; got shapes {({k: list(v.shape) for k, v in inputs.items()})}")
    sizes = {len(array) for array in inputs.values()}
    if len(sizes) > 1:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Batching Run() input tensors must have equal "
                           f"0th-dimension size; got shapes {({k: list(v.shape) for k, v in inputs.items()})}")
    return sizes.pop()


def check_batched_outputs(outputs: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """BatchingSession's rules for a batch's outputs (`batching_session.cc`, SplitOutputTensors).

    Raises:
        ServingError: FAILED_PRECONDITION for an output without a batch dimension of `rows`.
    """
    for name, array in outputs.items():
        if array.ndim == 0:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"Batched output tensor has 0 dimensions (output {name!r})")
        if len(array) != rows:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                               "Batched output tensor's 0th dimension does not equal the sum of the 0th dimension "
                               f"sizes of the input tensors (output {name!r}: {len(array)} rows for {rows})")
    return outputs


def wanted_outputs(signature: Signature, output_filter: Sequence[str]) -> list[str]:
    """The outputs a Predict fetches: those of its output_filter, or all of them, sorted.

    Raises:
        ServingError: INVALID_ARGUMENT for an output the signature lacks, or one named twice.
    """
    wanted = list(output_filter) or sorted(signature.outputs)
    unknown = [key for key in wanted if key not in signature.outputs]
    if unknown:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"output tensor alias not found in signature: "
                           f"{unknown[0]} (outputs: {', '.join(sorted(signature.outputs))})")
    repeated = [key for i, key in enumerate(wanted) if key in wanted[:i]]
    if repeated:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"duplicate output tensor alias: {repeated[0]}")
    return wanted


class Predictor:
    """Predict over a `ModelManager`, for every transport.

    Args:
        models: The loaded versions (None until the manager exists: warmup runs before it is built).
        batching: The batch scheduler (None: every request runs on its own).
        metrics: The server's metrics (None: not recorded).
        limits: What one request may hold.
    """

    def __init__(self, models: Optional[ModelManager], batching: Optional[BatchScheduler] = None,
                 metrics: Optional[ServingMetrics] = None, limits: RequestLimits = DEFAULT_LIMITS):
        self.models = models
        self.batching = batching
        self.metrics = metrics
        self.limits = limits

    def version(self, query: ModelQuery) -> LoadedVersion:
        """The version a request asks for (`ModelManager.resolve`'s codes)."""
        return self.models.resolve(query.name, query.version, query.label)

    def resolve(self, query: ModelQuery) -> Target:
        """The version and signature a Predict runs, looked up once.

        Raises:
            ServingError: NOT_FOUND, INVALID_ARGUMENT or UNAVAILABLE for the version
                (`ModelManager.resolve`), FAILED_PRECONDITION for the signature.
        """
        return Target.of(self.version(query), query.signature_name)

    @contextlib.contextmanager
    def observed(self, query: ModelQuery) -> Iterator[None]:
        """Time and count one Predict (`rnn_serving_*` metrics), from resolving it to its outputs."""
        if self.metrics is None:
            yield
            return
        with self.metrics.observe(query.name, signature_key(query.signature_name)) as outcome:
            try:
                yield
            except ServingError as error:
                outcome["code"] = error.code.name
                raise
            except Exception:
                outcome["code"] = "INTERNAL"
                raise

    def predict(self, target: Target, inputs: dict[str, np.ndarray],
                output_filter: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """Run one Predict whose inputs are decoded.

        Args:
            target: The version and signature (`resolve`).
            inputs: Exactly the signature's inputs, of its dtypes (the decoders check names and dtypes).
            output_filter: Outputs to return (empty: all).

        Returns:
            Output name -> array.

        Raises:
            ServingError: TensorFlow Serving's code: INVALID_ARGUMENT for a shape, a limit, the output
                filter or a value the graph refuses; BatchingSession's codes with batching on;
                UNAVAILABLE when the batch queue is full.
        """
        signature = target.signature
        check_shapes(inputs, signature)
        check_rows(inputs, self.limits)
        wanted = wanted_outputs(signature, output_filter)
        try:
            start = time.perf_counter()
            outputs = self._run(target, inputs, wanted)
            if self.metrics is not None:  # around Session::Run, as predict_util.cc records it
                self.metrics.tfs.observe("/tensorflow/serving/runtime_latency", (target.loaded.name, "Predict", "TF1"),
                                         (time.perf_counter() - start) * 1e6)
        except tf.errors.OpError as error:  # the graph's own checks: their code, as Session::Run returns it
            raise ServingError(status_code(error), error_message(error)) from None
        return outputs

    def _run(self, target: Target, inputs: dict[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        signature = target.signature
        if self.batching is None:
            return signature.run(inputs, outputs)
        check_batchable_inputs(inputs)

        def run(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return check_batched_outputs(signature.run(arrays, outputs), len(next(iter(arrays.values()))))

        try:  # one queue per tensor signature (inputs and fetched outputs), as BatchingSession keys them
            key = (target.loaded.name, target.loaded.version, signature.key, tuple(outputs))
            return self.batching.run(key, run, inputs)
        except QueueFull as error:
            raise ServingError(grpc.StatusCode.UNAVAILABLE, str(error)) from None

    def warm_up(self, loaded: LoadedVersion) -> int:
        """Replay a version's warmup requests through `predict` (batching included), before it serves.

        Returns:
            How many records ran.

        Raises:
            WarmupError: The first record that failed.
        """
        def predict(request: predict_pb2.PredictRequest) -> dict[str, np.ndarray]:
            target = Target.of(loaded, request.model_spec.signature_name)
            return self.predict(target, decode_tensor_protos(request.inputs, target.signature, self.limits),
                                request.output_filter)

        return replay_warmup(loaded.path, predict)
