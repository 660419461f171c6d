"""The measurements `make bench` and `benchmarks.gpu` are made of: each one case, returning plain figures."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnxruntime as ort

from benchmarks.digits import held_out_digits, upscale_32
from benchmarks.server import REPO
from client.v2 import binary_request

MODELS = REPO / "models"


def raw_onnxruntime(
    name: str, batch: int, threads: int, seconds: float, providers: list[Any] | None = None
) -> dict[str, float]:
    """`session.run` in process, back to back after warm-up, configured as the server configures it."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the server, by default
    session = ort.InferenceSession(
        str(MODELS / name / "1" / "model.onnx"), options, providers=providers or ["CPUExecutionProvider"]
    )
    shape = (batch, 1, 32, 32) if name == "lenet" else (batch, 1)
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    for _ in range(20):
        session.run(None, {"x": x})
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        session.run(None, {"x": x})
        calls += 1
    elapsed = time.perf_counter() - started
    return {"ms_per_call": elapsed / calls * 1000, "rows_per_s": calls * batch / elapsed}


def load(
    url: str,
    body: bytes,
    concurrency: int,
    requests: int,
    headers: dict[str, str] | None = None,
    *,
    seconds: float = 120,
    warm_up: int | None = None,
) -> dict[str, Any]:
    """benchmarks.load in its own process: requests/s, p50, p99 and its own CPU time (at most `seconds`)."""
    with tempfile.NamedTemporaryFile(suffix=".body") as f:
        f.write(body)
        f.flush()
        command = [sys.executable, "-m", "benchmarks.load", url, f.name, str(concurrency), str(requests), str(seconds)]
        if headers:
            command.append(json.dumps(headers))
        if warm_up is not None:
            command.append(f"--warm-up={warm_up}")
        out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def lenet_image_json() -> bytes:
    """One held-out digit for the typed route."""
    images8, _ = held_out_digits()
    return json.dumps({"images": [upscale_32(images8[0]).tolist()]}).encode()


def v2_binary(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """A V2 request with `x` as a binary tensor and the output asked for in binary, and its headers."""
    return binary_request(x, ["logits"])


def bulk_v2(url: str, images: int, in_flight: int, requests: int) -> dict[str, Any]:
    """LeNet batches of `images` over V2 binary tensors, `in_flight` at a time."""
    x = np.random.default_rng(0).random((images, 1, 32, 32), dtype=np.float32)
    body, headers = v2_binary(x)
    result = load(f"{url}/v2/models/lenet/infer", body, in_flight, requests, headers)
    return result | {"images_per_s": result["rps"] * images, "in_flight": in_flight}


@contextlib.contextmanager
def tcp_nodelay_in_tritonclient() -> Iterator[None]:
    """The client-side remedy for the Nagle stall: TCP_NODELAY on geventhttpclient's sockets.

    `ConnectionPool._create_tcp_socket` is the hook geventhttpclient documents for socket options.
    """
    from geventhttpclient.connectionpool import ConnectionPool

    original = ConnectionPool._create_tcp_socket

    def create(self: ConnectionPool, *args: Any) -> Any:
        sock = original(self, *args)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    ConnectionPool._create_tcp_socket = create  # type: ignore[method-assign]
    try:
        yield
    finally:
        ConnectionPool._create_tcp_socket = original  # type: ignore[method-assign]


def triton_bulk(url: str, images: int, requests: int, *, nodelay: bool) -> dict[str, float]:
    """`tritonclient.http`, one 1024-image binary request at a time: p50 and p90 per request."""
    import tritonclient.http as triton

    with tcp_nodelay_in_tritonclient() if nodelay else contextlib.nullcontext():
        client = triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=120)
        x = np.random.default_rng(0).random((images, 1, 32, 32), dtype=np.float32)
        tensor = triton.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        wanted = [triton.InferRequestedOutput("logits", binary_data=True)]
        for _ in range(3):
            client.infer("lenet", [tensor], outputs=wanted)
        seconds = []
        for _ in range(requests):
            started = time.perf_counter()
            client.infer("lenet", [tensor], outputs=wanted)
            seconds.append(time.perf_counter() - started)
        client.close()
    seconds.sort()
    return {
        "p50_ms": statistics.median(seconds) * 1000,
        "p90_ms": seconds[int(len(seconds) * 0.9)] * 1000,
        "images_per_s": images / statistics.median(seconds),
    }


def score_file(images: Any, args: list[str]) -> dict[str, float]:
    """`tinyserve-score lenet IMAGES OUT ...`: rows/s by its own clock and by the wall (with start-up)."""
    rows = len(np.load(images, mmap_mode="r"))
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "client", "lenet", str(images), f"{tmp}/out.jsonl", *args, "--quiet"],
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - started
    own = re.search(r"([\d,]+) rows/s, elapsed", done.stderr)
    assert own is not None, done.stderr
    return {"rows": rows, "wall_s": wall, "rows_per_s_wall": rows / wall, "rows_per_s": float(own[1].replace(",", ""))}


def overload(url: str, concurrency: int = 64, seconds: float = 4.0, images: int = 16) -> dict[str, Any]:
    """`concurrency` clients sending `images`-image LeNet requests for `seconds` to a server whose
    TINYSERVE_MAX_CONCURRENCY is far below: how fast the served requests and the 429s come back."""
    import asyncio

    import aiohttp

    body = json.dumps({"images": [[[0.5] * 32 for _ in range(32)]] * images}).encode()
    latencies: dict[int, list[float]] = {}

    async def flood() -> None:
        deadline = time.perf_counter() + seconds
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def client() -> None:
                while time.perf_counter() < deadline:
                    started = time.perf_counter()
                    headers = {"content-type": "application/json"}
                    async with session.post(f"{url}/v1/lenet/predict", data=body, headers=headers) as response:
                        await response.read()
                    latencies.setdefault(response.status, []).append(time.perf_counter() - started)

            await asyncio.gather(*(client() for _ in range(concurrency)))

    asyncio.run(flood())

    def quantiles(values: list[float]) -> dict[str, float]:
        cuts = statistics.quantiles(values, n=100) if len(values) > 1 else values * 99
        return {"count": len(values), "p50_ms": cuts[49] * 1000, "p99_ms": cuts[98] * 1000}

    return {str(status): quantiles(values) for status, values in sorted(latencies.items())}
