"""One pure-ASGI guard in front of every route: token, content type, body size, overload, error envelope.

Pure ASGI (not BaseHTTPMiddleware) so that a body over the limit is refused before it is read whole,
with a Content-Length or without one (chunked), and so that nothing is buffered on the happy path.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from service import metrics, openapi
from service.errors import envelope, normalise

if TYPE_CHECKING:
    from service.dataplane import DataPlane
from service.compat import QuickAck
from service.lifecycle import Lifecycle

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# POST routes that run a model, and the content types each takes ("" = no Content-Type header)
PREDICT_ROUTE = re.compile(r"^/v1/[^/]+/predict$")
INFER_ROUTE = re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$")
UPLOAD_ROUTE = re.compile(r"^/v1/[^/]+/predict-image$")
# What stays open when TINYSERVE_API_TOKEN is set: the probes an orchestrator calls, the metrics a scraper
# reads, and the browser page's static files (code, no data: the page asks for the token). Everything else,
# model cards and metadata included, needs the token.
OPEN_PATHS = frozenset({"/livez", "/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"})
OPEN_PREFIX = "/ui"
COMPRESSED = ("identity", "gzip", "deflate")  # V2 inference bodies as Triton's clients compress them
ACCEPTS = {
    PREDICT_ROUTE: ("application/json", ""),
    INFER_ROUTE: ("application/json", "application/octet-stream", ""),  # Triton's client sends none
    UPLOAD_ROUTE: ("multipart/form-data",),
}


def _is_open(path: str) -> bool:
    return path in OPEN_PATHS or path == OPEN_PREFIX or path.startswith(OPEN_PREFIX + "/")


def _content_type(scope: Scope) -> str:
    for key, value in scope["headers"]:
        if key == b"content-type":
            return str(value.decode("latin-1").split(";")[0].strip().lower())
    return ""


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


class GuardMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        max_concurrency: int,
        lifecycle: Lifecycle,
        api_token: str | None = None,
        quick_ack: bool = True,
        plane: Callable[[], DataPlane] | None = None,  # the served models, for the per-model OpenAPI paths
    ) -> None:
        self.app = app
        self.plane = plane
        self.max_body_bytes = max_body_bytes
        self.max_concurrency = max_concurrency
        self.lifecycle = lifecycle
        self.in_flight = 0
        self.token = api_token.encode() if api_token else None
        self.quick_ack = QuickAck(enabled=quick_ack)  # a Nagle client's large body must not wait 40 ms for our ACK

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if self.token is not None and not _is_open(path) and not self._authorised(scope):
            message = "missing or invalid API token: send 'Authorization: Bearer <token>'"
            await _respond(send, 401, envelope(message), [(b"www-authenticate", b"Bearer")])
            return
        accepts = next((types for route, types in ACCEPTS.items() if route.match(path)), None)
        if method == "GET" and path == "/docs.json":
            contracts = {m.name: m.contract for m in self.plane().registry.models()} if self.plane else {}
            await self.app(scope, receive, _rewriting(send, lambda body: openapi.rewrite(body, contracts)))
            return
        if method in ("GET", "HEAD") and path == "/":
            await _respond(send, 200, openapi.DOCS_PAGE, [], content_type=b"text/html; charset=utf-8")
            return
        if method != "POST" or accepts is None:
            await self.app(scope, receive, _enveloping(send, method, path))
            return
        refusal = self._refuse(scope, accepts)
        if refusal is None and (refusal := self._overloaded()) is not None:
            metrics.REFUSED.labels(status=str(refusal[0])).inc()
        if refusal is not None:
            await _respond(send, *refusal)
            return
        self.in_flight += 1
        try:
            limited = await self._limited(scope, self.quick_ack(receive), send)
            if limited is not None:
                await self.app(scope, limited, _enveloping(send, method, path))
        finally:
            self.in_flight -= 1

    def _overloaded(self) -> tuple[int, bytes, list[tuple[bytes, bytes]]] | None:
        """Excess load becomes a fast 429 (or 503 while shutting down), not a growing queue."""
        if self.lifecycle.draining:
            return 503, envelope("the server is shutting down; send the request to another instance"), []
        if self.in_flight >= self.max_concurrency:
            message = (
                f"server busy: {self.in_flight} requests in flight, the limit is {self.max_concurrency} "
                "(TINYSERVE_MAX_CONCURRENCY); retry after 1 s"
            )
            return 429, envelope(message), [(b"retry-after", b"1")]
        return None

    def _refuse(self, scope: Scope, accepts: tuple[str, ...]) -> tuple[int, bytes, list[tuple[bytes, bytes]]] | None:
        got = _content_type(scope)
        if got not in accepts:
            expected = " or ".join(a for a in accepts if a)
            return 415, envelope(f"unsupported content type {got!r}: expected {expected}"), []
        encoding = (_header(scope, b"content-encoding") or b"identity").decode("latin-1").strip().lower()
        if encoding not in (COMPRESSED if INFER_ROUTE.match(scope["path"]) else ("identity",)):
            return 415, envelope(f"unsupported content encoding {encoding!r}: send the body uncompressed"), []
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return 413, envelope(self._too_large(length.decode("latin-1"))), []
        return None

    def _authorised(self, scope: Scope) -> bool:
        given = _header(scope, b"authorization") or b""
        scheme, _, token = given.partition(b" ")
        return scheme.lower() == b"bearer" and self.token is not None and hmac.compare_digest(token.strip(), self.token)

    def _too_large(self, got: str) -> str:
        return f"request body too large: {got} bytes, the limit is {self.max_body_bytes} (TINYSERVE_MAX_BODY_BYTES)"

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """With a Content-Length within the limit, stream through; without one, read and count first."""
        if _header(scope, b"content-length") is not None:
            return receive
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                await _respond(send, 413, envelope(self._too_large(f"more than {self.max_body_bytes}")), [])
                return None
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay


def _holding(send: Send, hold: Callable[[int], bool], rewrite: Callable[[int, bytes], bytes]) -> Send:
    """Responses whose status `hold` picks are held whole, rewritten, and sent as JSON with a new length."""
    held: Message | None = None
    chunks: list[bytes] = []

    async def wrapped(message: Message) -> None:
        nonlocal held
        if message["type"] == "http.response.start" and hold(message["status"]):
            held = message
            return
        if held is None or message["type"] != "http.response.body":
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = rewrite(held["status"], b"".join(chunks))
        headers = [(k, v) for k, v in held["headers"] if k not in (b"content-length", b"content-type")]
        held["headers"] = [*headers, (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send(held)
        await send({"type": "http.response.body", "body": body})

    return wrapped


def _rewriting(send: Send, rewrite: Callable[[bytes], bytes]) -> Send:
    """A successful response, rewritten (the OpenAPI document: small, rarely asked)."""
    return _holding(send, lambda status: status == 200, lambda _, body: rewrite(body))


def _enveloping(send: Send, method: str, path: str) -> Send:
    """Error responses (>= 400), rewritten into the one envelope."""
    return _holding(send, lambda status: status >= 400, lambda status, body: normalise(status, body, method, path))


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    content_type: bytes = b"application/json",
) -> None:
    closing = [(b"connection", b"close")] if status >= 400 else []  # a refused body may be left unread
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *closing,
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
