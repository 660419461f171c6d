"""A bounded HTTP load generator: N requests (or a time limit) at a fixed concurrency (aiohttp, uvloop).

    python -m benchmarks.load URL BODY_FILE CONCURRENCY REQUESTS LIMIT_S [HEADERS_JSON] [--warm-up N]

It runs in its own process so that its CPU use can be reported beside the server's. Before the measured
requests it sends N at full concurrency (default: 2 per connection, and up to 200): connections opened,
a server's batcher warm. A small N measures a server as the previous traffic left it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import asdict, dataclass

import aiohttp
import uvloop


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    client_cpu_s: float  # the load generator's own CPU time
    warm_up: int = 0  # requests sent before the measured ones (their CPU is the server's too)


async def _run(
    url: str,
    body: bytes,
    concurrency: int,
    requests: int,
    limit_s: float,
    headers: dict[str, str],
    warm_up: int | None = None,
) -> LoadResult:
    latencies: list[float] = []
    errors = 0
    sent = 0
    deadline = time.perf_counter() + limit_s
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def worker(count: int) -> None:
            nonlocal sent, errors
            while sent < count and time.perf_counter() < deadline:
                sent += 1
                started = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        ok = response.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    ok = False
                latencies.append(time.perf_counter() - started)
                errors += not ok

        # warm-up at full concurrency (connections, the server's batcher), then the measured requests
        if warm_up is None:
            warm_up = max(2 * concurrency, min(200, requests // 5))
        await asyncio.gather(*(worker(warm_up) for _ in range(concurrency)))
        warmed = sent
        deadline = time.perf_counter() + limit_s
        latencies.clear()
        sent, errors = 0, 0
        cpu, started = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(requests) for _ in range(concurrency)))
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    # a slow server may answer only a few bulk requests in the time given
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    p50_ms, p99_ms = quantiles[49] * 1000, quantiles[98] * 1000
    return LoadResult(len(latencies), errors, seconds, len(latencies) / seconds, p50_ms, p99_ms, cpu, warmed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("body_file")
    parser.add_argument("concurrency", type=int)
    parser.add_argument("requests", type=int)
    parser.add_argument("limit_s", type=float, help="seconds the measured requests may take (and the warm-up)")
    parser.add_argument("headers", nargs="?", default='{"content-type": "application/json"}', help="a JSON object")
    parser.add_argument("--warm-up", type=int, default=None, help="requests sent before the measured ones")
    args = parser.parse_args()
    with open(args.body_file, "rb") as f:
        body = f.read()
    result = uvloop.run(
        _run(args.url, body, args.concurrency, args.requests, args.limit_s, json.loads(args.headers), args.warm_up)
    )
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    main()
