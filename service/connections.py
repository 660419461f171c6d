"""Connection limits below the ASGI app: idle and slow-header timeouts, a header size cap, the file limit.

A request reaches the guard (service.middleware) only once its headers are whole, so what happens before
that is uvicorn's, and uvicorn has no header size limit, no header read timeout, and no timeout on a new
connection that never sends a byte (its keep-alive timer starts after a first response). One client could
hold thousands of connections, or feed a worker a 50 MB header, for free.

BentoML builds uvicorn's configuration itself and exposes none of this, so the limits are added to
uvicorn's httptools protocol class, in each worker before its first connection (written for uvicorn
0.54 and httptools 0.9; `install` checks what it hooks and logs once what it could not):

- a connection that waits for a request (new, or kept alive after an answer) closes after
  TINYSERVE_IDLE_TIMEOUT; once a request's first byte came, its headers must be whole within
  TINYSERVE_HEADER_TIMEOUT, else 408 and close;
- more than TINYSERVE_MAX_HEADER_BYTES before the end of the headers: 431 and close (counted as the
  bytes arrive, before httptools joins them: its joining is quadratic in a header's length);
- a client that stops reading its answer for TINYSERVE_BODY_TIMEOUT is dropped: it would hold its request
  (and a concurrency slot) for as long as it liked, its answer buffered in memory;
- what httptools cannot parse gets the error envelope and the security headers, as every other answer
  (uvicorn's own 400 is plain text);
- the soft file limit is raised to the hard one, and a worker that nears it logs so and closes its idle
  connections, so that probes and real clients still get in (a burst faster than the worker accepts
  can still fill it: libuv then accepts and drops the excess; only the higher limit helps there).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import time
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("bentoml.tinyserve")

UVICORN = "0.54"  # the version whose HttpToolsProtocol these hooks were written against
LINGER = 2.0  # seconds a refused connection is still read (and dropped) after its answer
HEADROOM = 0.1  # of the files left for connections: within it, idle connections are closed and it is logged
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


@dataclass
class Limits:
    header_timeout: float
    idle_timeout: float
    max_header_bytes: int
    write_timeout: float = 10.0  # the most a client may stall reading an answer (TINYSERVE_BODY_TIMEOUT)


@dataclass
class _Connection:
    """Where one connection stands between requests."""

    awaiting: bool = True  # waiting for a request's headers (not inside a request's headers-to-end)
    received: int = 0  # bytes of the awaited request so far, as they arrive
    header_bytes: int = 0  # of its request line and headers, as httptools parses them
    refused: bool = False
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    write_timer: asyncio.TimerHandle | None = field(default=None, repr=False)  # while the client reads nothing


LIMITS = Limits(header_timeout=10.0, idle_timeout=5.0, max_header_bytes=32 * 1024)
_last_warning = _last_sweep = 0.0
_files_at_start = 0  # files the worker holds besides its connections (libraries, sockets, logs)


def install(limits: Limits) -> str:
    """Hook uvicorn's httptools protocol (once per process; later calls only change the limits)."""
    global LIMITS, _files_at_start
    LIMITS = limits
    file_limit = raise_file_limit()
    with contextlib.suppress(OSError):
        _files_at_start = len(os.listdir("/proc/self/fd"))  # Linux; elsewhere connections alone are counted
    try:
        import uvicorn
        from uvicorn.protocols.http import auto, httptools_impl
    except ImportError:
        return f"connections: uvicorn's httptools protocol is not here; header and idle limits are off; {file_limit}"
    protocol: Any = httptools_impl.HttpToolsProtocol
    if auto.AutoHTTPProtocol is not protocol:
        return f"connections: uvicorn does not use httptools here; header and idle limits are off; {file_limit}"
    if not getattr(protocol, "tinyserve", False):
        if not uvicorn.__version__.startswith(UVICORN):
            logger.warning("connections: written for uvicorn %s, this is %s", UVICORN, uvicorn.__version__)
        _hook(protocol)
    return (
        f"connections: idle {limits.idle_timeout:g} s, headers within {limits.header_timeout:g} s and "
        f"{limits.max_header_bytes} bytes, reading stalled at most {limits.write_timeout:g} s; {file_limit}"
    )


