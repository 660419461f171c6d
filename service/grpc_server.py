"""The Open Inference Protocol over gRPC: `inference.GRPCInferenceService`, as Triton and KServe serve it.

A gRPC server in each worker, over the same data plane as the HTTP front doors: a ModelInferRequest
becomes the V2 request the HTTP route decodes (raw_input_contents as its binary part), so the same checks
make the same sentences; the data plane's typed errors become gRPC status codes in one table (CODES). The
protocol's messages and stubs are Triton's, from the tritonclient package. The standard health service and
server reflection sit beside it; every worker binds the port with SO_REUSEPORT, so the kernel spreads
connections over the workers.

The server is grpcio's threaded one, and a call is answered on the thread it arrived on: inference too, the
model's batcher merging the calls of the server's threads without the event loop (Batcher.run_blocking);
only model loads go to the worker's event loop. grpc.aio on the same loop cost ~580 us of CPU per
single-image call where the work is ~45 us: its poller thread takes the GIL whenever the loop thread lets it
go. Threaded, with a hop to the loop and back for each call, 440-490 us; without the hop, see BENCHMARKS.md,
"grpcio's threaded server".
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import functools
import hmac
import logging
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf import json_format
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from service import __version__, metrics, repository_api, tensors, v2
from service.admission import Admission
from service.dataplane import DataPlane, V2Result
from service.errors import DeadlineExceeded, InvalidInput, ServingError, Unimplemented
from service.runtime import StartRefused, refuse_start
from service.timing import Timing

logger = logging.getLogger("bentoml.tinyserve")
SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
Handler = TypeVar("Handler", bound=Callable[..., Any])
T = TypeVar("T")

# The data plane's errors as gRPC status codes, by the HTTP status each carries: the one place they are mapped.
CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# The typed contents field each datatype's values travel in (FP16 and BF16 have none: raw only).
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
# Calls open without the token, as their HTTP twins are: the probes an orchestrator sends.
OPEN_METHODS = frozenset(
    {
        f"/{SERVICE}/ServerLive",
        f"/{SERVICE}/ServerReady",
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
    }
)
UNAUTHORISED = "missing or invalid API token: send the metadata 'authorization: Bearer <token>'"
NO_DEADLINE_S = 86400.0  # a client's deadline further than this is taken for none
REFLECTION_STREAMS = 4  # server reflection streams open at once in a worker (grpcurl opens one a command)
WATCH_STREAMS = 8  # health Watch streams open at once in a worker (open without the token)
SPARE_THREADS = 16  # calls beyond TINYSERVE_MAX_CONCURRENCY: probes, streams, refusals with their sentence


def code_of(error: ServingError) -> grpc.StatusCode:
    return CODES.get(error.status, grpc.StatusCode.INTERNAL)


def _answering(method: Handler) -> Handler:
    """A call's typed refusal -> its status code and sentence; anything else -> INTERNAL, logged here."""

    @functools.wraps(method)
    def call(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except ServingError as e:
            context.abort(code_of(e), e.message)
        except Exception:
            logger.exception("gRPC %s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, "internal error; the server's log has the details")

    return call  # type: ignore[return-value]


def _unimplemented(call: str, instead: str) -> Callable[..., Any]:
    @_answering
    def refuse(self: Any, request: Any, context: Any) -> Any:
        raise Unimplemented(f"{call} is not served by tinyserve; {instead}")

    return refuse


def _parameters(parameters: Any) -> dict[str, Any]:
    """A protobuf map<string, InferParameter> as the JSON request's parameters."""
    return {
        key: getattr(value, value.WhichOneof("parameter_choice") or "string_param") for key, value in parameters.items()
    }


def _typed(tensor: Any) -> np.ndarray | None:
    """An input's typed contents, from the field its datatype names; None when it has none."""
    field = CONTENTS.get(tensor.datatype)
    values = getattr(tensor.contents, field) if field else ()
    if len(values):
        return np.asarray(values)
    given = [f.name for f, _ in tensor.contents.ListFields()]
    if given:
        expected = f"contents.{field}" if field else "raw_input_contents"
        raise InvalidInput(f"input '{tensor.name}': {tensor.datatype} values go in {expected}, got contents.{given[0]}")
    return None


def to_v2(request: Any, raw: list[bytes]) -> tuple[tensors.InferenceRequest, memoryview]:
    """A ModelInferRequest (and its raw_input_contents, read once) as the V2 request the HTTP route decodes:
    raw contents become its binary part."""
    tensors.count("the request", "parameters", request.parameters)  # as a JSON body's (tensors.check_counts)
    for key, entries in (("inputs", request.inputs), ("outputs", request.outputs)):
        tensors.count("the request", key, entries)
        for i, entry in enumerate(entries):
            where = tensors.tensor_named(key, entry.name, i)
            tensors.count(where, "parameters", entry.parameters)
            tensors.count(where, "dimensions in its shape", getattr(entry, "shape", ()))
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
            "give one per input, in the inputs' order"
        )
    inputs = []
    for i, tensor in enumerate(request.inputs):
        parameters = _parameters(tensor.parameters)
        data = None
        parameters.pop("binary_data_size", None)  # HTTP's framing: on gRPC, raw contents carry their own size
        if raw:
            parameters["binary_data_size"] = len(raw[i])
        elif (data := _typed(tensor)) is None:
            raise InvalidInput(
                f"input '{tensor.name}': no data; give contents.{CONTENTS.get(tensor.datatype, 'fp32_contents')} "
                "or raw_input_contents"
            )
        described = {"name": tensor.name, "shape": list(tensor.shape), "datatype": tensor.datatype}
        inputs.append(described | {"parameters": parameters, "data": data})
    outputs = [{"name": o.name, "parameters": _parameters(o.parameters)} for o in request.outputs]
    parsed = v2.validate_request(
        {"id": request.id or None, "parameters": _parameters(request.parameters), "inputs": inputs}
        | ({"outputs": outputs} if outputs else {})
    )
    binary = memoryview(raw[0] if len(raw) == 1 else b"".join(raw))
    return parsed, binary


def from_v2(result: V2Result) -> Any:
    """The data plane's answer as a ModelInferResponse, every output as raw contents (as Triton answers)."""
    response = pb.ModelInferResponse(
        model_name=result.model.name, model_version=result.model.version, id=result.id or ""
    )
    for spec, _, array in result.outputs:
        response.outputs.add(name=spec.name, datatype=spec.datatype, shape=list(array.shape))
        response.raw_output_contents.append(tensors.raw_bytes(spec, array))
    return response


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """On the server's threads: reads of the data plane's state (the registry is replaced whole, never changed
    in place) and inference (Batcher.run_blocking) answer here; model loads run on the worker's event loop
    (`_on_loop`)."""

    def __init__(
        self, plane: DataPlane, admission: Admission, loop: asyncio.AbstractEventLoop, request_timeout: float
    ) -> None:
        self.plane = plane
        self.admission = admission
        self.loop = loop
        self.request_timeout = request_timeout

    def _on_loop(self, work: Coroutine[Any, Any, T], context: grpc.ServicerContext) -> T:
        """`work` on the event loop (a model load); this thread waits for it, at most until the client's deadline."""
        left = context.time_remaining()  # without a deadline, hundreds of years: as good as none
        future = asyncio.run_coroutine_threadsafe(work, self.loop)
        try:
            return future.result(left if left is not None and left < NO_DEADLINE_S else None)
        except concurrent.futures.TimeoutError:
            future.cancel()  # the coroutine is cancelled on the loop
            raise self._late(None) from None

    def _wait(self, context: grpc.ServicerContext) -> float | None:
        """How long a call may wait for its answer: TINYSERVE_REQUEST_TIMEOUT or the client's deadline, if sooner."""
        left = context.time_remaining()
        return min((t for t in (self.request_timeout, left) if t is not None and t < NO_DEADLINE_S), default=None)

    def _late(self, wait: float | None) -> DeadlineExceeded:
        """The refusal of a call whose answer did not come within `wait` s (the client's deadline when it is not
        TINYSERVE_REQUEST_TIMEOUT)."""
        if wait != self.request_timeout:
            return DeadlineExceeded("the call's deadline passed before its answer")
        return DeadlineExceeded(
            f"no answer within {self.request_timeout:g} s (TINYSERVE_REQUEST_TIMEOUT); it was dropped"
        )

    @_answering
    def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=self.plane.live())

    @_answering
    def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.plane.ready())

    @_answering
    def ModelReady(self, request: Any, context: Any) -> Any:
        self.plane.model(request.name, request.version or None)
        return pb.ModelReadyResponse(ready=self.plane.ready())

    @_answering
    def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(name=v2.SERVER_NAME, version=__version__, extensions=v2.EXTENSIONS)

    @_answering
    def ModelMetadata(self, request: Any, context: Any) -> Any:
        metadata = self.plane.metadata(self.plane.model(request.name, request.version or None))
        return json_format.ParseDict(metadata, pb.ModelMetadataResponse(), ignore_unknown_fields=True)

    @_answering
    def ModelStatistics(self, request: Any, context: Any) -> Any:
        statistics = self.plane.statistics(request.name or None, request.version or None)  # every worker's files
        return json_format.ParseDict(statistics, pb.ModelStatisticsResponse(), ignore_unknown_fields=True)

    @_answering
    def ModelInfer(self, request: Any, context: Any) -> Any:
        """All on this thread: no hop to the event loop and back. The model's batcher merges it with the calls
        of the server's other threads (Batcher.run_blocking)."""
        started = time.monotonic()
        wait = self._wait(context)
        name, version = request.model_name, request.model_version or None
        with self.admission(), metrics.counting("grpc"):
            self.plane.model(name, version)  # an unknown model is refused before its tensors are read
            timing = Timing()
            with timing.measure("parse"):
                raw = list(request.raw_input_contents)  # each read copies the bytes out of the message: once
                parsed, binary = to_v2(request, raw)
            try:
                result = self.plane.infer_blocking(name, version, parsed, binary, timing, wait)
            except TimeoutError:
                raise self._late(wait) from None
            if wait is not None and time.monotonic() - started > wait:
                raise self._late(wait)  # the call it led ran past the time: its answer is not wanted now
        return from_v2(result)

    ModelStreamInfer = _unimplemented("streaming inference (ModelStreamInfer)", "call ModelInfer once per request")
    ModelConfig = _unimplemented("the model configuration (ModelConfig)", "read ModelMetadata for inputs and outputs")

    # Triton's repository extension: the same calls and sentences as POST /v2/repository/... (service.repository_api)
    @_answering
    def RepositoryIndex(self, request: Any, context: Any) -> Any:
        models = repository_api.repository_index(self.plane, ready=request.ready)
        return json_format.ParseDict({"models": models}, pb.RepositoryIndexResponse(), ignore_unknown_fields=True)

    @_answering
    def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        load = repository_api.load_model(self.plane, request.model_name, _parameters(request.parameters))
        self._on_loop(load, context)  # as long as the load takes (TINYSERVE_CONTROL_WAIT_SECONDS bounds it)
        return pb.RepositoryModelLoadResponse()

    @_answering
    def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        unload = repository_api.unload_model(self.plane, request.model_name, _parameters(request.parameters))
        self._on_loop(unload, context)
        return pb.RepositoryModelUnloadResponse()

    SystemSharedMemoryStatus = _unimplemented("shared memory (SystemSharedMemoryStatus)", "send tensors in requests")
    SystemSharedMemoryRegister = _unimplemented(
        "shared memory (SystemSharedMemoryRegister)", "send tensors in requests"
    )
    SystemSharedMemoryUnregister = _unimplemented(
        "shared memory (SystemSharedMemoryUnregister)", "send tensors in requests"
    )
    CudaSharedMemoryStatus = _unimplemented("CUDA shared memory (CudaSharedMemoryStatus)", "send tensors in requests")
    CudaSharedMemoryRegister = _unimplemented(
        "CUDA shared memory (CudaSharedMemoryRegister)", "send tensors in requests"
    )
    CudaSharedMemoryUnregister = _unimplemented(
        "CUDA shared memory (CudaSharedMemoryUnregister)", "send tensors in requests"
    )
    TraceSetting = _unimplemented("trace settings (TraceSetting)", "use TINYSERVE_TRACING and OpenTelemetry")
    LogSettings = _unimplemented("log settings (LogSettings)", "use TINYSERVE_ACCESS_LOG and the server's log")


