"""The Open Inference Protocol over gRPC on a real server: Triton's client (sync and aio) and KServe's,
unchanged, on every model; their answers bit for bit those of the HTTP routes and of ONNX Runtime.

One server for the module, with a token, as a team moving its Triton or KServe clients would run it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import psutil
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_aio
import tritonclient.http as triton_http
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from tests.helpers import FEATURES, OUTPUTS, Reference, v2_inputs
from tests.server import REPO, Server, launch, running, stop

pytestmark = pytest.mark.timeout(300)
TOKEN = "grpc-test-token"
HEADERS = {"authorization": f"Bearer {TOKEN}"}
CONNECTIONS = 32


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running(tmp_path_factory.mktemp("grpc") / "server.log", {"TINYSERVE_API_TOKEN": TOKEN}) as s:
        yield s


@pytest.fixture(scope="module")
def catalog(served: Server) -> dict[str, object]:
    answer: dict[str, object] = httpx.get(f"{served.url}/v1/models", headers=HEADERS, timeout=30).json()
    return answer


@pytest.fixture(scope="module")
def ort(catalog: dict[str, object]) -> Reference:
    return Reference(catalog)


@pytest.fixture(scope="module")
def http(served: Server) -> Iterator[triton_http.InferenceServerClient]:
    client = triton_http.InferenceServerClient(served.url.removeprefix("http://"), network_timeout=60)
    yield client
    client.close()


@pytest.fixture(scope="module")
def client(served: Server) -> Iterator[triton_grpc.InferenceServerClient]:
    c = triton_grpc.InferenceServerClient(served.grpc)
    yield c
    c.close()


def _over_http(http: triton_http.InferenceServerClient, name: str, x: np.ndarray) -> np.ndarray:
    tensor = triton_http.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    headers = dict(HEADERS)  # a copy: the client adds its own headers to the dict it is given
    answer: np.ndarray = http.infer(name, [tensor], headers=headers).as_numpy(OUTPUTS[name])
    return answer


def _grpc_sockets(worker: psutil.Process, port: int, status: str) -> int:
    return sum(1 for c in worker.net_connections("tcp") if c.laddr and c.laddr.port == port and c.status == status)


def _listening_workers(served: Server, workers: int) -> list[psutil.Process]:
    """The workers, once each listens on the gRPC port (/readyz answers as soon as the first one is up)."""
    port = int(served.grpc.rsplit(":", 1)[1])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = [p for p in psutil.Process(served.process.pid).children(recursive=True) if "--fd" in p.cmdline()]
        if len(found) == workers and all(_grpc_sockets(w, port, psutil.CONN_LISTEN) == 1 for w in found):
            return found
        time.sleep(0.2)
    raise TimeoutError(f"not every worker listens on {served.grpc}:\n{served.output()}")


def test_every_worker_serves_grpc_and_connections_spread_over_them(
    served: Server, catalog: dict[str, dict[str, int]]
) -> None:
    workers = _listening_workers(served, catalog["runtime"]["workers"])
    port = int(served.grpc.rsplit(":", 1)[1])
    lines = [line for line in served.output().splitlines() if "gRPC (Open Inference Protocol) on" in line]
    assert len(lines) == len(workers) and all(line.endswith(f"on {served.grpc}") for line in lines)
    options = [("grpc.use_local_subchannel_pool", 1)]  # a connection of its own per channel, as separate clients
    channels = [grpc.insecure_channel(served.grpc, options=options) for _ in range(CONNECTIONS)]
    try:
        for channel in channels:
            assert pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=30).live
        held = [_grpc_sockets(w, port, psutil.CONN_ESTABLISHED) for w in workers]
    finally:
        for channel in channels:
            channel.close()
    assert sum(held) >= CONNECTIONS and all(held), held  # every worker holds some: the kernel spread them


def test_probes_and_metadata_through_triton_s_grpc_client(client: triton_grpc.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()  # the probes need no token
    metadata = client.get_server_metadata(headers=HEADERS, as_json=True)
    assert metadata["name"] == "tinyserve"
    assert metadata["extensions"] == ["binary_tensor_data", "classification", "statistics"]
    for name in FEATURES:
        assert client.is_model_ready(name, headers=HEADERS) and client.is_model_ready(name, "1", headers=HEADERS)
        model = client.get_model_metadata(name, headers=HEADERS, as_json=True)
        assert model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [str(d) for d in (-1, *FEATURES[name])]}]
        assert model["outputs"][0]["name"] == OUTPUTS[name]


@pytest.mark.parametrize("name", list(FEATURES))
@pytest.mark.parametrize("batch", [1, 256])
def test_triton_s_grpc_client_gets_the_http_route_s_bits_and_onnx_runtime_s(
    client: triton_grpc.InferenceServerClient,
    http: triton_http.InferenceServerClient,
    ort: Reference,
    name: str,
    batch: int,
) -> None:
    x = v2_inputs(name, batch)
    tensor = triton_grpc.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer(name, [tensor], request_id=f"{name}-{batch}", headers=HEADERS)
    got = result.as_numpy(OUTPUTS[name])
    assert got.dtype == np.float32 and got.shape == (batch, 10 if name == "lenet" else 1)
    assert got.tobytes() == _over_http(http, name, x).tobytes()
    ort.assert_matches(got, name, x)
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == (name, "1", f"{name}-{batch}")


def test_triton_s_aio_grpc_client_gets_the_same_bits(
    served: Server, http: triton_http.InferenceServerClient, ort: Reference
) -> None:
    async def ask() -> dict[str, np.ndarray]:
        answers = {}
        async with triton_aio.InferenceServerClient(served.grpc) as client:
            assert await client.is_server_ready()
            for name in FEATURES:
                tensor = triton_aio.InferInput("x", [8, *FEATURES[name]], "FP32")
                tensor.set_data_from_numpy(v2_inputs(name, 8))
                answers[name] = (await client.infer(name, [tensor], headers=HEADERS)).as_numpy(OUTPUTS[name])
        return answers

    for name, got in asyncio.run(ask()).items():
        x = v2_inputs(name, 8)
        assert got.tobytes() == _over_http(http, name, x).tobytes(), name
        ort.assert_matches(got, name, x)


@pytest.mark.timeout(900)  # the first run installs KServe's SDK into .venv-kserve (a minute or two)
def test_kserve_s_grpc_client_gets_the_same_bits(
    served: Server, http: triton_http.InferenceServerClient, ort: Reference, tmp_path: Path
) -> None:
    subprocess.run(["make", "-C", str(REPO), "--no-print-directory", "kserve-client"], check=True, timeout=840)
    inputs = {name: v2_inputs(name, 16) for name in FEATURES}
    np.savez(tmp_path / "in.npz", **inputs)
    python = REPO / ".venv-kserve" / "bin" / "python"
    script = [str(python), str(REPO / "tests" / "kserve_grpc.py"), served.grpc, TOKEN]
    run = subprocess.run(
        [*script, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")], capture_output=True, timeout=120
    )
    assert run.returncode == 0, run.stderr.decode()
    assert json.loads(run.stdout) == {"live": True, "ready": True, "models": dict.fromkeys(FEATURES, True)}
    answers = np.load(tmp_path / "out.npz")
    for name, x in inputs.items():
        expected = _over_http(http, name, x).tobytes()
        assert answers[name].tobytes() == expected, name
        assert answers[f"{name}.typed"].tobytes() == expected, name  # typed contents (fp32_contents) as well
        ort.assert_matches(answers[name], name, x)


def test_refusals_carry_the_http_sentence_and_their_code(
    client: triton_grpc.InferenceServerClient, served: Server
) -> None:
    x = np.zeros((1, 3), np.float32)
    tensor = triton_grpc.InferInput("x", [1, 3], "FP32")
    tensor.set_data_from_numpy(x)
    http = httpx.post(
        f"{served.url}/v2/models/linear/infer",
        json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [0, 0, 0]}]},
        headers=HEADERS,
        timeout=30,
    )
    cases = [
        ("linear", HEADERS, "StatusCode.INVALID_ARGUMENT", http.json()["error"]),
        (
            "nope",
            HEADERS,
            "StatusCode.NOT_FOUND",
            "unknown model 'nope': expected one of blobs, lenet, linear, multilinear",
        ),
        (
            "linear",
            {},
            "StatusCode.UNAUTHENTICATED",
            "missing or invalid API token: send the metadata 'authorization: Bearer <token>'",
        ),
    ]
    for model, headers, status, sentence in cases:
        with pytest.raises(InferenceServerException) as caught:
            client.infer(model, [tensor], headers=headers)
        assert (caught.value.status(), caught.value.message()) == (status, sentence)
    assert http.status_code == 400


def test_the_standard_health_service_answers_serving(served: Server) -> None:
    with grpc.insecure_channel(served.grpc) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = health.Check(health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"), timeout=30)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_grpc_and_http_requests_are_counted_by_protocol(
    client: triton_grpc.InferenceServerClient, served: Server
) -> None:
    def counted(protocol: str) -> float:
        text = httpx.get(f"{served.url}/metrics", headers=HEADERS, timeout=30).text  # the API token: no metrics one
        row = f'tinyserve_infer_requests_total{{outcome="ok",protocol="{protocol}"}} '
        return sum(float(line.removeprefix(row)) for line in text.splitlines() if line.startswith(row))

    before = counted("grpc"), counted("http")
    tensor = triton_grpc.InferInput("x", [1, 1], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 1), np.float32))
    client.infer("linear", [tensor], headers=HEADERS)
    assert (counted("grpc"), counted("http")) == (before[0] + 1, before[1])


def _refused_lines(log: Path, grpc_port: int) -> list[str]:
    server = launch(log, {"TINYSERVE_GRPC_PORT": str(grpc_port)})
    try:
        server.process.wait(timeout=120)
    finally:
        stop(server)
    assert server.process.returncode == 2, server.output()
    assert "Traceback" not in server.output() and "] loaded " not in server.output()  # no worker ever started
    return [line for line in server.output().splitlines() if line.strip()]


def test_a_grpc_port_in_use_refuses_the_start_in_one_line(served: Server, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        lines = _refused_lines(tmp_path / "taken.log", port)
    assert lines[-1] == (
        f"tinyserve: refusing to start: the gRPC port 127.0.0.1:{port} is already in use: "
        "stop what listens there, or set TINYSERVE_GRPC_PORT (0: off)"
    )
    assert all("[INFO]" in line for line in lines[:-1]), lines  # before it, only the start-up decision
    # SO_REUSEPORT would let a second server share the first one's port: it is refused instead
    shared = _refused_lines(tmp_path / "second.log", int(served.grpc.rsplit(":", 1)[1]))
    assert shared[-1].startswith(f"tinyserve: refusing to start: the gRPC port {served.grpc} is already in use")
