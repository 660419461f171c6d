"""The peers of `make bench-peers` answer as ONNX Runtime does, in every form the benchmark sends them.

Timings stay in `make bench-peers`; this only checks that each app serves the LeNet file correctly. The
FastAPI app runs in this environment (FastAPI, uvicorn and orjson are among tinyserve's own dependencies),
so it is always checked. The others need their own virtualenvs (.venv-peers/, ~2 GB, installed by
`make bench-peers` or `make peers`, not by `make test`): each is checked where it is installed and skipped
otherwise, with the reason. All six take about a minute on 2 cores; Ray Serve's start is the longest.
BentoML's floor (a service that does no work) runs in this environment too: it answers its fixed body; and
FastAPI's handler on BentoML (the least a LeNet service on it does) answers as ONNX Runtime.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from benchmarks import peers
from benchmarks.grpc_cases import grpc_load
from benchmarks.server import Server

FRAMEWORKS = [peer.name for peer in peers.PEERS if peer.name != "tinyserve" and not peer.floor]


@pytest.fixture(scope="module")
def fastapi_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[peers.Running]:
    log = tmp_path_factory.mktemp("fastapi") / "server.log"
    running = peers.start(peers.BY_NAME["fastapi"], log, python=Path(sys.executable))
    try:
        yield running
    finally:
        running.stop()


@pytest.mark.timeout(120)
def test_fastapi_peer_answers_in_this_environment(fastapi_peer: peers.Running) -> None:
    peers.check(fastapi_peer)


@pytest.mark.timeout(60)
def test_a_wrong_answer_is_caught(fastapi_peer: peers.Running) -> None:
    """The check compares values, not only shapes or labels: logits off by 1e-3 fail it, naming the form."""
    form = fastapi_peer.peer.bulk
    nudged = dataclasses.replace(form, decode=lambda body, headers: form.decode(body, headers) + 1e-3)
    wrong = dataclasses.replace(fastapi_peer, peer=dataclasses.replace(fastapi_peer.peer, bulk=nudged))
    with pytest.raises(AssertionError, match="FastAPI \\+ uvicorn, raw bytes"):
        peers.check(wrong)


@pytest.mark.timeout(60)
def test_tinyserve_answers_in_the_benchmarks_forms(server: Server) -> None:
    """The typed route, V2 JSON, gRPC and V2 binary as the benchmark encodes and decodes them, on the shared server."""
    assert [form.name for form in peers.BY_NAME["tinyserve"].single] == ["typed JSON", "V2 JSON", "gRPC"]
    peers.check(peers.Running(peers.BY_NAME["tinyserve"], server.url, server.process, server.log, grpc=server.grpc))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("images", [1, 1024])
def test_the_grpc_load_s_encoded_message_is_served(server: Server, images: int) -> None:
    """The gRPC load sends one message encoded before the load, through a method without serializers: every call
    answered (a wrong method or message would count errors), as many as asked, over several connections."""
    result = grpc_load(server.grpc, images, 4, 12, warm_up=4)
    assert (result["requests"], result["errors"], result["warm_up"]) == (12, 0, 4)
    assert result["images_per_s"] == pytest.approx(result["rps"] * images)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", FRAMEWORKS)
def test_framework_answers_as_onnx_runtime(name: str, tmp_path: Path) -> None:
    peer = peers.BY_NAME[name]
    if not peer.installed():
        pytest.skip(f"{peer.title}: .venv-peers/{name} is not installed (`make peers` or `make bench-peers`)")
    running = peers.start(peer, tmp_path / "server.log")
    try:
        peers.check(running)
        # and one 1024-image request in its bulk form, the size the benchmark times
        x = np.resize(peers.digits(100), (1024, 1, 32, 32))
        with httpx.Client(timeout=120) as client:
            got = peers.ask(client, running.url, peer.bulk, x)
        np.testing.assert_allclose(got, peers.reference(x), rtol=peers.RTOL, atol=peers.ATOL)
    finally:
        running.stop()


@pytest.mark.timeout(120)
def test_bentoml_s_floor_answers_its_fixed_body_and_leaves_the_rest_to_bentoml(tmp_path: Path) -> None:
    peer = peers.BY_NAME["bentoml_floor"]
    running = peers.start(peer, tmp_path / "server.log")
    try:
        with httpx.Client(timeout=30) as client:
            body, headers = peer.single[0].encode(peers.digits(1))
            answer = client.post(running.url + "/predict", content=body, headers=headers)
            assert answer.status_code == 200 and answer.json() == {"logits": [[0.0] * 10]}
            assert client.post(running.url + "/ping", json={}).text == "pong"  # BentoML's own route, past it
    finally:
        running.stop()


@pytest.mark.timeout(120)
def test_fastapi_s_handler_on_bentoml_answers_as_onnx_runtime(tmp_path: Path) -> None:
    """BentoML's least LeNet service (no checks, no batching): its answers, single and bulk, are ONNX Runtime's."""
    running = peers.start(peers.BY_NAME["bentoml_lean"], tmp_path / "server.log")
    try:
        peers.check(running)
    finally:
        running.stop()
