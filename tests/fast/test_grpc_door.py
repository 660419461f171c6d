"""The gRPC front door in process: the real gRPC server on a 127.0.0.1 socket over the shipped models.

The data plane's event loop on a thread of its own, as a worker runs it beside the server's threads; the
clients (the protocol's stub, Triton's client, the health and reflection stubs) call it over the socket. Each
refusal must carry the HTTP route's sentence, mapped to its gRPC code.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import psutil
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from starlette.testclient import TestClient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from client.grpc_transport import GrpcTransport
from service import grpc_server
from service.admission import Admission
from service.dataplane import DataPlane
from service.errors import ServingError
from service.fastpath import FastPath
from service.middleware import GuardMiddleware

pytestmark = pytest.mark.timeout(60)
TOKEN = "s3cret"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
MAX_MESSAGE = 1024 * 1024


@dataclass
class Door:
    address: str
    stub: Any
    channel: grpc.Channel
    admission: Admission
    loop: asyncio.AbstractEventLoop


@contextlib.contextmanager
def serving(plane: DataPlane, request_timeout: float = 30) -> Iterator[Door]:
    """A worker's gRPC door on a free port, over its own event loop (on a thread here, as the data plane's)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    admission = Admission(2, plane.lifecycle)
    server = grpc_server.create(
        plane,
        loop=loop,
        admission=admission,
        max_message_bytes=MAX_MESSAGE,
        request_timeout=request_timeout,
        token=TOKEN,
    )
    port = grpc_server.serve(server, "127.0.0.1", 0)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Door(f"127.0.0.1:{port}", pb_grpc.GRPCInferenceServiceStub(channel), channel, admission, loop)
    finally:
        channel.close()
        server.stop(None).wait(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def door(plane: DataPlane) -> Iterator[Door]:
    with serving(plane) as door:
        yield door


def _refusal(call: Any, request: Any, metadata: tuple[tuple[str, str], ...] = AUTH) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, metadata=metadata, timeout=30)
    return caught.value.code(), caught.value.details()


def _grpc_request(model: str, body: dict[str, Any], raw: bytes | None = None) -> Any:
    """A V2 JSON request (with optional raw bytes for its one input) as the ModelInferRequest of the same."""
    request = pb.ModelInferRequest(model_name=model, id=body.get("id", ""))
    for tensor in body["inputs"]:
        sent = request.inputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
        if raw is None:
            values = getattr(sent.contents, grpc_server.CONTENTS[tensor["datatype"]])
            values.extend(np.asarray(tensor["data"], dtype=np.float64).ravel().tolist())
    if raw is not None:
        request.raw_input_contents.append(raw)
    for output in body.get("outputs", []):
        wanted = request.outputs.add(name=output["name"])
        for key, value in output.get("parameters", {}).items():
            if isinstance(value, bool):
                wanted.parameters[key].bool_param = value
            elif isinstance(value, int):
                wanted.parameters[key].int64_param = value
            else:
                wanted.parameters[key].string_param = str(value)
    return request


def _http_binary(client: TestClient, model: str, body: dict[str, Any], raw: bytes) -> Any:
    body = json.loads(json.dumps(body))
    body["inputs"][0]["parameters"] = {"binary_data_size": len(raw)}
    header = json.dumps(body).encode()
    return client.post(
        f"/v2/models/{model}/infer",
        content=header + raw,
        headers={"content-type": "application/octet-stream", "inference-header-content-length": str(len(header))},
    )


def _tensor(shape: list[int], data: Any, datatype: str = "FP32") -> dict[str, Any]:
    return {"name": "x", "datatype": datatype, "shape": shape, "data": data}


