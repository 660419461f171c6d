"""One pure-ASGI guard in front of every route: what a request may cost a worker, and who may ask.

Pure ASGI (not BaseHTTPMiddleware), so that nothing is paid before it is checked:
- the token (fails closed), then the content type and the body's length from the headers alone;
- a model request's body is read whole by the guard, within TINYSERVE_BODY_TIMEOUT (408) and within the
  worker's budget of body bytes in flight, chunked or not (429); only then does it take a concurrency
  slot, so that slow senders hold no slot; its answer must begin within TINYSERVE_REQUEST_TIMEOUT (504);
- every answer leaves with the security headers, relative redirects, the error envelope (echoes of the
  input cut), and one count in `tinyserve_http_requests_total` by route template, never by raw path;
- `/metrics` is served here, behind its token; HEAD is answered wherever GET is.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from service import metrics, openapi
from service.admission import Admission
from service.compat import connections
from service.errors import envelope, normalise
from service.lifecycle import Lifecycle
from service.settings import Settings, auth_summary

if TYPE_CHECKING:
    from service.dataplane import DataPlane
from service.compat import QuickAck

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Refusal = tuple[int, bytes, list[tuple[bytes, bytes]]]

logger = logging.getLogger("bentoml.tinyserve")

# POST routes that run a model, and the content types each takes ("" = no Content-Type header)
PREDICT_ROUTE = re.compile(r"^/v1/[^/]+/predict$")
INFER_ROUTE = re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$")
UPLOAD_ROUTE = re.compile(r"^/v1/[^/]+/predict-image$")
REPOSITORY_ROUTE = re.compile(r"^/v2/repository/")  # Triton's repository calls: a small JSON body, any content type
REPOSITORY_BODY_BYTES = 64 * 1024  # a version policy; read whole within the body timeout, as a model request's
# What stays open when TINYSERVE_API_TOKEN is set: the probes an orchestrator calls, and the pages' static
# files: the playground's and the API docs' (code and the OpenAPI document, no data: both pages ask for the
# token, and Authorize needs the document). Everything else, model cards and metadata included, needs the
# token; /metrics needs the metrics token, else the API token.
OPEN_PATHS = frozenset({"/livez", "/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/", "/docs.json"})
OPEN_PREFIXES = ("/ui", "/static_content")
COMPRESSED = ("identity", "gzip", "deflate")  # V2 inference bodies as Triton's clients compress them
ACCEPTS = {
    PREDICT_ROUTE: ("application/json", ""),
    INFER_ROUTE: ("application/json", "application/octet-stream", ""),  # Triton's client sends none
    UPLOAD_ROUTE: ("multipart/form-data",),
}
ECHO_CHARS = 64  # of a header value quoted back in an error sentence
MAX_ERROR_BYTES = 4096  # an error body larger than this has its echoes of the input cut (a 5 MB field name)
RFC_SPACE = b" \t"  # optional white space around a field value (RFC 9110, 5.5)


def _is_open(path: str) -> bool:
    return path in OPEN_PATHS or any(path == p or path.startswith(p + "/") for p in OPEN_PREFIXES)


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


def _short(text: str) -> str:
    """A client's value, quoted back at most ECHO_CHARS long."""
    return repr(text) if len(text) <= ECHO_CHARS else f"{text[:ECHO_CHARS]!r}... ({len(text)} characters)"


def _bearer(scope: Scope, token: bytes) -> bool:
    given = _header(scope, b"authorization") or b""
    scheme, _, value = given.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(value.strip(), token)


