"""The hot routes served straight from the guard: typed predict and V2 infer, without a router in between.

Inside BentoML's app a request to a mounted FastAPI app passes BentoML's router, the mount, FastAPI's own
middleware stack and its dependency machinery: measured in process, ~0.2 ms of CPU per request, more than
ONNX Runtime takes for one LeNet image. These two routes need none of it: after the guard (token, content
type, size, overload) this middleware reads the body and calls the data plane. Every other path goes on
to BentoML's app. The same handlers back the documented FastAPI routes (service.v1, service.v2).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from service import v2
from service.dataplane import DataPlane
from service.errors import ServingError, clip, envelope
from service.timing import Timing

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PREDICT = re.compile(r"^/v1/([^/]+)/predict$")
INFER = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")


class FastPath:
    def __init__(
        self,
        app: ASGIApp,
        *,
        plane: Callable[[], DataPlane],
        server_timing: bool = False,
        max_body_bytes: int = 16 * 1024 * 1024,  # what a compressed body may inflate to (TINYSERVE_MAX_BODY_BYTES)
    ) -> None:
        self.app = app
        self.plane = plane
        self.server_timing = server_timing
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        predict = PREDICT.match(path)
        infer = None if predict else INFER.match(path)
        if predict is None and infer is None:
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":
            message = envelope(f"method {scope['method']} is not allowed on {clip(path)}")
            await respond(send, 405, message, {"content-type": "application/json", "allow": "POST"})
            return
        try:
            plane = self.plane()
            if predict is not None:
                content, headers = await self._predict(plane, predict.group(1), receive)
            else:
                assert infer is not None
                name, version = infer.group(1), infer.group(2)
                plane.model(name, version)  # an unknown model is refused before its body is read
                request_headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
                body = await read_body(receive)
                content, headers = await v2.answer(
                    plane, name, version, body, request_headers, self.server_timing, self.max_body_bytes
                )
        except ServingError as e:
            await respond(send, e.status, envelope(e.message), {"content-type": "application/json"} | e.headers)
            return
        await respond(send, 200, content, headers)

    async def _predict(self, plane: DataPlane, name: str, receive: Receive) -> tuple[bytes, dict[str, str]]:
        timing = Timing()
        answer = await plane.predict(name, await read_body(receive), timing)
        headers = {"content-type": "application/json"}
        if self.server_timing:
            headers["server-timing"] = timing.header()
        return orjson.dumps(answer), headers


async def read_body(receive: Receive) -> bytes:
    """The request body (the guard has already bounded its size)."""
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body", False):
        return bytes(body)
    chunks = [body]
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
    return b"".join(chunks)


async def respond(send: Send, status: int, body: bytes, headers: dict[str, str]) -> None:
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    raw.append((b"content-length", b"%d" % len(body)))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