TYPED_CASES = {
    "wrong shape": ("lenet", {"inputs": [_tensor([1, 2], [0.5, 0.5])]}),
    "wrong datatype": ("linear", {"inputs": [_tensor([1, 1], [1.0], "FP64")]}),
    "too few values": ("multilinear", {"inputs": [_tensor([2, 3], [1.0, 2.0, 3.0])]}),
    "out of range": ("lenet", {"inputs": [_tensor([1, 1, 32, 32], [2.0] * 1024)]}),
    "unknown input": ("linear", {"inputs": [{**_tensor([1, 1], [1.0]), "name": "nope"}]}),
    "unknown output": ("linear", {"inputs": [_tensor([1, 1], [1.0])], "outputs": [{"name": "z"}]}),
    "output twice": ("linear", {"inputs": [_tensor([1, 1], [1.0])], "outputs": [{"name": "y"}, {"name": "y"}]}),
    "shared memory": (
        "linear",
        {
            "inputs": [_tensor([1, 1], [1.0])],
            "outputs": [{"name": "y", "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 4}}],
        },
    ),
    "unsupported parameter": (
        "linear",
        {"inputs": [_tensor([1, 1], [1.0])], "outputs": [{"name": "y", "parameters": {"top_k": 3}}]},
    ),
    "negative class count": (
        "lenet",
        {
            "inputs": [_tensor([1, 1, 32, 32], [0.5] * 1024)],
            "outputs": [{"name": "logits", "parameters": {"classification": -1}}],
        },
    ),
}


@pytest.mark.parametrize("case", list(TYPED_CASES))
def test_a_bad_typed_request_gets_the_http_route_s_sentence_as_invalid_argument(
    door: Door, client: TestClient, case: str
) -> None:
    model, body = TYPED_CASES[case]
    http = client.post(f"/v2/models/{model}/infer", json=body)
    assert http.status_code == 400, http.text
    assert _refusal(door.stub.ModelInfer, _grpc_request(model, body)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        http.json()["error"],
    )


RAW_CASES = {
    "NaN": ("linear", [1, 1], np.array([[np.nan]], np.float32).tobytes()),
    "infinity": ("blobs", [1, 2], np.array([[1.0, np.inf]], np.float32).tobytes()),
    "short": ("multilinear", [1, 3], np.zeros(2, np.float32).tobytes()),
    "overflowing output": ("multilinear", [1, 3], np.full(3, 3e38, np.float32).tobytes()),
}


@pytest.mark.parametrize("case", list(RAW_CASES))
def test_a_bad_raw_request_gets_the_binary_http_route_s_sentence(door: Door, client: TestClient, case: str) -> None:
    model, shape, raw = RAW_CASES[case]
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": shape}]}
    http = _http_binary(client, model, body, raw)
    assert http.status_code == 400, http.text
    assert _refusal(door.stub.ModelInfer, _grpc_request(model, body, raw)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        http.json()["error"],
    )


def test_unknown_model_or_version_is_not_found_with_the_http_sentence(door: Door, client: TestClient) -> None:
    body = {"inputs": [_tensor([1, 1], [1.0])]}
    for model, version in (("nope", ""), ("linear", "7")):
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "")
        sentence = client.post(f"{path}/infer", json=body).json()["error"]
        request = _grpc_request(model, body)
        request.model_version = version
        assert _refusal(door.stub.ModelInfer, request) == (grpc.StatusCode.NOT_FOUND, sentence)
        metadata = pb.ModelMetadataRequest(name=model, version=version)
        assert _refusal(door.stub.ModelMetadata, metadata) == (grpc.StatusCode.NOT_FOUND, sentence)
        assert _refusal(door.stub.ModelReady, pb.ModelReadyRequest(name=model, version=version))[0] == (
            grpc.StatusCode.NOT_FOUND
        )


def test_a_request_without_inputs_gets_the_http_route_s_sentence(door: Door, client: TestClient) -> None:
    http = client.post("/v2/models/linear/infer", json={"inputs": []})
    assert http.status_code == 400
    assert _refusal(door.stub.ModelInfer, pb.ModelInferRequest(model_name="linear")) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        http.json()["error"],
    )


def test_typed_contents_and_raw_contents_give_the_same_bits(door: Door) -> None:
    x = np.random.default_rng(0).random((3, 1, 32, 32), dtype=np.float32)
    body = {"inputs": [_tensor(list(x.shape), x.ravel().tolist())]}
    typed = door.stub.ModelInfer(_grpc_request("lenet", body), metadata=AUTH, timeout=30)
    raw = door.stub.ModelInfer(_grpc_request("lenet", body, x.tobytes()), metadata=AUTH, timeout=30)
    assert typed.raw_output_contents == raw.raw_output_contents
    assert [(o.name, o.datatype, list(o.shape)) for o in raw.outputs] == [("logits", "FP32", [3, 10])]
    assert (raw.model_name, raw.model_version) == ("lenet", "1")


