"""Per-request overhead above ONNX Runtime, in microseconds of CPU, for each route and protocol.

The whole service's ASGI app (BentoML's, with the guard and every front door) is driven in this process,
request after request, with no socket and no load generator: what remains is the CPU each request costs
the server's worker above `session.run` itself, measured in process CPU time (not wall time), so a busy
machine changes it little. `--profile` prints the typed route's top functions (cProfile); `--layers`
the typed route's CPU from each layer of the app inward (what each layer in front of the guard costs).

    python -m benchmarks.overhead [--requests N] [--profile] [--layers]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import importlib.util
import json
import pstats
import statistics
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import numpy as np
import uvloop

from benchmarks.server import REPO
from client.v2 import binary_request
from service.runtime import start_up
from service.server import create_service
from service.settings import Settings

Message = MutableMapping[str, Any]
App = Callable[[MutableMapping[str, Any], Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Any]


def _requests() -> dict[str, tuple[str, bytes, list[tuple[bytes, bytes]], np.ndarray]]:
    """Each route's body for one LeNet image, and the input array ONNX Runtime gets for it."""
    x = np.load(REPO / "examples" / "digits.npy")[:1].astype(np.float32)
    json_type = [(b"content-type", b"application/json")]
    tensor = {"name": "x", "shape": [1, 1, 32, 32], "datatype": "FP32"}
    binary, binary_headers = binary_request(x, binary_output=False)
    return {
        "typed JSON (/v1/lenet/predict)": (
            "/v1/lenet/predict",
            json.dumps({"images": [x[0, 0].tolist()]}).encode(),
            json_type,
            x,
        ),
        "V2 JSON": (
            "/v2/models/lenet/infer",
            json.dumps({"inputs": [tensor | {"data": x.ravel().tolist()}]}).encode(),
            json_type,
            x,
        ),
        "V2 binary": (
            "/v2/models/lenet/infer",
            binary,
            [(k.lower().encode(), v.encode()) for k, v in binary_headers.items()],
            x,
        ),
    }


async def _call(app: App, path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [*headers, (b"content-length", str(len(body)).encode()), (b"host", b"bench")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 3000),
    }
    status = 0

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        nonlocal status
        status = message.get("status", status)

    await app(scope, receive, send)
    return status


def _layers(app: Any) -> list[tuple[str, Any]]:
    """The app's ASGI layers, outermost first (each one's next is its `middleware_stack` or `app`)."""
    layers, node = [], app
    while node is not None and len(layers) < 32:
        layers.append((type(node).__name__, node))
        node = next(
            (getattr(node, a) for a in ("middleware_stack", "app") if getattr(node, a, None) not in (None, node)), None
        )
    return layers


async def _per_layer(app: Any, requests: int) -> None:
    """The typed route's CPU per request entered at each layer, medians of 5 interleaved rounds."""
    path, body, headers, _ = _requests()["typed JSON (/v1/lenet/predict)"]
    chain = [(n, layer) for n, layer in _layers(app) if n != "ExceptionMiddleware"][:8]
    times: dict[str, list[float]] = {name: [] for name, _ in chain}
    for _ in range(5):
        for name, layer in chain:
            for _ in range(50):
                await _call(layer, path, body, headers)
            started = time.process_time()
            for _ in range(requests):
                if await _call(layer, path, body, headers) != 200:
                    times.pop(name, None)  # past the fast path: this layer does not serve the route alone
                    break
            else:
                times[name].append((time.process_time() - started) / requests * 1e6)
    print("| typed request entered at | CPU per request, us |\n|---|---|")
    for name, measured in times.items():
        if measured:
            print(f"| {name} | {statistics.median(measured):.0f} |")


async def _measure(requests: int, profile: bool, layers: bool = False) -> list[dict[str, Any]]:
    service = create_service(start_up(Settings(workers=1, threads=1), serving=False))
    app = service.to_asgi()
    events: asyncio.Queue[Message] = asyncio.Queue()
    answers: asyncio.Queue[Message] = asyncio.Queue()
    await events.put({"type": "lifespan.startup"})
    lifespan = asyncio.ensure_future(app({"type": "lifespan", "asgi": {"version": "3.0"}}, events.get, answers.put))
    await answers.get()
    import onnxruntime as ort

    session = ort.InferenceSession(str(REPO / "models" / "lenet" / "1" / "model.onnx"), _options())
    rows = [
        await _row(name, app, path, body, headers, x, session, requests)
        for name, (path, body, headers, x) in _requests().items()
    ]
    _, body, headers, x = _requests()["typed JSON (/v1/lenet/predict)"]
    peer = "FastAPI peer app, the same body (no validation)"
    rows.append(await _row(peer, _peer_app(), "/predict", body, headers, x, session, requests))
    if layers:
        await _per_layer(app, max(200, requests // 4))
    if profile:
        path, body, headers, _ = _requests()["typed JSON (/v1/lenet/predict)"]
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(requests):
            await _call(app, path, body, headers)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
    await events.put({"type": "lifespan.shutdown"})
    await lifespan
    return rows


async def _row(
    name: str,
    app: Any,
    path: str,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    x: np.ndarray,
    session: Any,
    requests: int,
) -> dict[str, Any]:
    """One route's CPU a request after 100 to warm up, and `session.run` alone on the same input."""
    for _ in range(100):
        assert await _call(app, path, body, headers) == 200, name
    started = time.process_time()
    for _ in range(requests):
        await _call(app, path, body, headers)
    served = (time.process_time() - started) / requests
    started = time.process_time()
    for _ in range(requests):
        session.run(None, {"x": x})
    run = (time.process_time() - started) / requests
    return {"route": name, "request_us": served * 1e6, "onnxruntime_us": run * 1e6}


def _peer_app() -> Any:
    """The FastAPI app of bench-peers (benchmarks/peers/fastapi/app.py), imported from its file: it opens its own
    session, as its workers do."""
    spec = importlib.util.spec_from_file_location("fastapi_peer", REPO / "benchmarks" / "peers" / "fastapi" / "app.py")
    assert spec is not None and spec.loader is not None
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)
    return peer.app


def _options() -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| route (one LeNet image) | CPU per request, us | of which ONNX Runtime, us | overhead, us |",
        "|---|---|---|---|",
    ]
    for r in rows:
        overhead = r["request_us"] - r["onnxruntime_us"]
        lines.append(f"| {r['route']} | {r['request_us']:.0f} | {r['onnxruntime_us']:.0f} | {overhead:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per route (default: 2000)")
    parser.add_argument("--profile", action="store_true", help="print the typed route's profile")
    parser.add_argument("--layers", action="store_true", help="print the typed route's CPU from each layer inward")
    args = parser.parse_args()
    print(table(uvloop.run(_measure(args.requests, args.profile, args.layers))))  # the event loop BentoML's workers run


if __name__ == "__main__":
    main()
