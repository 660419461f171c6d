"""service.compat.connections' hooks in uvicorn's httptools protocol, on a real uvicorn server (uvloop and httptools,
as BentoML runs it) in this process: idle and slow-header connections closed, oversized headers refused.

An upgrade of uvicorn that moves what the hooks wrap fails here, not in production.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from importlib import metadata
from typing import Any

import psutil
import pytest
from uvicorn.protocols.http import auto, httptools_impl

from service.compat import connections
from tests.fast.serving import uvicorn_serving

pytestmark = pytest.mark.timeout(60)
LIMITS = connections.Limits(header_timeout=0.5, idle_timeout=0.5, max_header_bytes=1024, write_timeout=0.5)
BIG = 64 * 2**20  # far more than any socket buffer holds
big_sent = threading.Event()  # the app's send of BIG returned: read, or given up on


async def _hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = b"x" * BIG if scope["path"] == "/big" else b"hello"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})
    if scope["path"] == "/big":
        big_sent.set()


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    defaults = connections.LIMITS
    assert connections.install(LIMITS).startswith(
        "connections: idle 0.5 s, headers within 0.5 s and 1024 bytes, reading stalled at most 0.5 s"
    )
    try:
        with uvicorn_serving(_hello, backlog=64) as serving:
            yield serving
    finally:
        connections.install(defaults)  # the hooks stay for this process: with the service's limits


def _until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _server_side_open(client: tuple[str, int]) -> bool:
    """Whether the server (in this process) still has its end of the connection from `client`."""
    return any(c.raddr and tuple(c.raddr) == client for c in psutil.Process().net_connections(kind="tcp"))


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)  # a safety net: reads wait for the server
    return sock


def test_the_hooks_are_written_for_the_installed_uvicorn() -> None:
    assert metadata.version("uvicorn").startswith(connections.UVICORN)
    assert auto.AutoHTTPProtocol is httptools_impl.HttpToolsProtocol  # what BentoML's workers run
    for name in ("connection_made", "connection_lost", "data_received", "on_url", "on_header"):
        assert callable(getattr(httptools_impl.HttpToolsProtocol, name)), name
    for name in ("on_headers_complete", "on_message_complete", "on_response_complete", "send_400_response"):
        assert callable(getattr(httptools_impl.HttpToolsProtocol, name)), name


def test_a_connection_that_never_sends_is_closed_without_an_answer(port: int) -> None:
    with _connect(port) as sock:
        assert _until_closed(sock) == b""


def test_headers_that_stop_midway_get_408_and_a_closed_connection(port: int) -> None:
    with _connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        answer = _until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {
        "error": "request headers not complete within 0.5 s (TINYSERVE_HEADER_TIMEOUT)",
        "detail": [],
    }


@pytest.mark.parametrize("pieces", [1, 64], ids=["whole", "in-pieces"])
def test_headers_over_the_limit_get_431_however_they_arrive(port: int, pieces: int) -> None:
    header = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4096 + b"\r\n\r\n"
    size = len(header) // pieces + 1
    with _connect(port) as sock:
        for start in range(0, len(header), size):
            try:
                sock.sendall(header[start : start + size])
            except (BrokenPipeError, ConnectionResetError):
                break  # refused before the rest was sent
        answer = _until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), answer[:80]
    assert b"x-content-type-options: nosniff\r\n" in answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == (
        "request headers too large: more than 1024 bytes (TINYSERVE_MAX_HEADER_BYTES)"
    )


def test_what_httptools_cannot_parse_gets_400_in_the_envelope(port: int) -> None:
    with _connect(port) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9x\r\n\r\n{}")
        answer = _until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"x-frame-options: DENY\r\n" in answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {
        "error": "invalid HTTP/1.1 request: its request line, headers or framing break the protocol",
        "detail": [],
    }


def test_a_client_that_stops_reading_its_answer_is_dropped(port: int) -> None:
    """Else it holds its request, and the answer in memory, for as long as it likes."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a window that fills at once
        sock.settimeout(30)
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        assert big_sent.wait(timeout=30)  # the app's send returned: the answer is in the server's buffer
        # Only once the server has dropped it does the client read: read at once, a fast machine takes 64 MB in
        # through its 4 KB window before the write timeout is up, and the test would measure that race.
        client = sock.getsockname()
        for _ in range(300):
            if not _server_side_open(client):
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"the server still holds the connection from {client} 30 s after it stalled")
        received = 0
        try:
            while chunk := sock.recv(2**20):
                received += len(chunk)
        except ConnectionResetError:
            pass  # aborted: what was in flight is lost
    assert received < BIG


def test_a_kept_alive_connection_serves_then_closes_once_idle(port: int) -> None:
    with _connect(port) as sock:
        for _ in range(3):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b"hello"):
                answer += sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        assert _until_closed(sock) == b""  # then idle: closed without a word