def test_raw_contents_must_match_the_inputs_one_to_one(door: Door) -> None:
    request = _grpc_request("linear", {"inputs": [_tensor([1, 1], None)]}, b"\0\0\0\0")
    request.raw_input_contents.append(b"\0\0\0\0")
    assert _refusal(door.stub.ModelInfer, request) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "raw_input_contents has 2 entries for 1 inputs; give one per input, in the inputs' order",
    )
    empty = pb.ModelInferRequest(model_name="linear")
    empty.inputs.add(name="x", datatype="FP32", shape=[1, 1])
    assert _refusal(door.stub.ModelInfer, empty) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'x': no data; give contents.fp32_contents or raw_input_contents",
    )
    wrong_field = pb.ModelInferRequest(model_name="linear")
    wrong_field.inputs.add(name="x", datatype="FP32", shape=[1, 1]).contents.int_contents.append(1)
    assert _refusal(door.stub.ModelInfer, wrong_field) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'x': FP32 values go in contents.fp32_contents, got contents.int_contents",
    )


def test_classification_answers_the_top_classes_with_the_card_s_labels(door: Door) -> None:
    client = triton.InferenceServerClient(door.address)
    x = np.random.default_rng(1).random((2, 1, 32, 32), dtype=np.float32)
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    headers = dict(AUTH)
    logits = client.infer("lenet", [tensor], headers=headers).as_numpy("logits")
    wanted = triton.InferRequestedOutput("logits", class_count=3)
    top = client.infer("lenet", [tensor], outputs=[wanted], headers=headers).as_numpy("logits")
    assert top.shape == (2, 3) and top.dtype == np.object_
    for row, classes in zip(logits, top, strict=True):
        best = np.argsort(-row, kind="stable")[:3]
        assert [c.decode() for c in classes] == [f"{row[i]:f}:{i}:{i}" for i in best]
    client.close()


def test_statistics_count_each_request_its_rows_and_its_time(door: Door) -> None:
    def lenet() -> Any:
        (stats,) = door.stub.ModelStatistics(pb.ModelStatisticsRequest(name="lenet"), metadata=AUTH).model_stats
        return stats

    before = lenet()
    x = np.zeros((3, 1, 32, 32), np.float32)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 1, 32, 32]}]}
    for _ in range(2):
        door.stub.ModelInfer(_grpc_request("lenet", body, x.tobytes()), metadata=AUTH, timeout=30)
    after = lenet()
    assert (after.name, after.version) == ("lenet", "1")
    assert after.inference_count - before.inference_count == 6
    assert after.execution_count - before.execution_count == 2
    success = after.inference_stats.success
    assert success.count - before.inference_stats.success.count == 2
    assert success.ns > before.inference_stats.success.ns
    assert after.inference_stats.compute_infer.ns > before.inference_stats.compute_infer.ns
    every = door.stub.ModelStatistics(pb.ModelStatisticsRequest(), metadata=AUTH).model_stats
    assert [s.name for s in every] == ["blobs", "lenet", "linear", "multilinear"]


def test_calls_not_served_answer_unimplemented_with_a_sentence(door: Door) -> None:
    calls = {
        door.stub.ModelConfig: pb.ModelConfigRequest(name="lenet"),
        door.stub.SystemSharedMemoryStatus: pb.SystemSharedMemoryStatusRequest(),
        door.stub.CudaSharedMemoryRegister: pb.CudaSharedMemoryRegisterRequest(),
        door.stub.TraceSetting: pb.TraceSettingRequest(),
        door.stub.LogSettings: pb.LogSettingsRequest(),
    }
    for call, request in calls.items():
        code, sentence = _refusal(call, request)
        assert code == grpc.StatusCode.UNIMPLEMENTED
        assert " is not served by tinyserve; " in sentence

    def stream(requests: Any, **kwargs: Any) -> list[Any]:
        return list(door.stub.ModelStreamInfer(requests, **kwargs))

    code, sentence = _refusal(stream, iter([pb.ModelInferRequest(model_name="lenet")]))
    assert (code, sentence) == (
        grpc.StatusCode.UNIMPLEMENTED,
        "streaming inference (ModelStreamInfer) is not served by tinyserve; call ModelInfer once per request",
    )


def test_repository_calls_are_the_http_routes_sentences(door: Door) -> None:
    """Served by the same functions as POST /v2/repository/... (tests/test_control.py drives them on a server);
    a data plane without a controller refuses them as HTTP does."""
    assert _refusal(door.stub.RepositoryIndex, pb.RepositoryIndexRequest()) == (
        grpc.StatusCode.UNAVAILABLE,
        "the model repository calls are not available in this server",
    )


