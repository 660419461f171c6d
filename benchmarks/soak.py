"""`make soak`: mixed traffic at a fixed rate for a long time; statuses, latency over time, server memory.

    .venv/bin/python -m benchmarks.soak [--minutes 30] [--rate 40]

All routes, good and bad requests, JSON and binary, each with the status it must get. Reports requests,
statuses, p50/p99 per interval, and the server's RSS after warm-up and at the end; exits 1 on any
unexpected status or on RSS growth over 5% after warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
import psutil
import uvloop
from PIL import Image

from benchmarks.digits import held_out_digits, render, upscale_32
from benchmarks.server import Server, running
from client.v2 import binary_request

JSON = {"content-type": "application/json"}


@dataclass(frozen=True)
class Kind:
    name: str
    method: str
    path: str
    body: bytes | aiohttp.FormData | None
    headers: dict[str, str]
    expect: int


def _v2_binary(model: str, x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    return binary_request(x)


def kinds() -> list[Kind]:
    images8, _ = held_out_digits()
    image = upscale_32(images8[3])
    png = render(images8[3], (120, 150), dark_on_light=True)
    binary, binary_headers = _v2_binary("lenet", image[None, None])
    bad_png = io.BytesIO()
    Image.new("L", (4, 4)).save(bad_png, "GIF")
    return [
        Kind("linear", "POST", "/v1/linear/predict", b'{"x": [1.0, 2.0, 3.0]}', JSON, 200),
        Kind("multilinear", "POST", "/v1/multilinear/predict", b'{"x": [[73, 80, 75]]}', JSON, 200),
        Kind("blobs", "POST", "/v1/blobs/predict", b'{"x": [[1, 1], [-1, 1]]}', JSON, 200),
        Kind("lenet", "POST", "/v1/lenet/predict", json.dumps({"images": [image.tolist()]}).encode(), JSON, 200),
        Kind("upload", "POST", "/v1/lenet/predict-image", png, {}, 200),
        Kind(
            "v2 json",
            "POST",
            "/v2/models/blobs/infer",
            b'{"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 1, -1, 1]}]}',
            JSON,
            200,
        ),
        Kind("v2 binary", "POST", "/v2/models/lenet/infer", binary, binary_headers, 200),
        Kind("catalog", "GET", "/v1/models", None, {}, 200),
        Kind("v2 metadata", "GET", "/v2/models/lenet", None, {}, 200),
        Kind("readyz", "GET", "/readyz", None, {}, 200),
        Kind("bad NaN", "POST", "/v1/linear/predict", b'{"x": [NaN]}', JSON, 400),
        Kind("bad model", "POST", "/v1/resnet/predict", b'{"x": [1]}', JSON, 404),
        Kind("bad type", "POST", "/v1/linear/predict", b"x=1", {"content-type": "text/plain"}, 415),
        Kind(
            "bad v2 shape",
            "POST",
            "/v2/models/linear/infer",
            b'{"inputs": [{"name": "x", "shape": [3, 1], "datatype": "FP32", "data": [1]}]}',
            JSON,
            400,
        ),
        Kind("bad upload", "POST", "/v1/lenet/predict-image", bad_png.getvalue(), {}, 415),
    ]


def _worker_rss(server: Server) -> int:
    return sum(p.memory_info().rss for p in psutil.Process(server.process.pid).children(recursive=True))


async def _send(session: aiohttp.ClientSession, base: str, kind: Kind) -> int:
    if kind.name.startswith(("upload", "bad upload")):
        form = aiohttp.FormData()
        form.add_field("image", kind.body, filename="digit.png", content_type="image/png")
        async with session.post(base + kind.path, data=form) as r:
            await r.read()
            return r.status
    async with session.request(kind.method, base + kind.path, data=kind.body, headers=kind.headers) as r:
        await r.read()
        return r.status


async def soak(server: Server, minutes: float, rate: float, interval_s: float) -> dict[str, object]:
    all_kinds, rng = kinds(), random.Random(0)
    seconds = minutes * 60
    warm_up = min(60.0, seconds * 0.2)
    statuses: Counter[str] = Counter()
    unexpected: Counter[str] = Counter()
    intervals: list[list[float]] = []
    rss_start = 0
    pending: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def one(kind: Kind, bucket: list[float]) -> None:
            started = time.perf_counter()
            try:
                status = await _send(session, server.url, kind)
            except aiohttp.ClientError as e:
                status = -1
                unexpected[f"{kind.name}: {type(e).__name__}"] += 1
            bucket.append(time.perf_counter() - started)
            statuses[f"{status}"] += 1
            if status != kind.expect and status != -1:
                unexpected[f"{kind.name}: {status}"] += 1

        begin = time.perf_counter()
        sent = 0
        while (elapsed := time.perf_counter() - begin) < seconds:
            if not rss_start and elapsed >= warm_up:
                rss_start = _worker_rss(server)
            index = int(elapsed // interval_s)
            while len(intervals) <= index:
                intervals.append([])
            task = asyncio.create_task(one(rng.choice(all_kinds), intervals[index]))
            pending.add(task)
            task.add_done_callback(pending.discard)
            sent += 1
            await asyncio.sleep(max(0.0, begin + sent / rate - time.perf_counter()))
        await asyncio.gather(*pending)
    rss_end = _worker_rss(server)
    timeline = [
        {
            "from_s": i * interval_s,
            "requests": len(b),
            "p50_ms": statistics.median(b) * 1000,
            "p99_ms": (statistics.quantiles(b, n=100)[98] if len(b) > 1 else b[0]) * 1000,
        }
        for i, b in enumerate(intervals)
        if b
    ]
    return {
        "minutes": minutes,
        "rate": rate,
        "requests": sum(statuses.values()),
        "statuses": dict(statuses),
        "unexpected": dict(unexpected),
        "rss_after_warm_up_mb": rss_start / 2**20,
        "rss_end_mb": rss_end / 2**20,
        "rss_growth": rss_end / rss_start - 1,
        "timeline": timeline,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30, help="how long (default: 30)")
    parser.add_argument("--rate", type=float, default=40, help="requests per second (default: 40)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/soak.json"), help="the JSON report")
    args = parser.parse_args()
    interval = 60.0 if args.minutes >= 5 else 20.0
    with tempfile.TemporaryDirectory() as tmp, running(Path(tmp) / "server.log") as server:
        report = uvloop.run(soak(server, args.minutes, args.rate, interval))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"{report['requests']} requests in {args.minutes:g} min at {args.rate:g}/s; statuses {report['statuses']}")
    for row in report["timeline"]:  # type: ignore[attr-defined]
        print(
            f"  from {row['from_s']:5.0f} s: {row['requests']:5d} requests, p50 {row['p50_ms']:6.1f} ms, "
            f"p99 {row['p99_ms']:6.1f} ms"
        )
    print(
        f"server RSS {report['rss_after_warm_up_mb']:.1f} MiB after warm-up, {report['rss_end_mb']:.1f} MiB at "
        f"the end ({report['rss_growth']:+.1%}); unexpected: {report['unexpected'] or 'none'}"
    )
    ok = not report["unexpected"] and float(report["rss_growth"]) < 0.05  # type: ignore[arg-type]
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
