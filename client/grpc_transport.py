"""`--protocol grpc`: the Open Inference Protocol over gRPC (Triton's stubs), imported only when asked for."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

# Status codes worth another try: the server is busy, draining or not reached (as HTTP 429, 503, 504).
RETRY_CODES = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"})
AUTH_CODES = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED"})


class RpcFailed(RuntimeError):
    """A call answered with a status other than OK: its code's name and its sentence."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details


class GrpcTransport:
    """ModelInfer over `connections` channels, taken in turn by the scorer's threads; raw tensors both ways.

    Each channel is a TCP connection of its own (a local subchannel pool: gRPC would otherwise share one
    connection among channels to the same address), and a connection is served by one worker of the server
    (each worker listens on the port with SO_REUSEPORT): one connection would keep every request on one worker.
    """

    def __init__(self, address: str, *, timeout: float, token: str | None, connections: int = 1) -> None:
        try:
            import grpc
            from tritonclient.grpc import service_pb2, service_pb2_grpc
        except ImportError as e:
            raise RuntimeError("--protocol grpc needs grpcio and tritonclient: pip install 'tinyserve[triton]'") from e
        self.grpc: Any = grpc
        self.pb: Any = service_pb2
        options = [
            ("grpc.max_send_message_length", -1),  # the server's limit is the one that counts
            ("grpc.max_receive_message_length", -1),
            ("grpc.use_local_subchannel_pool", 1),  # a connection per channel
        ]
        self.channels = [grpc.insecure_channel(address, options=options) for _ in range(connections)]
        self.stubs = [service_pb2_grpc.GRPCInferenceServiceStub(c) for c in self.channels]
        self._turn = itertools.count()  # next() on it is atomic under the GIL: threads share it
        self.address = address
        self.timeout = timeout
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def infer(self, model: str, output: str, x: np.ndarray, *, input_name: str = "x") -> np.ndarray:
        request = self.pb.ModelInferRequest(model_name=model)
        request.inputs.add(name=input_name, datatype="FP32", shape=list(x.shape))
        request.raw_input_contents.append(np.ascontiguousarray(x, dtype="<f4").tobytes())
        request.outputs.add(name=output)
        try:
            stub = self.stubs[next(self._turn) % len(self.stubs)]
            response = stub.ModelInfer(request, timeout=self.timeout, metadata=self.metadata)
        except self.grpc.RpcError as e:
            raise RpcFailed(e.code().name, e.details() or "no details") from None
        (described,) = response.outputs
        return np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(list(described.shape))

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