class GuardMiddleware:
    """Every request passes here first; `settings` (else the environment's) sets every limit."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        lifecycle: Lifecycle,
        settings: Settings | None = None,
        max_body_bytes: int | None = None,
        max_concurrency: int | None = None,
        api_token: str | None = None,
        quick_ack: bool | None = None,
        plane: Callable[[], DataPlane] | None = None,  # the served models, for the per-model OpenAPI paths
        admission: Admission | None = None,  # the worker's slots, shared with its gRPC door
    ) -> None:
        settings = settings or Settings()
        self.app = app
        self.plane = plane
        self.lifecycle = lifecycle
        self.max_body_bytes = max_body_bytes or settings.max_body_bytes
        self.max_concurrency = max_concurrency or settings.max_concurrency
        self.max_body_bytes_in_flight = max(settings.max_body_bytes_in_flight, self.max_body_bytes)
        self.body_timeout = settings.body_timeout
        self.request_timeout = settings.request_timeout
        self.admission = admission or Admission(self.max_concurrency, lifecycle)
        self.body_bytes = 0  # request body bytes held now: read, or reserved for a Content-Length
        token = api_token or (settings.api_token.get_secret_value() if settings.api_token else None)
        self.token = token.encode() if token else None
        metrics_token = settings.metrics_token.get_secret_value().encode() if settings.metrics_token else None
        self.metrics_token = metrics_token or self.token
        self.quick_ack = QuickAck(enabled=settings.quick_ack if quick_ack is None else quick_ack)
        limits = connections.Limits(
            settings.header_timeout, settings.idle_timeout, settings.max_header_bytes, settings.body_timeout
        )
        logger.info(auth_summary(settings))
        logger.info(connections.install(limits))  # built on the lifespan call: before any connection

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if method == "HEAD":  # answered as GET; uvicorn, which still knows it was HEAD, sends no body
            scope = {**scope, "method": "GET"}
        await self._route(scope, receive, _outgoing(send, method, path, time.perf_counter()), method)

    async def _route(self, scope: Scope, receive: Receive, send: Send, method: str) -> None:
        path = scope["path"]
        if path == "/metrics" and scope["method"] == "GET":
            await self._metrics(scope, send)
            return
        if self.token is not None and not _is_open(path) and not _bearer(scope, self.token):
            await _respond(send, *_unauthorised())
            return
        if scope["method"] == "GET" and path == "/docs.json":
            contracts = {m.name: m.contract for m in self.plane().registry.models()} if self.plane else {}
            await self.app(scope, receive, _rewriting(send, lambda body: openapi.rewrite(body, contracts)))
            return
        if scope["method"] == "GET" and path == "/":
            await _respond(send, 200, openapi.DOCS_PAGE, [], content_type=b"text/html; charset=utf-8")
            return
        if scope["method"] == "POST" and REPOSITORY_ROUTE.match(path):
            await self._repository_call(scope, receive, send)
            return
        accepts = next((types for route, types in ACCEPTS.items() if route.match(path)), None)
        if scope["method"] != "POST" or accepts is None:
            await self.app(scope, receive, _enveloping(send, method, path))
            return
        await self._model_request(scope, receive, send, accepts)

    async def _metrics(self, scope: Scope, send: Send) -> None:
        """Served here, not by BentoML: every worker's series, one scrape at a time, behind a token."""
        if self.metrics_token is not None and not _bearer(scope, self.metrics_token):
            await _respond(send, *_unauthorised())
            return
        body, content_type = await asyncio.get_running_loop().run_in_executor(None, metrics.exposition)
        await _respond(send, 200, body, [], content_type=content_type.encode())

    async def _model_request(self, scope: Scope, receive: Receive, send: Send, accepts: tuple[str, ...]) -> None:
        """Checked from the headers, the body read whole within its deadline, then (only then) a slot."""
        length, refusal = self._refuse(scope, accepts)
        if refusal is None:
            refusal = self._overloaded(length or 0)
        if refusal is not None:
            await _respond(send, *refusal)
            return
        held = [0]  # body bytes this request holds against the worker's budget: as they arrive, not as declared
        try:
            body = await self._read_body(self.quick_ack(receive), send, held)
            if body is None:
                return
            if (refusal := self._overloaded(0)) is not None:
                await _respond(send, *refusal)
                return
            with self.admission.slot():
                await self._answer(scope, _replay(body, receive), _enveloping(send, "POST", scope["path"]), send)
        finally:
            self.body_bytes -= held[0]

    async def _repository_call(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Its body read whole and bounded (REPOSITORY_BODY_BYTES) before the route: it once read any size whole."""
        raw = _header(scope, b"content-length")
        declared = raw.strip(RFC_SPACE) if raw is not None else b""
        if declared.isdigit() and int(declared) > REPOSITORY_BODY_BYTES:
            await _respond(send, 413, envelope(self._too_large(declared.decode(), REPOSITORY_BODY_BYTES)), [])
            return
        if self.body_bytes + REPOSITORY_BODY_BYTES > self.max_body_bytes_in_flight:  # no slot: an operator's call
            metrics.REFUSED.labels(status="429").inc()
            await _respond(send, 429, envelope(self._bytes_busy()), [(b"retry-after", b"1")])
            return
        held = [0]
        try:
            body = await self._read_body(receive, send, held, REPOSITORY_BODY_BYTES)
            if body is not None:
                await self.app(scope, _replay(body, receive), _enveloping(send, "POST", scope["path"]))
        finally:
            self.body_bytes -= held[0]

    def _overloaded(self, more_bytes: int) -> Refusal | None:
        """Excess load becomes a fast 429 (or 503 while shutting down), not a growing queue."""
        if (error := self.admission.refusal()) is not None:
            return error.status, envelope(error.message), [(k.encode(), v.encode()) for k, v in error.headers.items()]
        if self.body_bytes + more_bytes > self.max_body_bytes_in_flight:
            metrics.REFUSED.labels(status="429").inc()
            return 429, envelope(self._bytes_busy()), [(b"retry-after", b"1")]
        return None

    def _bytes_busy(self) -> str:
        return (
            f"server busy: {self.body_bytes} bytes of request bodies in flight, the limit is "
            f"{self.max_body_bytes_in_flight} (TINYSERVE_MAX_BODY_BYTES_IN_FLIGHT); retry after 1 s"
        )

    def _refuse(self, scope: Scope, accepts: tuple[str, ...]) -> tuple[int | None, Refusal | None]:
        """The body's length (None: chunked) and whether its headers alone refuse the request."""
        got = _content_type(scope)
        if got not in accepts:
            expected = " or ".join(a for a in accepts if a)
            return None, (415, envelope(f"unsupported content type {_short(got)}: expected {expected}"), [])
        encoding = (_header(scope, b"content-encoding") or b"identity").decode("latin-1").strip().lower()
        if encoding not in (COMPRESSED if INFER_ROUTE.match(scope["path"]) else ("identity",)):
            message = f"unsupported content encoding {_short(encoding)}: send the body uncompressed"
            return None, (415, envelope(message), [])
        raw = _header(scope, b"content-length")
        if raw is None:
            return None, None
        value = raw.strip(RFC_SPACE)
        if not value.isdigit():
            message = f"invalid Content-Length {_short(raw.decode('latin-1'))}: expected a number of bytes"
            return None, (400, envelope(message), [])
        if int(value) > self.max_body_bytes:
            return None, (413, envelope(self._too_large(value.decode())), [])
        return int(value), None

    def _too_large(self, got: str, limit: int = 0) -> str:
        """413's sentence: past TINYSERVE_MAX_BODY_BYTES, or past `limit` (a repository call's)."""
        if limit:
            return f"request body too large: {got} bytes, the limit for a repository call is {limit}"
        return f"request body too large: {got} bytes, the limit is {self.max_body_bytes} (TINYSERVE_MAX_BODY_BYTES)"

    async def _read_body(self, receive: Receive, send: Send, held: list[int], limit: int = 0) -> bytes | None:
        """The whole body, or None once refused (413, 429, 408) or the client left.

        Its bytes count against the budget as they arrive: a Content-Length reserved up front would let a
        few clients that declare 16 MB and send nothing fill the budget, and every other request get 429.
        """
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.body_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > (limit or self.max_body_bytes):
                        over = f"more than {limit or self.max_body_bytes}"
                        await _respond(send, 413, envelope(self._too_large(over, limit)), [])
                        return None
                    if self.body_bytes + len(chunk) > self.max_body_bytes_in_flight:
                        metrics.REFUSED.labels(status="429").inc()
                        await _respond(send, 429, envelope(self._bytes_busy()), [(b"retry-after", b"1")])
                        return None
                    held[0] += len(chunk)
                    self.body_bytes += len(chunk)
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks)
        except TimeoutError:
            late = f"request body not received within {self.body_timeout:g} s (TINYSERVE_BODY_TIMEOUT)"
            await _respond(send, 408, envelope(late), [])
            return None

    async def _answer(self, scope: Scope, receive: Receive, send: Send, refuse: Send) -> None:
        """Run the route; an answer not begun within TINYSERVE_REQUEST_TIMEOUT is a 504 instead.

        Stuck: cancelled when the time is up. Late (it began after the time, e.g. a decode that held the
        event loop past it): its answer is dropped for the 504, so that the deadline means one thing. One
        timer per request, in this task: no task of its own (it cost a fifth of a small request's CPU).
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        begun = late = False
        try:
            async with asyncio.timeout(self.request_timeout) as deadline:

                async def marking(message: Message) -> None:
                    nonlocal begun, late
                    if not begun:
                        begun = True
                        deadline.reschedule(None)  # begun in time: the answer may take as long as it takes
                        late = loop.time() - started > self.request_timeout
                    if not late:
                        await send(message)

                await self.app(scope, receive, marking)
        except TimeoutError:
            late = True
        if late:
            message = f"no answer within {self.request_timeout:g} s (TINYSERVE_REQUEST_TIMEOUT); it was dropped"
            await _respond(refuse, 504, envelope(message), [])


def _unauthorised() -> Refusal:
    message = "missing or invalid API token: send 'Authorization: Bearer <token>'"
    return 401, envelope(message), [(b"www-authenticate", b"Bearer")]


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body read by the guard, handed on as one message; then the connection's own events."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _relative(location: bytes) -> bytes:
    """A redirect to this server, made relative: never to whatever host the client claimed."""
    parts = urlsplit(location.decode("latin-1"))
    if not parts.scheme and not parts.netloc:
        return location
    return (parts.path or "/").encode("latin-1") + (b"?" + parts.query.encode("latin-1") if parts.query else b"")


def _outgoing(send: Send, method: str, path: str, started: float) -> Send:
    """Every answer: the security headers, relative redirects, and one count by route template."""
    status = 0

    async def wrapped(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            headers = list(message.get("headers", []))
            present = {name.lower() for name, _ in headers}
            headers += [(name, value) for name, value in connections.SECURITY_HEADERS if name not in present]
            if 300 <= status < 400:
                headers = [(k, _relative(v) if k.lower() == b"location" else v) for k, v in headers]
            message = {**message, "headers": headers}
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            metrics.observe_request(path, method, status, time.perf_counter() - started)
        await send(message)

    return wrapped


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
    return _holding(
        send, lambda status: status >= 400, lambda status, body: _capped(normalise(status, body, method, path))
    )


def _capped(body: bytes) -> bytes:
    """An error envelope whose echoes of the input are cut: a refusal never costs more than the request."""
    if len(body) <= MAX_ERROR_BYTES:
        return body
    data = json.loads(body)
    return envelope(_cut(data["error"], 1000), [_cut(item, 200) for item in data.get("detail", [])[:5]])


def _cut(value: Any, chars: int) -> Any:
    if isinstance(value, str) and len(value) > chars:
        return f"{value[:chars]}... ({len(value) - chars} more characters)"
    if isinstance(value, list):
        return [_cut(item, chars) for item in value[:8]]
    if isinstance(value, dict):
        return {_cut(key, chars): _cut(item, chars) for key, item in list(value.items())[:8]}
    return value


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