def test_the_token_is_asked_for_except_by_the_probes(door: Door) -> None:
    body = {"inputs": [_tensor([1, 1], [1.0])]}
    for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", TOKEN),)):
        assert _refusal(door.stub.ModelInfer, _grpc_request("linear", body), metadata) == (
            grpc.StatusCode.UNAUTHENTICATED,
            grpc_server.UNAUTHORISED,
        )
    assert _refusal(door.stub.ModelMetadata, pb.ModelMetadataRequest(name="linear"), ())[0] == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    assert door.stub.ServerLive(pb.ServerLiveRequest(), timeout=30).live
    assert door.stub.ServerReady(pb.ServerReadyRequest(), timeout=30).ready
    health = health_pb2_grpc.HealthStub(door.channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=30).status == health_pb2.HealthCheckResponse.SERVING
    answer = door.stub.ModelInfer(_grpc_request("linear", body), metadata=AUTH, timeout=30)
    assert np.frombuffer(answer.raw_output_contents[0], "<f4").shape == (1,)


def test_health_names_the_inference_service_and_reflection_lists_the_services(door: Door) -> None:
    health = health_pb2_grpc.HealthStub(door.channel)
    for service in ("", "inference.GRPCInferenceService"):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=30)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as caught:
        health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=30)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    reflection = reflection_pb2_grpc.ServerReflectionStub(door.channel)
    asked = reflection_pb2.ServerReflectionRequest(list_services="")
    (answer,) = list(reflection.ServerReflectionInfo(iter([asked]), metadata=AUTH, timeout=30))
    assert sorted(s.name for s in answer.list_services_response.service) == [
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "inference.GRPCInferenceService",
    ]


def test_http_and_grpc_draw_on_the_same_slots(door: Door, plane: DataPlane) -> None:
    """One limit per worker over both doors (server.py hands the guard and the gRPC door one Admission):
    requests in flight on gRPC leave HTTP only what is left of it."""

    async def elsewhere(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan", f"{scope['path']} is a fast-path route"
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})

    guarded = GuardMiddleware(
        FastPath(elsewhere, plane=lambda: plane), lifecycle=plane.lifecycle, admission=door.admission
    )
    with TestClient(guarded) as http, door.admission():  # one of the 2 slots held by a gRPC call
        assert http.post("/v1/linear/predict", json={"x": [1.0]}).status_code == 200
        with door.admission():  # and the other
            refused = http.post("/v1/linear/predict", json={"x": [1.0]})
    assert (refused.status_code, refused.headers["retry-after"]) == (429, "1")
    assert refused.json()["error"] == (
        "server busy: 2 requests in flight, the limit is 2 (TINYSERVE_MAX_CONCURRENCY); retry after 1 s"
    )
    assert door.admission.in_flight == 0


def test_overload_is_resource_exhausted_and_draining_unavailable(door: Door, plane: DataPlane) -> None:
    body = {"inputs": [_tensor([1, 1], [1.0])]}
    with door.admission(), door.admission():  # the limit (2) is reached
        assert _refusal(door.stub.ModelInfer, _grpc_request("linear", body)) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "server busy: 2 requests in flight, the limit is 2 (TINYSERVE_MAX_CONCURRENCY); retry after 1 s",
        )
    plane.lifecycle.draining = True
    try:
        assert _refusal(door.stub.ModelInfer, _grpc_request("linear", body)) == (
            grpc.StatusCode.UNAVAILABLE,
            "the server is shutting down; send the request to another instance",
        )
        assert not door.stub.ServerReady(pb.ServerReadyRequest(), timeout=30).ready
        health = health_pb2_grpc.HealthStub(door.channel)
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=30).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        plane.lifecycle.draining = False
    assert door.stub.ModelInfer(_grpc_request("linear", body), metadata=AUTH, timeout=30).outputs[0].name == "y"


def test_a_message_over_the_body_limit_is_resource_exhausted(door: Door) -> None:
    x = np.zeros((300, 1, 32, 32), np.float32)  # 1.2 MB > the 1 MiB limit
    client = triton.InferenceServerClient(door.address)
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("lenet", [tensor], headers=dict(AUTH))
    assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    client.close()


