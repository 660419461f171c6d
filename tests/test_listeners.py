"""Connections spread over the workers: a listening socket per worker (SO_REUSEPORT), on real servers; the
statistics each worker answers count every worker's requests."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import tritonclient.grpc as triton_grpc

from tests.server import Server, launch, running, stop

TWO_WORKERS = {"TINYSERVE_WORKERS": "2", "TINYSERVE_THREADS": "1"}
CONNECTIONS = 32


def _port(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def _workers(server: Server) -> list[psutil.Process]:
    return [p for p in psutil.Process(server.process.pid).children(recursive=True) if "--fd" in p.cmdline()]


def _sockets(process: psutil.Process, port: int, status: str) -> int:
    return sum(1 for c in process.net_connections("tcp") if c.laddr and c.laddr.port == port and c.status == status)


def _wait_until_every_worker_listens(server: Server) -> list[psutil.Process]:
    """A worker listens once its models are loaded; /readyz answers as soon as the first one does."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        workers = _workers(server)
        if len(workers) == 2 and all(_sockets(w, _port(server), psutil.CONN_LISTEN) == 1 for w in workers):
            return workers
        time.sleep(0.2)
    raise TimeoutError(f"not every worker listens:\n{server.output()}")


def _open_at_once(server: Server) -> dict[int, int]:
    """32 connections opened in one burst (as a client's pool opens them), each kept open after a request
    on it: how many each worker holds."""
    port = _port(server)

    async def burst() -> dict[int, int]:
        connections = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(CONNECTIONS)))
        try:
            for _, writer in connections:
                writer.write(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            for reader, _ in connections:
                assert (await reader.readline()).startswith(b"HTTP/1.1 200"), "a connection was not served"
            return {w.pid: _sockets(w, port, psutil.CONN_ESTABLISHED) for w in _workers(server)}
        finally:
            for _, writer in connections:
                writer.close()

    return asyncio.run(burst())


def _assert_spread(per_worker: dict[int, int]) -> None:
    assert len(per_worker) == 2 and sum(per_worker.values()) == CONNECTIONS, per_worker
    # Hashed over 2 sockets, fewer than 4 of 32 on one worker has a probability of ~1e-6
    assert min(per_worker.values()) >= 4, per_worker


def test_connections_opened_at_once_spread_over_the_workers(tmp_path: Path) -> None:
    with running(tmp_path / "server.log", TWO_WORKERS) as server:
        port = _port(server)
        assert "connections: one listening socket per worker on 127.0.0.1:" in server.output()
        # each worker listens on its own socket; the server process holds the address but takes no connection
        _wait_until_every_worker_listens(server)
        assert _sockets(psutil.Process(server.process.pid), port, psutil.CONN_LISTEN) == 0
        _assert_spread(_open_at_once(server))


def test_a_restarted_worker_takes_its_share_again(tmp_path: Path) -> None:
    with running(tmp_path / "server.log", TWO_WORKERS) as server:
        killed = _workers(server)[0]
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        workers = _wait_until_every_worker_listens(server)  # circus starts a new one, which loads the models
        assert killed.pid not in {w.pid for w in workers}
        _assert_spread(_open_at_once(server))


def test_off_keeps_one_shared_socket(tmp_path: Path) -> None:
    with running(tmp_path / "server.log", {**TWO_WORKERS, "TINYSERVE_REUSE_PORT": "false"}) as server:
        port = _port(server)
        assert "one listening socket per worker" not in server.output()
        assert _sockets(psutil.Process(server.process.pid), port, psutil.CONN_LISTEN) == 1  # the shared one
        per_worker = _open_at_once(server)
        assert sum(per_worker.values()) == CONNECTIONS


def _refusal(log: Path, port: int, env: dict[str, str]) -> list[str]:
    server = launch(log, env, port=port)
    try:
        server.process.wait(timeout=120)
    finally:
        stop(server)
    assert server.process.returncode == 2
    output = server.output()
    assert "Traceback" not in output and "] loaded " not in output, output  # and no worker ever started
    return [line for line in output.splitlines() if line.strip()]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_address_in_use_is_one_line_and_a_refused_start(tmp_path: Path, workers: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        lines = _refusal(tmp_path / "refused.log", port, {"TINYSERVE_WORKERS": workers})
    assert lines[-1] == (
        f"tinyserve: refusing to start: 127.0.0.1:{port} is already in use: "
        "stop what listens there or pick another --port"
    )
    assert all("[INFO]" in line for line in lines[:-1]), lines  # before it, only the start-up decision


def test_a_second_server_on_the_same_port_does_not_share_it(tmp_path: Path) -> None:
    """SO_REUSEPORT lets sockets share a port: a second tinyserve must still be refused, not join in."""
    with running(tmp_path / "first.log", TWO_WORKERS) as first:
        port = _port(first)
        lines = _refusal(tmp_path / "second.log", port, TWO_WORKERS)
        assert lines[-1].startswith(f"tinyserve: refusing to start: 127.0.0.1:{port} is already in use")
        _wait_until_every_worker_listens(first)
        _assert_spread(_open_at_once(first))  # the first server still answers, on both of its workers


def _predict_on_connections_opened_at_once(server: Server) -> dict[int, int]:
    """One linear request on each of 32 connections opened in one burst: how many each worker holds."""
    port = _port(server)
    body = b'{"x": [1.0]}'
    request = (
        b"POST /v1/linear/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )

    async def burst() -> dict[int, int]:
        connections = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(CONNECTIONS)))
        try:
            for _, writer in connections:
                writer.write(request)
            for reader, _ in connections:
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200"), head
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                assert b'"y"' in await reader.readexactly(length)
            return {w.pid: _sockets(w, port, psutil.CONN_ESTABLISHED) for w in _workers(server)}
        finally:
            for _, writer in connections:
                writer.close()

    return asyncio.run(burst())


def test_statistics_count_the_requests_of_every_worker(tmp_path: Path) -> None:
    """Triton's statistics are the server's: whichever worker answers, over HTTP or gRPC, it counts the
    requests every worker served (each worker counting only its own would answer about half)."""
    with running(tmp_path / "server.log", TWO_WORKERS) as server:
        _wait_until_every_worker_listens(server)

        def stats() -> dict[str, Any]:  # a fresh connection each time: any worker may answer
            (answer,) = httpx.get(f"{server.url}/v2/models/linear/versions/1/stats", timeout=30).json()["model_stats"]
            return answer  # type: ignore[no-any-return]

        before = stats()
        _assert_spread(_predict_on_connections_opened_at_once(server))
        answers = [stats() for _ in range(8)]
        assert all(a == answers[0] for a in answers), answers
        after = answers[0]
        assert after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"] == 32
        assert after["inference_count"] - before["inference_count"] == 32
        assert after["inference_stats"]["fail"] == before["inference_stats"]["fail"]
        assert after["inference_stats"]["success"]["ns"] > before["inference_stats"]["success"]["ns"]
        client = triton_grpc.InferenceServerClient(server.grpc)
        try:
            (over_grpc,) = client.get_inference_statistics("linear", "1", as_json=True)["model_stats"]
        finally:
            client.close()
        assert int(over_grpc["inference_stats"]["success"]["count"]) == after["inference_stats"]["success"]["count"]
        assert int(over_grpc["inference_count"]) == after["inference_count"]
