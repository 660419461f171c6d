"""`make attack`: issue 21's catalogue of cheap attacks, replayed against a running server; a table of what held.

    .venv/bin/python -m benchmarks.attack [--url http://127.0.0.1:3000] [--token T] [--metrics-token M] [--pid P]

Each attack is a function of the target that returns what it saw and whether the defence held; the
tests (tests/test_attacks.py) run the same functions against their own servers and assert exactly what
came back. `--pid` (the `bentoml serve` process) adds the workers' memory and restarts to the table.
Exits 1 when any attack got through.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import select
import socket
import struct
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import psutil
from PIL import Image, ImageDraw

SECURITY_HEADERS = {"x-content-type-options": "nosniff", "referrer-policy": "no-referrer", "x-frame-options": "DENY"}


@dataclass
class Target:
    url: str
    token: str | None = None
    metrics_token: str | None = None
    pid: int | None = None  # the `bentoml serve` process: its workers' memory and restarts

    @property
    def address(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        return parts.hostname or "127.0.0.1", parts.port or 80

    def headers(self, token: str | None = None) -> dict[str, str]:
        token = token or self.token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers(), timeout=60)

    def workers(self) -> list[psutil.Process]:
        return psutil.Process(self.pid).children(recursive=True) if self.pid else []

    def rss(self) -> int:
        return sum(p.memory_info().rss for p in self.workers())


@dataclass
class Outcome:
    name: str
    expected: str
    got: str
    held: bool
    seen: Any = field(default=None, repr=False)  # what the tests assert on


# --- building blocks ------------------------------------------------------------------------------------


def connect(target: Target) -> socket.socket:
    sock = socket.create_connection(target.address, timeout=60)  # a safety net: every read waits for the server
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (b"" if it closed without a word)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def status_of(raw: bytes) -> int | None:
    match = re.match(rb"HTTP/1\.[01] (\d{3})", raw)
    return int(match.group(1)) if match else None


def body_of(raw: bytes) -> Any:
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])


def request_head(target: Target, method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {target.address[0]}"]
    lines += [f"{k}: {v}" for k, v in {**target.headers(), **headers}.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def series(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height and that holds no pixel data at all (45 bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose header claims width x height: a real 64x64 image with its frame size rewritten."""
    buffer = io.BytesIO()
    Image.new("L", (64, 64), 255).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def photo(width: int, height: int) -> bytes:
    """A phone-sized JPEG of a drawn zero: dark ring on white paper."""
    image = Image.new("L", (width, height), 255)
    side = min(width, height)
    box = (width // 2 - side // 4, height // 2 - side // 3, width // 2 + side // 4, height // 2 + side // 3)
    ImageDraw.Draw(image).ellipse(box, outline=0, width=max(side // 20, 1))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def noise_png(width: int, height: int, seed: int = 0) -> bytes:
    """A PNG that costs its whole size to decode (noise does not compress), with a white border."""
    pixels = (np.random.default_rng(seed).random((height, width)) * 255).astype(np.uint8)
    pixels[: height // 10], pixels[-height // 10 :] = 255, 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def upload(client: httpx.Client, data: bytes, name: str = "x.png") -> httpx.Response:
    return client.post("/v1/lenet/predict-image", files={"image": (name, data, "application/octet-stream")})


# --- the catalogue ----------------------------------------------------------------------------------------


def metric_series(target: Target, paths: int = 2000) -> Outcome:
    """Distinct unknown paths, with and without a token: /metrics must not grow a series for any of them."""
    with target.client() as client, httpx.Client(base_url=target.url, timeout=60) as anonymous:
        scrape = target.headers(target.metrics_token)
        for warm in (client, anonymous):  # the one "other" series of each status exists from here on
            warm.get("/nope-warm")
            warm.post("/nope-warm", content=b"{}")
        before = client.get("/metrics", headers=scrape).text
        for i in range(paths):
            (client if i % 2 else anonymous).request("GET" if i % 3 else "POST", f"/attack-{i}/x{i}")
        after = client.get("/metrics", headers=scrape).text
    grown = series(after) - series(before)
    leaked = "attack-" in after
    return Outcome(
        "metric series per raw path",
        "0 new series",
        f"{grown} new series after {paths} unknown paths" + ("; a raw path is a label" if leaked else ""),
        grown == 0 and not leaked,
        (series(before), series(after), leaked),
    )


def png_bomb(target: Target) -> Outcome:
    with target.client() as client:
        r = upload(client, png_header(30000, 30000))
    return Outcome("30000x30000 PNG header", "413 naming the cap", f"{r.status_code}", r.status_code == 413, r)


def jpeg_header_bomb(target: Target, uploads: int = 6) -> Outcome:
    """Tiny JPEGs whose headers claim 8000x8000: decoded at 1/8 (draft), refused as truncated."""
    before = target.rss()
    with target.client() as client:
        answers = [upload(client, jpeg_claiming(8000, 8000), "x.jpg") for _ in range(uploads)]
    grown = (target.rss() - before) / 2**20
    statuses = Counter(r.status_code for r in answers)
    held = set(statuses) <= {200, 400} and grown < 200  # libjpeg fills in what is missing, or it is refused
    got = f"{dict(statuses)}" + (f", workers +{grown:.0f} MiB" if target.pid else "")
    return Outcome(f"{uploads} JPEGs of 870 bytes claiming 8000x8000", "answered, < 200 MiB", got, held, answers)


def big_photo(target: Target) -> Outcome:
    """A 48-megapixel phone photo: decoded at reduced size, answered."""
    before = target.rss()
    with target.client() as client:
        r = upload(client, photo(8000, 6000), "photo.jpg")
    grown = (target.rss() - before) / 2**20
    got = f"{r.status_code} label {r.json().get('label')}" + (f", workers +{grown:.0f} MiB" if target.pid else "")
    return Outcome("48-megapixel JPEG photo", "200, < 200 MiB", got, r.status_code == 200 and grown < 200, r)


def slow_headers(target: Target, connections: int = 200) -> Outcome:
    """Connections that send half a request line and headers, then nothing."""
    with ExitStack() as stack:
        socks = [stack.enter_context(closing(connect(target))) for _ in range(connections)]
        for sock in socks:
            sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        answers = Counter(status_of(read_until_closed(sock)) for sock in socks)
    held = answers == Counter({408: connections})
    return Outcome(f"{connections} slow-header connections", "each 408 and closed", f"{dict(answers)}", held, answers)


def idle_connections(target: Target, connections: int = 500) -> Outcome:
    """Connections that never send a byte: the server must close each (no answer: nothing was asked)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(closing(connect(target))) for _ in range(connections)]
        closed = sum(1 for sock in socks if read_until_closed(sock) == b"")
    got = f"{closed} of {connections} closed by the server"
    return Outcome(f"{connections} idle connections", "all closed", got, closed == connections, closed)


def huge_header(target: Target, size: int = 40 * 2**20) -> Outcome:
    """One header of `size` bytes, sent as a client that watches for an answer would: refused with 431 once
    past the limit, before the rest is sent (the server reads and drops what still comes for a moment)."""
    with closing(connect(target)) as sock:
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        try:
            while sent < size and not select.select([sock], [], [], 0)[0]:  # stop once the server answered
                sock.sendall(b"a" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        raw = read_until_closed(sock)
    status = status_of(raw)
    got = f"{status} after {sent / 2**20:.1f} MiB sent"
    return Outcome(f"a {size // 2**20} MiB header", "431 early", got, status == 431 and sent < size, raw)


def slow_bodies(target: Target, connections: int = 300) -> Outcome:
    """Model requests that declare 16 MB and send 5 bytes: they must hold neither a concurrency slot nor the
    body budget (what they declare), so a fresh request is served, not 429; each slow one gets 408."""
    body = json.dumps({"x": [1.0]}).encode()
    declared = {"Content-Type": "application/json", "Content-Length": str(16_000_000)}
    head = request_head(target, "POST", "/v1/linear/predict", declared)
    with ExitStack() as stack:
        socks = [stack.enter_context(closing(connect(target))) for _ in range(connections)]
        for sock in socks:
            sock.sendall(head + body[:5])
        with target.client() as client:
            fresh = client.post("/v1/linear/predict", content=body, headers={"Content-Type": "application/json"})
        answers = Counter(status_of(read_until_closed(sock)) for sock in socks)
    held = fresh.status_code == 200 and answers == Counter({408: connections})
    got = f"fresh request {fresh.status_code}; the slow ones {dict(answers)}"
    return Outcome(f"{connections} slow bodies", "fresh 200; each slow one 408", got, held, (fresh, answers))


def chunked_bodies(target: Target, connections: int = 16, each: int = 8 * 2**20) -> Outcome:
    """Chunked model requests of `each` bytes, all held open at once: the worker's body budget refuses most."""
    head = request_head(
        target, "POST", "/v1/linear/predict", {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
    )
    piece = b"1.0, " * (2**16 // 5)
    before = target.rss()
    refused: Counter[int | None] = Counter()
    with ExitStack() as stack:
        socks = [stack.enter_context(closing(connect(target))) for _ in range(connections)]
        for sock in socks:
            try:
                sock.sendall(head + b'%x\r\n{"x": [\r\n' % len(b'{"x": ['))
                for _ in range(each // len(piece)):
                    sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused while sending: its answer is waiting
        peak = (target.rss() - before) / 2**20
        for sock in socks:  # the bodies never finish: each is refused at once, or times out once held
            refused[status_of(read_until_closed(sock))] += 1
    held = refused[429] > 0 and set(refused) <= {429, 408, 413, 400} and peak < 200
    got = f"{dict(refused)}" + (f", workers +{peak:.0f} MiB while held" if target.pid else "")
    return Outcome(f"{connections} chunked bodies of {each // 2**20} MiB", "429 past the budget", got, held, refused)


def repository_bodies(target: Target, size: int = 200 * 2**20) -> Outcome:
    """Triton's repository calls with a 200 MB body, declared and chunked: read whole before any limit, they
    once grew the worker by the body's size (a few at once: the pod's memory limit)."""
    statuses, before = [], target.rss()
    for framing in ("declared", "chunked"):
        headers = {"Content-Type": "application/json"}
        headers |= {"Content-Length": str(size)} if framing == "declared" else {"Transfer-Encoding": "chunked"}
        piece = b" " * 2**20
        with closing(connect(target)) as sock:
            sock.sendall(request_head(target, "POST", "/v2/repository/index", headers))
            try:
                for _ in range(size // len(piece)):
                    sock.sendall(piece if framing == "declared" else b"%x\r\n%s\r\n" % (len(piece), piece))
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused while sending: its answer is waiting
            statuses.append(status_of(read_until_closed(sock)))
    grown = (target.rss() - before) / 2**20
    got = f"{statuses}" + (f", workers +{grown:.0f} MiB" if target.pid else "")
    return Outcome("repository calls of 200 MB", "413, no growth", got, statuses == [413, 413] and grown < 50, statuses)


def big_bodies(target: Target, bodies: int = 4, images: int = 1240) -> Outcome:
    """A worker's whole body budget of JSON at once (4 x 16 MB, parsed, then refused for too many images):
    the workers' growth and the longest /livez wait meanwhile, what the manifests' memory and probes allow."""
    body = json.dumps({"images": [[[0.123456789] * 32] * 32] * images}).encode()
    before, peak, waits = target.rss(), 0, []
    with target.client() as client, ThreadPoolExecutor(bodies) as pool:
        posts = [
            pool.submit(client.post, "/v1/lenet/predict", content=body, headers={"Content-Type": "application/json"})
            for _ in range(bodies)
        ]
        while not all(post.done() for post in posts):
            started = time.perf_counter()
            client.get("/livez")
            waits.append(time.perf_counter() - started)
            peak = max(peak, target.rss())
        statuses = Counter(post.result().status_code for post in posts)
    grown = (peak - before) / 2**20
    got = f"{dict(statuses)}, longest /livez {max(waits):.2f} s" + (f", workers +{grown:.0f} MiB" if target.pid else "")
    held = set(statuses) <= {400, 429} and max(waits) < 2  # the readiness probe's timeout
    return Outcome(f"{bodies} JSON bodies of {len(body) / 2**20:.0f} MB", "refused, probes < 2 s", got, held, waits)


def unknown_field(target: Target, size: int = 5 * 2**20) -> Outcome:
    body = b'{"x": [1.0], "' + b"a" * size + b'": 1}'
    with target.client() as client:
        r = client.post("/v1/linear/predict", content=body, headers={"Content-Type": "application/json"})
    got = f"{r.status_code}, {len(r.content)} bytes"
    return Outcome(
        "a 5 MB unknown field name", "400 of < 4 KiB", got, r.status_code == 400 and len(r.content) < 4096, r
    )


def content_length_spaces(target: Target) -> Outcome:
    body = b'{"x": [1.0]}'
    head = request_head(target, "POST", "/v1/linear/predict", {"Content-Type": "application/json"})
    with closing(connect(target)) as sock:
        sock.sendall(head[:-2] + b"Content-Length:  %d \r\nConnection: close\r\n\r\n" % len(body) + body)
        raw = read_until_closed(sock)
    return Outcome("Content-Length with spaces", "200", f"{status_of(raw)}", status_of(raw) == 200, raw)


def head_requests(target: Target) -> Outcome:
    paths = ["/livez", "/v1/models", "/v2/models/linear", "/docs.json"]
    with target.client() as client:
        answers = {path: (client.head(path), client.get(path)) for path in paths}
    ok = all(
        h.status_code == 200 and not h.content and h.headers.get("content-length") == g.headers.get("content-length")
        for h, g in answers.values()
    )
    got = ", ".join(f"{p} {h.status_code}" for p, (h, _) in answers.items())
    return Outcome("HEAD where GET is", "200, no body", got, ok, answers)


def host_redirect(target: Target) -> Outcome:
    with target.client() as client:
        r = client.get("/ui", headers={"Host": "evil.example"})
    location = r.headers.get("location", "")
    return Outcome("redirect with Host: evil.example", "relative", location, location == "/ui/", r)


def security_headers(target: Target) -> Outcome:
    with target.client() as client, httpx.Client(base_url=target.url, timeout=60) as anonymous:
        answers = [client.get("/v1/models"), client.get("/nope"), anonymous.get("/v1/models"), client.get("/livez")]
    missing = [
        f"{r.status_code} {r.request.url.path}"
        for r in answers
        if any(r.headers.get(k) != v for k, v in SECURITY_HEADERS.items())
    ]
    return Outcome("security headers", "on every answer", f"missing on {missing}" if missing else "all", not missing)


def docs_pages(target: Target) -> Outcome:
    paths = ["/docs", "/redoc", "/openapi.json", "/v1/docs", "/v1/redoc", "/v1/openapi.json"]
    with target.client() as client:
        statuses = {path: client.get(path).status_code for path in paths}
    served = [p for p, s in statuses.items() if s == 200]
    return Outcome(
        "FastAPI's default docs pages", "none served", f"served: {served}" if served else "none", not served, statuses
    )


def duplicate_outputs(target: Target, copies: int = 100) -> Outcome:
    """V2: one small request asking for the same output thousands of times."""
    rows = np.zeros((256, 1, 32, 32), dtype=np.float32).tobytes()
    header = {
        "inputs": [
            {"name": "x", "shape": [256, 1, 32, 32], "datatype": "FP32", "parameters": {"binary_data_size": len(rows)}}
        ],
        "outputs": [{"name": "logits"}] * copies,
    }
    text = json.dumps(header).encode()
    with target.client() as client:
        r = client.post(
            "/v2/models/lenet/infer",
            content=text + rows,
            headers={"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(text))},
        )
    got = f"{r.status_code}, {len(r.content)} bytes"
    return Outcome(f"V2 with {copies} copies of one output", "400", got, r.status_code == 400, r)


def many_entries(target: Target, entries: int = 300_000) -> Outcome:
    """V2: a few MB naming 300,000 outputs, or as many parameters: each would be an object to build and check
    (~1.5 s of a worker's CPU); counted first, refused at once."""
    base = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}
    bodies = {
        "outputs": base | {"outputs": [{"name": "y"}] * entries},
        "parameters": base | {"parameters": {f"p{i}": i for i in range(entries)}},
    }
    with target.client() as client:
        answers = {what: client.post("/v2/models/linear/infer", json=body) for what, body in bodies.items()}
    got = ", ".join(f"{what}: {r.status_code}" for what, r in answers.items())
    held = all(r.status_code == 400 for r in answers.values())
    return Outcome(f"V2 naming {entries:,} outputs, or parameters", "400 each", got, held, answers)


def typed_objects(target: Target, entries: int = 1_000_000) -> Outcome:
    """Typed routes: 3 MB of empty lists, 11 MB of unknown fields (each a Python object to build and check:
    2-7 s of a worker's CPU on its event loop to refuse); counted on the bytes, refused unparsed."""
    bodies = {
        "lists": b'{"x": [' + b"[]," * (entries - 1) + b"[]]}",
        "fields": json.dumps({"x": [[1.0, 2.0, 3.0]]} | {f"a{i}": 1 for i in range(entries)}).encode(),
    }
    with target.client() as client:
        answers = {
            what: client.post("/v1/multilinear/predict", content=body, headers={"Content-Type": "application/json"})
            for what, body in bodies.items()
        }
    got = ", ".join(f"{what}: {r.status_code}" for what, r in answers.items())
    held = all(r.status_code == 400 for r in answers.values())
    return Outcome(f"typed JSON of {entries:,} lists, or fields", "400 each", got, held, answers)


CATALOGUE: list[Callable[[Target], Outcome]] = [
    metric_series,
    png_bomb,
    jpeg_header_bomb,
    big_photo,
    slow_headers,
    idle_connections,
    huge_header,
    slow_bodies,
    chunked_bodies,
    repository_bodies,
    big_bodies,
    unknown_field,
    content_length_spaces,
    head_requests,
    host_redirect,
    security_headers,
    docs_pages,
    duplicate_outputs,
    many_entries,
    typed_objects,
]


def run(target: Target) -> Iterator[Outcome]:
    restarts = {p.pid for p in target.workers()}
    for attack in CATALOGUE:
        try:
            yield attack(target)
        except (httpx.HTTPError, OSError) as e:
            yield Outcome(attack.__name__, "an answer", f"{type(e).__name__}: {e}", False)
        alive = httpx.get(f"{target.url}/livez", timeout=60).status_code
        if alive != 200:
            yield Outcome(f"/livez after {attack.__name__}", "200", str(alive), False)
    if target.pid:
        gone = restarts - {p.pid for p in target.workers()}
        yield Outcome("worker restarts", "0", str(len(gone)), not gone)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:3000", help="the server (default: %(default)s)")
    parser.add_argument("--token", help="the API token, when the server has one")
    parser.add_argument("--metrics-token", help="the metrics token, when the server has one")
    parser.add_argument("--pid", type=int, help="the `bentoml serve` process: adds memory and worker restarts")
    args = parser.parse_args()
    target = Target(args.url, args.token, args.metrics_token or args.token, args.pid)
    outcomes = []
    print(f"{'attack':44} {'expected':28} {'held':5} got")
    for outcome in run(target):
        outcomes.append(outcome)
        print(f"{outcome.name:44} {outcome.expected:28} {'yes' if outcome.held else 'NO':5} {outcome.got}", flush=True)
    failed = [o.name for o in outcomes if not o.held]
    print(
        f"{len(outcomes) - len(failed)} of {len(outcomes)} held"
        + (f"; got through: {', '.join(failed)}" if failed else "")
    )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
