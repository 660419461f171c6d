"""TCP_QUICKACK on the request's socket: found through wrapping middlewares, harmless once the peer is gone."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvloop

from service.tcp import QuickAck, request_cycle

Message = MutableMapping[str, Any]


class Cycle:
    """Shaped like uvicorn's request cycle: `receive` is a method of an object holding the transport."""

    def __init__(self, transport: asyncio.BaseTransport, *, more_body: bool = True) -> None:
        self.transport = transport
        self.more_body = more_body  # uvicorn: False once the whole body has arrived

    async def receive(self) -> Message:
        return {"type": "http.disconnect"}


def _wrapped(receive: Callable[[], Awaitable[Message]]) -> Callable[[], Awaitable[Message]]:
    async def wrapped_receive() -> Message:  # how BentoML's metrics middleware wraps it
        return await receive()

    return wrapped_receive


async def _with_server_transport(check: Callable[[asyncio.BaseTransport], Awaitable[None]]) -> None:
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await check(writer.transport)
            done.set_result(None)
        except BaseException as e:
            done.set_exception(e)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    await done
    writer.close()
    server.close()


def test_the_socket_is_found_through_wrapping_middlewares() -> None:
    async def check(transport: asyncio.BaseTransport) -> None:
        cycle = Cycle(transport)
        assert request_cycle(_wrapped(_wrapped(cycle.receive))) is cycle
        sock = transport.get_extra_info("socket")
        assert await QuickAck()(Cycle(transport).receive)() == {"type": "http.disconnect"}
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) == 1

    uvloop.run(_with_server_transport(check))


def test_a_closed_connection_is_left_to_receive_to_report() -> None:
    async def check(transport: asyncio.BaseTransport) -> None:
        receive = QuickAck()(Cycle(transport).receive)
        transport.abort()
        await asyncio.sleep(0.01)
        assert await receive() == {"type": "http.disconnect"}  # no exception: the setsockopt failed quietly

    uvloop.run(_with_server_transport(check))


def test_off_leaves_receive_alone() -> None:
    async def check(transport: asyncio.BaseTransport) -> None:
        receive = Cycle(transport).receive
        assert QuickAck(enabled=False)(receive) is receive

    uvloop.run(_with_server_transport(check))


def test_a_body_already_whole_is_left_alone() -> None:
    """Small requests arrive whole: no system call for them (it cost 6% of single-image requests/s)."""

    async def check(transport: asyncio.BaseTransport) -> None:
        receive = Cycle(transport, more_body=False).receive
        assert QuickAck()(receive) is receive

    uvloop.run(_with_server_transport(check))