class Health(health.HealthServicer):  # type: ignore[misc]
    """grpc.health.v1, answered from the data plane's readiness (NOT_SERVING while draining)."""

    def __init__(self, plane: DataPlane) -> None:
        super().__init__()
        self.plane = plane
        self.watches = threading.BoundedSemaphore(WATCH_STREAMS)

    def Watch(self, request: Any, context: Any, send_response_callback: Any = None) -> Any:
        """The standard Watch, at most WATCH_STREAMS open in a worker: open without the token, each counts
        against the calls the server takes at once (probes use Check)."""
        _open_stream(self.watches, WATCH_STREAMS, "health Watch streams", "use Check, or close one and retry", context)
        context.add_callback(self.watches.release)  # when the stream ends, however it ends
        return super().Watch(request, context, send_response_callback)

    def Check(self, request: Any, context: Any) -> Any:
        if request.service not in ("", SERVICE):
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}: expected {SERVICE}")
        ready = self.plane.ready()
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse(status=status)


class Reflection(reflection.ReflectionServicer):  # type: ignore[misc]
    """Server reflection, at most REFLECTION_STREAMS streams open at once in a worker: a stream holds one of
    the worker's gRPC threads for as long as its client keeps it open."""

    def __init__(self, service_names: list[str]) -> None:
        super().__init__(service_names)
        self.streams = threading.BoundedSemaphore(REFLECTION_STREAMS)

    def ServerReflectionInfo(self, request_iterator: Any, context: Any) -> Any:
        _open_stream(self.streams, REFLECTION_STREAMS, "reflection streams", "close one and retry", context)
        try:  # given back before the status goes out: a client that saw its stream end may open another
            yield from super().ServerReflectionInfo(request_iterator, context)
        finally:
            self.streams.release()