def test_lists_and_maps_are_counted_before_their_entries_are_read(door: Door) -> None:
    """As a JSON body's: 100,000 outputs in 1 MB are refused by their count, before any is looked up."""

    def request(outputs: int = 0, parameters: int = 0, dims: int = 2, input_parameters: int = 0) -> Any:
        request = _grpc_request("linear", {"inputs": [_tensor([1] * dims, [1.0])]})
        for i in range(outputs):
            request.outputs.add(name=f"y{i}")
        for i in range(parameters):
            request.parameters[f"p{i}"].int64_param = i
        for i in range(input_parameters):
            request.inputs[0].parameters[f"p{i}"].int64_param = i
        return request

    cases = {
        "the request has 100000 outputs; at most 64 are accepted": request(outputs=100_000),
        "the request has 65 parameters; at most 64 are accepted": request(parameters=65),
        "input 'x' has 65 parameters; at most 64 are accepted": request(input_parameters=65),
        "input 'x' has 65 dimensions in its shape; at most 64 are accepted": request(dims=65),
    }
    for sentence, refused in cases.items():
        assert _refusal(door.stub.ModelInfer, refused) == (grpc.StatusCode.INVALID_ARGUMENT, sentence)
    answer = door.stub.ModelInfer(request(parameters=64, input_parameters=64), metadata=AUTH, timeout=30)
    assert answer.outputs[0].name == "y"  # 64 of each: unknown parameters, ignored as before


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_a_compressed_message_is_answered_and_one_that_inflates_past_the_limit_refused(
    door: Door, algorithm: str
) -> None:
    """Triton's client compresses a request when asked: the same bits back. A message small on the wire is
    measured as it inflates: past the body limit it is refused before it is whole, and the door serves on."""
    client = triton.InferenceServerClient(door.address)
    x = np.random.default_rng(0).random((4, 1, 32, 32), dtype=np.float32)
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    plain = client.infer("lenet", [tensor], headers=dict(AUTH)).as_numpy("logits")
    packed = client.infer("lenet", [tensor], headers=dict(AUTH), compression_algorithm=algorithm)
    assert packed.as_numpy("logits").tobytes() == plain.tobytes()
    zeros = np.zeros((300, 1, 32, 32), np.float32)  # 1.2 MB inflated, a few KB on the wire; the limit is 1 MiB
    bomb = triton.InferInput("x", list(zeros.shape), "FP32")
    bomb.set_data_from_numpy(zeros)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("lenet", [bomb], headers=dict(AUTH), compression_algorithm=algorithm)
    assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert str(caught.value.message()).startswith("Decompressed message larger than max"), caught.value.message()
    assert client.infer("lenet", [tensor], headers=dict(AUTH)).as_numpy("logits").tobytes() == plain.tobytes()
    client.close()


def test_every_typed_error_has_its_grpc_code() -> None:
    import service.control  # noqa: F401  # its errors (409 for a load the mode refuses, ...) join the family

    def family(kind: type[ServingError]) -> list[type[ServingError]]:
        return [kind, *(k for sub in kind.__subclasses__() for k in family(sub))]

    kinds = [k for k in family(ServingError) if k.status != 500]
    assert len(kinds) >= 8
    for kind in kinds:
        assert grpc_server.code_of(kind("x")) != grpc.StatusCode.INTERNAL, kind.__name__


def _connections_to(address: str) -> set[tuple[str, int]]:
    """This process's open TCP connections to `address` (the door runs here too: its side is filtered out)."""
    host, port = address.rsplit(":", 1)
    return {
        c.laddr
        for c in psutil.Process().net_connections(kind="tcp")
        if c.status == psutil.CONN_ESTABLISHED
        and c.raddr
        and (c.raddr.ip.removeprefix("::ffff:"), c.raddr.port) == (host, int(port))  # gRPC's IPv4-mapped form
    }


@pytest.mark.parametrize("connections", [1, 3])
def test_the_scorer_s_transport_opens_a_connection_per_channel(door: Door, connections: int) -> None:
    # a connection is served by one worker: the scorer's threads would all land on one over a single connection
    before = _connections_to(door.address)
    transport = GrpcTransport(door.address, timeout=30, token=TOKEN, connections=connections)
    x = np.random.default_rng(0).random((2, 1, 32, 32), dtype=np.float32)
    answers = [transport.infer("lenet", "logits", x) for _ in range(2 * connections)]
    opened = _connections_to(door.address) - before
    transport.close()
    assert len(opened) == connections
    assert all(np.array_equal(a, answers[0]) for a in answers) and answers[0].shape == (2, 10)


