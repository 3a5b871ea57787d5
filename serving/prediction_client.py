"""A Python client for TensorFlow Serving's gRPC API: next token, generation, next value.

    with PredictionClient("localhost:8500", "text") as client:
        client.next_token(["The "])

It speaks only the official protos (tensorflow-serving-api stubs), so it works
unchanged against `tensorflow_model_server` and against `serving.server`.
Every call has a deadline; within it, a server that is not up yet is waited
for (gRPC's wait-for-ready) and UNAVAILABLE (a server starting, restarting or
shedding load) is retried with exponential backoff, nothing else is: a
restarting server costs time, never an error. Failures are raised as
`ServingCallError` carrying the gRPC code and the server's message.
Its command line is `python -m serving.client`.
"""

from __future__ import annotations

import socket
import time
from typing import Any, Optional, Sequence, Union

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import wrappers_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import tensors
from serving.limits import MAX_MESSAGE_BYTES


class ServingCallError(RuntimeError):
    """A failed call: `code` is the gRPC status code, `details` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


def _decode(value: np.ndarray) -> np.ndarray:
    """String tensors arrive as bytes: decode them to str."""
    if value.dtype == object:
        return np.vectorize(lambda v: v.decode("utf-8") if isinstance(v, bytes) else v, otypes=[object])(value)
    return value


def channel_target(target: Union[str, Sequence[str]]) -> str:
    """A gRPC target for one server or several replicas.

    A single `host:port` (or any gRPC target, e.g. `dns:///serving.example:8500`,
    whose name resolves to every replica) is used as it is; several `host:port`
    become one `ipv4:` / `ipv6:` target listing every address, so gRPC's
    round_robin policy spreads requests over them.

    Raises:
        ValueError: An entry that is not `host:port`, or a host that does not resolve.
    """
    if isinstance(target, str):
        has_scheme = target.split(":", 1)[0] in ("dns", "ipv4", "ipv6", "unix", "unix-abstract")
        targets = [target] if has_scheme or "," not in target else [t.strip() for t in target.split(",")]
    else:
        targets = list(target)
    if len(targets) == 1:
        return targets[0]
    addresses = []
    for entry in targets:
        host, _, port = entry.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"target {entry!r} must be host:port")
        try:
            info = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            raise ValueError(f"target {entry!r} does not resolve: {error.strerror}") from None
        # An IPv4 address first: a name such as localhost often resolves to ::1 first, where
        # servers bound to 127.0.0.1 (the default here) do not listen.
        family, _, _, _, (address, *_) = min(info, key=lambda entry: entry[0] != socket.AF_INET)
        addresses.append((family, f"[{address}]:{port}" if family == socket.AF_INET6 else f"{address}:{port}"))
    families = {family for family, _ in addresses}
    if len(families) > 1:
        raise ValueError("replicas must all be IPv4 or all IPv6 addresses")
    scheme = "ipv6" if families == {socket.AF_INET6} else "ipv4"
    return f"{scheme}:{','.join(address for _, address in addresses)}"


class PredictionClient:
    """One model on one server, or on several replicas of it.

    Args:
        target: `host:port` of a TensorFlow Serving (or `serving.server`) gRPC endpoint;
            several (a list, or comma-separated) for replicas, or a `dns:///name:port`
            target: requests are spread with gRPC's round_robin load balancing, and a
            request that finds its replica gone is retried on another.
        model: The model's name in models.config.
        version: A version number (default: the newest loaded).
        label: A version label such as "stable" or "canary" (instead of a version).
        timeout: Deadline of each call, retries included, in seconds.
        retries: Most retries on UNAVAILABLE, with exponential backoff from 0.05 s (capped at 1 s),
            as long as the deadline allows.
        own_connection: Open a connection of this client's own (gRPC Python's channels in one
            process otherwise share one per target): a server of several processes on one port
            (`--server_processes`) spreads connections, not requests, over them.
    """

    def __init__(self, target: Union[str, Sequence[str]], model: str, version: Optional[int] = None,
                 label: Optional[str] = None, timeout: float = 10.0, retries: int = 50, own_connection: bool = False):
        if version is not None and label is not None:
            raise ValueError("pass a version or a label, not both")
        self.model, self.version, self.label = model, version, label
        self.timeout, self.retries = timeout, retries
        self.target = target if isinstance(target, str) else ",".join(target)
        self.channel = grpc.insecure_channel(channel_target(target), options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.lb_policy_name", "round_robin"),  # one replica: the same as pick_first
            ("grpc.use_local_subchannel_pool", int(own_connection))])
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _spec(self, signature_name: str = "") -> model_pb2.ModelSpec:
        spec = model_pb2.ModelSpec(name=self.model, signature_name=signature_name)
        if self.version is not None:
            spec.version.CopyFrom(wrappers_pb2.Int64Value(value=self.version))
        if self.label is not None:
            spec.version_label = self.label
        return spec

    def _call(self, method, request):
        deadline = time.monotonic() + self.timeout
        delay = 0.05
        for attempt in range(self.retries + 1):
            try:
                # wait_for_ready: a server that is down or restarting is waited for, up to the deadline.
                return method(request, timeout=max(deadline - time.monotonic(), 0.001), wait_for_ready=True)
            except grpc.RpcError as error:
                retry = (error.code() == grpc.StatusCode.UNAVAILABLE and attempt < self.retries
                         and time.monotonic() + delay < deadline)
                if not retry:
                    details = error.details()
                    if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                        details += f" (no answer from {self.target} within {self.timeout:g} s: is a server running there?)"
                    raise ServingCallError(error.code(), details) from None
                time.sleep(delay)
                delay = min(2 * delay, 1.0)

    def predict(self, inputs: dict[str, Any], signature_name: str = "serving_default",
                output_filter: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """A raw Predict: numpy inputs in, numpy outputs out."""
        request = predict_pb2.PredictRequest(model_spec=self._spec(signature_name), output_filter=list(output_filter))
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tensors.to_proto(value))
        response = self._call(self.predictions.Predict, request)
        return {name: _decode(tensors.to_array(proto)) for name, proto in response.outputs.items()}

    def next_token(self, prompts: Sequence[str]) -> list[list[tuple[str, float]]]:
        """The most likely next tokens of each prompt, with their probabilities."""
        out = self.predict({"text": np.array([p.encode("utf-8") for p in prompts], dtype=object)})
        return [list(zip(tokens, map(float, probabilities)))
                for tokens, probabilities in zip(out["top_k_tokens"], out["top_k_probabilities"])]

    def generate(self, prompt: str, max_tokens: int = 200, temperature: float = 1.0, seed: int = 0,
                 top_k: Optional[int] = None) -> str:
        """The continuation of a prompt, sampled inside the model."""
        inputs = {"text": np.array([prompt.encode("utf-8")], dtype=object), "max_tokens": np.array([max_tokens], np.int32),
                  "temperature": np.array([temperature], np.float32), "seed": np.array([seed], np.int64)}
        signature = "generate"
        if top_k is not None:
            inputs["top_k"], signature = np.array([top_k], np.int32), "generate_top_k"
        return str(self.predict(inputs, signature)["generated"][0])

    def next_value(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        """Next values in price units for windows `[b, W, F]` (and `quantiles` when the model has them)."""
        return self.predict({"window": np.asarray(windows, np.float32)})

    def metadata(self) -> dict[str, dict[str, Any]]:
        """Each signature's inputs and outputs: {signature: {"inputs": {name: (dtype, shape)}, "outputs": ...}}."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=self._spec(),
                                                                  metadata_field=["signature_def"])
        response = self._call(self.predictions.GetModelMetadata, request)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)

        def describe(tensors):
            return {name: (tf.dtypes.as_dtype(info.dtype).name,
                           [dim.size for dim in info.tensor_shape.dim]) for name, info in tensors.items()}

        return {name: {"inputs": describe(sig.inputs), "outputs": describe(sig.outputs)}
                for name, sig in signatures.signature_def.items()
                if not name.startswith("__")}  # __saved_model_init_op: listed by the server, not callable

    def status(self) -> list[dict[str, Any]]:
        """Each version's state (AVAILABLE, END, ...) and error message."""
        request = get_model_status_pb2.GetModelStatusRequest(model_spec=model_pb2.ModelSpec(name=self.model))
        response = self._call(self.models.GetModelStatus, request)
        return [{"version": s.version, "state": get_model_status_pb2.ModelVersionStatus.State.Name(s.state),
                 "error": s.status.error_message} for s in response.model_version_status]