def _open_stream(slots: threading.BoundedSemaphore, limit: int, what: str, instead: str, context: Any) -> None:
    """One of a worker's `limit` slots for a long-lived stream, or RESOURCE_EXHAUSTED with the sentence."""
    if not slots.acquire(blocking=False):
        context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"{limit} {what} are open on this worker, the most it keeps open; {instead}",
        )


class TokenInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """TINYSERVE_API_TOKEN on gRPC: the `authorization` metadata, as the HTTP header; probes stay open."""

    def __init__(self, token: str) -> None:
        self.token = token.encode()

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None or details.method in OPEN_METHODS or self._authorised(details.invocation_metadata):
            return handler
        return _refusing(handler)

    def _authorised(self, metadata: Any) -> bool:
        given = next((str(v) for k, v in metadata or () if k == "authorization"), "")
        scheme, _, token = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.token)


def _refusing(handler: Any) -> Any:
    """A handler of the same kind as `handler` that answers UNAUTHENTICATED."""

    def refuse(request: Any, context: Any) -> None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHORISED)

    kind = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    return kind(refuse, handler.request_deserializer, handler.response_serializer)


def create(
    plane: DataPlane,
    *,
    loop: asyncio.AbstractEventLoop,
    admission: Admission,
    max_message_bytes: int,
    request_timeout: float,
    token: str | None,
) -> grpc.Server:
    """The gRPC server of one worker, its services added; not yet bound or started. `loop` is the worker's
    event loop, where model loads run. A thread per call in flight: the admission limit, and room for the probes
    and for the calls over it to be refused with its sentence; past that, grpcio refuses (RESOURCE_EXHAUSTED)."""
    threads = admission.limit + SPARE_THREADS
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc"),
        interceptors=[TokenInterceptor(token)] if token else None,
        maximum_concurrent_rpcs=threads,  # nothing waits for a thread in an unbounded queue
        options=[
            ("grpc.so_reuseport", 1),  # every worker binds the port; the kernel spreads connections
            ("grpc.max_receive_message_length", max_message_bytes),  # TINYSERVE_MAX_BODY_BYTES, as on HTTP
        ],
    )
    servicer = InferenceServicer(plane, admission, loop, request_timeout)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(Health(plane), server)
    names = [SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(Reflection(names), server)
    return server


def check_port(host: str, port: int) -> None:
    """In the server process, before any worker: the gRPC port is free, or the start is refused in one line
    (a worker that cannot bind would be restarted forever; with SO_REUSEPORT a second server would share it)."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    taken = f"the gRPC port {where} is already in use: stop what listens there, or set TINYSERVE_GRPC_PORT (0: off)"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    reachable = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    with contextlib.suppress(OSError), socket.create_connection((reachable, port), timeout=2):
        refuse_start(StartRefused(taken))  # something listens there, SO_REUSEPORT or not
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            refuse_start(StartRefused(taken if e.errno == errno.EADDRINUSE else f"gRPC cannot listen on {where}: {e}"))


def serve(server: grpc.Server, host: str, port: int) -> int:
    """Bind `host:port` and start; the port bound (a refused bind raises with the address)."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound: int = server.add_insecure_port(address)
    except RuntimeError as e:
        raise RuntimeError(f"gRPC cannot listen on {address} (TINYSERVE_GRPC_PORT): {e}") from None
    server.start()
    logger.info("gRPC (Open Inference Protocol) on %s", address)
    return bound
