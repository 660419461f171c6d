"""The fenced internals (service.compat) against the real packages: an upgrade that breaks them fails here.

The prompt-ACK hook is checked on a real uvicorn server (uvloop and httptools, as BentoML runs it)
behind a middleware that wraps `receive` as BentoML's do; the socket hooks against BentoML's own names.
"""

from __future__ import annotations

import inspect
import json
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import pytest

from service import compat
from tests.fast.serving import uvicorn_serving

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]


def test_the_installed_packages_are_the_ones_compat_was_written_for() -> None:
    assert compat.mismatches() == [], "service.compat reaches into these packages' internals: re-check each hook"


def test_bentoml_still_has_the_names_the_socket_hooks_use() -> None:
    from _bentoml_impl.server import serving
    from _bentoml_impl.worker import service as worker
    from bentoml._internal.utils import circus

    assert serving.API_SERVER_NAME == compat.API_SOCKET
    assert callable(circus.create_standalone_arbiter)
    source = inspect.getsource(serving)  # the server passes its sockets by keyword, among arbiter_kwargs
    assert "create_standalone_arbiter(**arbiter_kwargs)" in source and '"sockets": ' in source
    options = {p.opts[0] for p in worker.main.params}
    assert {"--fd", "--backlog"} <= options
    assert compat.worker_fd(["worker", "--fd", "7", "--backlog", "10"]) == 7
    assert compat.worker_fd(["bentoml", "serve"]) is None


class _Probe:
    """An ASGI app behind a BentoML-style wrapper: records what QuickAck found when the first part came."""

    def __init__(self) -> None:
        self.first_part = threading.Event()
        self.seen: dict[str, Any] = {}

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Any) -> None:
        if scope["type"] != "http":
            return

        async def wrapped_receive() -> Message:  # the shape of BentoML's metrics middleware's wrapper
            return await receive()

        cycle = compat.request_cycle(wrapped_receive)
        self.seen["found"] = cycle is not None
        acknowledging = compat.QuickAck()(wrapped_receive)
        self.seen["wrapped"] = acknowledging is not wrapped_receive
        first = await acknowledging()
        sock = cycle.transport.get_extra_info("socket") if cycle is not None else None
        self.seen["quickack"] = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) if sock else None
        self.first_part.set()
        body = first["body"]
        while first.get("more_body"):
            first = await receive()
            body += first["body"]
        payload = json.dumps(self.seen | {"body": body.decode()}).encode()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(payload))]}
        )
        await send({"type": "http.response.body", "body": payload})


@pytest.fixture
def uvicorn_server() -> Iterator[tuple[int, _Probe]]:
    probe = _Probe()
    with uvicorn_serving(probe) as port:
        yield port, probe


@pytest.mark.timeout(30)
def test_quickack_reaches_uvicorn_s_socket_while_a_body_is_still_arriving(uvicorn_server: tuple[int, _Probe]) -> None:
    port, probe = uvicorn_server
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nhello")
        assert probe.first_part.wait(timeout=20)  # the app has read the first half: now the rest
        client.sendall(b"world")
        answer = b""
        while not answer.endswith(b"}"):
            answer += client.recv(4096)
    seen = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert seen == {"found": True, "wrapped": True, "quickack": 1, "body": "helloworld"}


def test_off_leaves_receive_alone() -> None:
    async def receive() -> Message:
        return {"type": "http.disconnect"}

    assert compat.QuickAck(enabled=False)(receive) is receive
