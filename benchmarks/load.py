"""A bounded HTTP load generator: N requests (or a time limit) at a fixed concurrency (aiohttp, uvloop).

    python -m benchmarks.load URL BODY_FILE CONCURRENCY REQUESTS LIMIT_S [HEADERS_JSON]

It runs in its own process so that its CPU use can be reported beside the server's.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
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


async def _run(
    url: str, body: bytes, concurrency: int, requests: int, limit_s: float, headers: dict[str, str]
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
                except aiohttp.ClientError:
                    ok = False
                latencies.append(time.perf_counter() - started)
                errors += not ok

        # warm-up at full concurrency (connections, the server's batcher), then the measured requests
        warm_up = max(2 * concurrency, min(200, requests // 5))
        await asyncio.gather(*(worker(warm_up) for _ in range(concurrency)))
        latencies.clear()
        sent, errors = 0, 0
        cpu, started = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(requests) for _ in range(concurrency)))
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    quantiles = statistics.quantiles(latencies, n=100)
    return LoadResult(
        len(latencies), errors, seconds, len(latencies) / seconds, quantiles[49] * 1000, quantiles[98] * 1000, cpu
    )


def main() -> None:
    url, body_file, concurrency, requests, limit_s = sys.argv[1:6]
    headers = json.loads(sys.argv[6]) if len(sys.argv) > 6 else {"content-type": "application/json"}
    with open(body_file, "rb") as f:
        body = f.read()
    result = uvloop.run(_run(url, body, int(concurrency), int(requests), float(limit_s), headers))
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    main()