def raise_file_limit() -> str:
    """Each connection is a file: the soft limit (often 1,024) up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # an unlimited hard limit: keep the soft one
            return f"file limit {soft} (the hard limit {hard} could not be taken)"
        return f"file limit {hard} (raised from {soft})"
    return f"file limit {soft}"


def _hook(protocol: Any) -> None:
    connection_made, connection_lost = protocol.connection_made, protocol.connection_lost
    data_received, on_headers_complete = protocol.data_received, protocol.on_headers_complete
    on_message_complete, on_response_complete = protocol.on_message_complete, protocol.on_response_complete
    on_url, on_header = protocol.on_url, protocol.on_header
    pause_writing, resume_writing = protocol.pause_writing, protocol.resume_writing

    def made(self: Any, transport: Any) -> None:
        connection_made(self, transport)
        self.tinyserve = _Connection()
        _arm(self, LIMITS.idle_timeout)
        _check_file_limit(self)

    def lost(self: Any, exc: Exception | None) -> None:
        _disarm(self)
        _resumed(self)
        connection_lost(self, exc)

    def paused(self: Any) -> None:
        """The client stopped reading (its window and our buffer are full): it has write_timeout to go on."""
        pause_writing(self)
        self.tinyserve.write_timer = self.loop.call_later(LIMITS.write_timeout, self.transport.abort)

    def resumed(self: Any) -> None:
        _resumed(self)
        resume_writing(self)

    def received(self: Any, data: bytes) -> None:
        state: _Connection = self.tinyserve
        if state.refused:
            return
        if state.awaiting:
            if state.received == 0:
                _arm(self, LIMITS.header_timeout)  # the request began: its headers now have a deadline
            state.received += len(data)
        data_received(self, data)
        if state.awaiting and state.received > LIMITS.max_header_bytes and not state.refused:
            _refuse(self, 431, _too_large())

    def url(self: Any, part: bytes) -> None:
        _count_header(self, len(part))
        on_url(self, part)

    def header(self: Any, name: bytes, value: bytes) -> None:
        _count_header(self, len(name) + len(value) + 4)
        on_header(self, name, value)

    def headers_complete(self: Any) -> None:
        self.tinyserve.awaiting = False
        _disarm(self)
        on_headers_complete(self)

    def message_complete(self: Any) -> None:
        on_message_complete(self)
        old = self.tinyserve  # what comes next is a new request; the timers run on
        self.tinyserve = _Connection(timer=old.timer, write_timer=old.write_timer)

    def response_complete(self: Any) -> None:
        on_response_complete(self)
        if self.cycle is None or self.cycle.response_complete:  # no pipelined request started instead
            _arm(self, LIMITS.idle_timeout)

    def bad_request(self: Any, msg: str) -> None:
        if not self.tinyserve.refused:  # a refusal of ours already answered and closed
            _refuse(self, 400, "invalid HTTP/1.1 request: its request line, headers or framing break the protocol")

    protocol.connection_made, protocol.connection_lost = made, lost
    protocol.data_received, protocol.on_headers_complete = received, headers_complete
    protocol.on_message_complete, protocol.on_response_complete = message_complete, response_complete
    protocol.send_400_response = bad_request
    protocol.on_url, protocol.on_header = url, header
    protocol.pause_writing, protocol.resume_writing = paused, resumed
    protocol.tinyserve = True


class _Refused(Exception):
    """Raised in a parser callback to stop httptools: the refusal is already answered."""


def _count_header(protocol: Any, size: int) -> None:
    """Headers that arrived whole in one read are counted here (the arrival count sees only a read's end)."""
    state: _Connection = protocol.tinyserve
    state.header_bytes += size
    if state.header_bytes > LIMITS.max_header_bytes:
        _refuse(protocol, 431, _too_large())
        raise _Refused


def _resumed(protocol: Any) -> None:
    state: _Connection | None = getattr(protocol, "tinyserve", None)
    if state is not None and state.write_timer is not None:
        state.write_timer.cancel()
        state.write_timer = None


def _too_large() -> str:
    return f"request headers too large: more than {LIMITS.max_header_bytes} bytes (TINYSERVE_MAX_HEADER_BYTES)"


def _arm(protocol: Any, seconds: float) -> None:
    _disarm(protocol)
    protocol.tinyserve.timer = protocol.loop.call_later(seconds, _expire, protocol)


def _disarm(protocol: Any) -> None:
    state: _Connection | None = getattr(protocol, "tinyserve", None)
    if state is not None and state.timer is not None:
        state.timer.cancel()
        state.timer = None


def _expire(protocol: Any) -> None:
    state: _Connection = protocol.tinyserve
    state.timer = None
    if protocol.transport.is_closing():
        return
    if not state.awaiting and protocol.cycle is not None and not protocol.cycle.response_complete:
        return  # a request runs: the guard's body and answer deadlines are its limits
    if state.awaiting and state.received > 0:
        late = f"request headers not complete within {LIMITS.header_timeout:g} s (TINYSERVE_HEADER_TIMEOUT)"
        _refuse(protocol, 408, late)
        return
    protocol.transport.close()  # idle: nothing was asked, nothing to answer


def _refuse(protocol: Any, status: int, message: str) -> None:
    """Answer in the error envelope and close, without the app (its request never became one)."""
    state: _Connection = protocol.tinyserve
    state.refused = True
    _disarm(protocol)
    body = json.dumps({"error": message, "detail": []}).encode()
    reason = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
    head = [b"HTTP/1.1 %d %s" % (status, reason), b"content-type: application/json"]
    head += [b"content-length: %d" % len(body), b"connection: close"]
    head += [name + b": " + value for name, value in SECURITY_HEADERS]
    protocol.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
    if not protocol.transport.can_write_eof():
        protocol.transport.close()
        return
    # The answer, then our end closed (FIN), while what the client still sends is read and dropped for a
    # moment: closed at once with its bytes unread, the kernel would reset it, and the answer be lost.
    protocol.transport.write_eof()
    state.timer = protocol.loop.call_later(LINGER, protocol.transport.close)


def _check_file_limit(protocol: Any) -> None:
    """Near the file limit: say so (at most every 10 s), and close the connections that only wait."""
    global _last_warning, _last_sweep
    open_now = len(protocol.connections)
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    room = soft - _files_at_start
    if open_now < room - max(16, HEADROOM * room) or time.monotonic() - _last_sweep < 1:
        return  # at most one sweep a second: each walks every connection
    _last_sweep = time.monotonic()
    idle = [
        other
        for other in list(protocol.connections)
        if other is not protocol and getattr(other, "tinyserve", None) is not None
        if other.tinyserve.awaiting and other.tinyserve.received == 0
        if other.cycle is None or other.cycle.response_complete
    ]
    for other in idle:
        other.transport.close()
    if time.monotonic() - _last_warning > 10:
        _last_warning = time.monotonic()
        logger.warning(
            "connections: %d open in this worker, near the file limit %d; closed %d idle ones "
            "(new connections are refused at the limit)",
            open_now,
            soft,
            len(idle),
        )