def test_a_call_without_an_answer_in_time_is_deadline_exceeded_and_gives_its_slot_back(plane: DataPlane) -> None:
    body = {"inputs": [_tensor([1, 1], [1.0])]}
    batcher = plane.model("linear").batcher
    run, entered, release = batcher.run, threading.Event(), threading.Event()

    def held(x: np.ndarray) -> np.ndarray:  # the model's call held (a stuck accelerator, say)
        entered.set()
        assert release.wait(60)
        return run(x)

    batcher.run = held
    try:
        with serving(plane, request_timeout=0.2) as door, concurrent.futures.ThreadPoolExecutor(1) as pool:
            late = "no answer within 0.2 s (TINYSERVE_REQUEST_TIMEOUT); it was dropped"
            leading = pool.submit(_refusal, door.stub.ModelInfer, _grpc_request("linear", body))
            assert entered.wait(30)
            # queued behind the held call: its thread stops waiting at the limit, and its slot goes back
            assert _refusal(door.stub.ModelInfer, _grpc_request("linear", body)) == (
                grpc.StatusCode.DEADLINE_EXCEEDED,
                late,
            )
            assert door.admission.in_flight == 1
            release.set()
            assert leading.result(timeout=30) == (grpc.StatusCode.DEADLINE_EXCEEDED, late)  # its answer came late
            batcher.run = run
            answer = door.stub.ModelInfer(_grpc_request("linear", body), metadata=AUTH, timeout=30)
            assert answer.outputs[0].name == "y" and door.admission.in_flight == 0
    finally:
        release.set()
        batcher.run = run


def test_reflection_streams_are_bounded_and_given_back(door: Door) -> None:
    # an open stream holds a gRPC thread of the worker: a client may not hold them all
    reflection = reflection_pb2_grpc.ServerReflectionStub(door.channel)
    ask = reflection_pb2.ServerReflectionRequest(list_services="")
    ends = [queue.Queue[Any]() for _ in range(grpc_server.REFLECTION_STREAMS)]
    streams = [reflection.ServerReflectionInfo(iter(end.get, None), metadata=AUTH, timeout=30) for end in ends]
    for end, stream in zip(ends, streams, strict=True):
        end.put(ask)
        assert next(stream).list_services_response.service  # open, and answered
    with pytest.raises(grpc.RpcError) as caught:
        list(reflection.ServerReflectionInfo(iter([ask]), metadata=AUTH, timeout=30))
    assert (caught.value.code(), caught.value.details()) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "4 reflection streams are open on this worker, the most it keeps open; close one and retry",
    )
    body = {"inputs": [_tensor([1, 1], [1.0])]}
    assert door.stub.ModelInfer(_grpc_request("linear", body), metadata=AUTH, timeout=30).outputs[0].name == "y"
    for end, stream in zip(ends, streams, strict=True):
        end.put(None)  # the client closes its side: the stream ends, its slot goes back
        assert list(stream) == []
    (again,) = list(reflection.ServerReflectionInfo(iter([ask]), metadata=AUTH, timeout=30))
    assert again.list_services_response.service


def test_health_watch_streams_are_bounded_and_given_back(door: Door) -> None:
    # Watch needs no token, and each open stream counts against the calls a worker takes at once
    health = health_pb2_grpc.HealthStub(door.channel)
    watches = [health.Watch(health_pb2.HealthCheckRequest(), timeout=30) for _ in range(grpc_server.WATCH_STREAMS)]
    assert {next(w).status for w in watches} == {health_pb2.HealthCheckResponse.SERVING}
    with pytest.raises(grpc.RpcError) as caught:
        next(health.Watch(health_pb2.HealthCheckRequest(), timeout=30))
    assert (caught.value.code(), caught.value.details()) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "8 health Watch streams are open on this worker, the most it keeps open; use Check, or close one and retry",
    )
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=30).status == health_pb2.HealthCheckResponse.SERVING
    for watch in watches:
        watch.cancel()
    answers = []
    for _ in range(500):  # the server frees a slot once it has seen the stream end: a few round trips at most
        again = health.Watch(health_pb2.HealthCheckRequest(), timeout=30)
        try:
            answers.append(next(again).status)
            break
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            again.cancel()
    assert answers == [health_pb2.HealthCheckResponse.SERVING]
