"""A real HTTP server in front of a tinyserve server, for the client's tests: it fails, refuses or holds
inference requests as a test asks, and forwards the rest."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx


class FlakyProxy(BaseHTTPRequestHandler):
    """Fails the first `failures` inference requests with `status`, then forwards to the real server."""

    upstream = ""
    failures = 0
    status = 503
    poison: bytes | None = None  # a request whose body holds these bytes is refused with 400
    hold_after: int | None = None  # inference requests past this many wait until `released` is set
    held = threading.Event()  # set when a request is first held
    released = threading.Event()
    forwarded = 0
    lock = threading.Lock()  # the handlers run on threads of their own
    seen: list[int] = []  # noqa: RUF012  (class-level state of a test double)

    def do_GET(self) -> None:
        self._forward()

    def do_POST(self) -> None:
        length = int(self.headers["content-length"])
        content = self.rfile.read(length)
        poisoned = FlakyProxy.poison is not None and FlakyProxy.poison in content
        if "/infer" in self.path and (FlakyProxy.failures > 0 or poisoned):
            FlakyProxy.failures -= 0 if poisoned else 1
            body = json.dumps({"error": "busy", "detail": []}).encode()
            status = 400 if poisoned else FlakyProxy.status
            self.send_response(status)
            self.send_header("content-length", str(len(body)))
            self.send_header("retry-after", "0")
            self.end_headers()
            self.wfile.write(body)
            FlakyProxy.seen.append(status)
            return
        if "/infer" in self.path and FlakyProxy.hold_after is not None:
            with FlakyProxy.lock:
                FlakyProxy.forwarded += 1
                hold = FlakyProxy.forwarded > FlakyProxy.hold_after
            if hold:
                FlakyProxy.held.set()
                FlakyProxy.released.wait(timeout=120)
        self._forward(content)

    def _forward(self, body: bytes | None = None) -> None:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        r = httpx.request(self.command, self.upstream + self.path, content=body, headers=headers, timeout=30)
        self.send_response(r.status_code)
        for key in ("content-type", "inference-header-content-length"):
            if key in r.headers:
                self.send_header(key, r.headers[key])
        self.send_header("content-length", str(len(r.content)))
        self.end_headers()
        with contextlib.suppress(OSError):  # a client that is gone (killed) no longer reads its answer
            self.wfile.write(r.content)
        if self.command == "POST":
            FlakyProxy.seen.append(r.status_code)

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def flaky_proxy(upstream: str) -> Iterator[str]:
    """The proxy in front of `upstream`, in its initial state (forwards everything), on a free port."""
    FlakyProxy.upstream, FlakyProxy.seen, FlakyProxy.poison, FlakyProxy.failures = upstream, [], None, 0
    FlakyProxy.hold_after, FlakyProxy.forwarded = None, 0
    FlakyProxy.held.clear()
    FlakyProxy.released.clear()
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), FlakyProxy)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{proxy.server_address[1]}"
    finally:
        FlakyProxy.released.set()  # nothing stays held past the test
        proxy.shutdown()
