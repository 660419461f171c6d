"""BentoML's own floor: a service that does no work, served as tinyserve is served.

    bentoml serve service:Floor --port 3000   (from this folder; PEER_WORKERS workers, default 2)

What any service on BentoML 1.4 pays before it does anything: `bentoml serve`'s processes (the server, its
supervisor, a worker a core), uvicorn and the Starlette app BentoML builds, with its own middleware (errors,
tracing, the traffic timeout) in front of the service's. An ASGI middleware, added as tinyserve adds its
hot path, answers POST /predict at once with a fixed body (the body read, not parsed): no model, no checks.
tinyserve's bars against the frameworks can be met only where this floor meets them. Runs in tinyserve's
own environment (the same BentoML), the access log off, tracing as tinyserve runs it (excluded URLs).
"""

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import bentoml

ANSWER = b'{"logits": [[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]}'
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class Answer:
    """POST /predict: read the body, answer the fixed bytes; everything else goes on to BentoML's app."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/predict":
            await self.app(scope, receive, send)
            return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(ANSWER))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": ANSWER})


@bentoml.service(
    workers=int(os.environ.get("PEER_WORKERS", "2")),
    metrics={"enabled": False},
    logging={"access": {"enabled": False}},
    tracing={"excluded_urls": [".*"]},
)
class Floor:
    @bentoml.api
    def ping(self) -> str:
        return "pong"


Floor.add_asgi_middleware(Answer)  # type: ignore[attr-defined]
