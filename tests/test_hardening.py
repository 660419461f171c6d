"""Hardening: the published contract fuzzed, the V2 framing fuzzed, overload, huge bodies, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import metric
from tests.server import Server, launch, running, stop, wait_ready

FUZZ_EXAMPLES = int(os.environ.get("TINYSERVE_FUZZ_EXAMPLES", "150"))  # per route; `make fuzz` raises it
SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")


def test_typed_routes_keep_their_published_contract(server: Server, tmp_path: Path) -> None:
    """schemathesis against the live /docs.json: every check but one, FUZZ_EXAMPLES cases per route.

    No 5xx; every response (errors included) matches the document; content types and statuses as
    documented. positive_data_acceptance is left out: random bytes are a schema-valid "image" and are
    rightly refused, and an OpenAPI document cannot say "a PNG of a digit".
    """
    result = subprocess.run(
        [
            SCHEMATHESIS,
            "run",
            f"{server.url}/docs.json",
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            str(FUZZ_EXAMPLES),
            "--include-path-regex",
            "^/v1/",
            "--no-color",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-6000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
    assert generated is not None and generated.group(1) == generated.group(2), result.stdout[-3000:]
    assert int(generated.group(1)) >= 5 * FUZZ_EXAMPLES  # every typed route had its share


DTYPES = ["FP32", "FP64", "FP16", "INT32", "INT64", "UINT8", "BOOL", "BYTES", "fp32", ""]


@st.composite
def v2_requests(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    model = draw(st.sampled_from(["linear", "multilinear", "blobs", "lenet", "nope"]))
    shape = draw(st.lists(st.integers(-2, 40), min_size=0, max_size=4))
    datatype = draw(st.sampled_from(DTYPES))
    count = max(0, min(2048, int(abs(math.prod(shape))) if shape else 1))
    count = draw(st.sampled_from([count, max(0, count - 1), count + 1, 0]))
    binary = draw(st.booleans())
    tensor: dict[str, Any] = {"name": draw(st.sampled_from(["x", "y", ""])), "shape": shape, "datatype": datatype}
    payload = b""
    if binary:
        payload = (
            draw(st.binary(min_size=0, max_size=64))
            if draw(st.booleans())
            else struct.pack(f"<{count}f", *([0.5] * count))
        )
        tensor["parameters"] = {"binary_data_size": draw(st.sampled_from([len(payload), len(payload) + 4, -1, 0]))}
    else:
        tensor["data"] = draw(st.sampled_from([[0.5] * count, [[0.5] * 2] * (count // 2), ["a"] * count, None, 1.0]))
    body = {"inputs": [tensor]}
    if draw(st.booleans()):
        body["outputs"] = [
            {
                "name": draw(st.sampled_from(["y", "logits", "probability", "z"])),
                "parameters": {"binary_data": draw(st.booleans())},
            }
        ]
    text = json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    if binary:
        headers["Inference-Header-Content-Length"] = str(draw(st.sampled_from([len(text), len(text) + 7, 3])))
    return f"/v2/models/{model}/infer", text + payload, headers


@settings(max_examples=FUZZ_EXAMPLES * 2, deadline=None, suppress_health_check=list(HealthCheck))
@given(request=v2_requests())
def test_v2_framings_never_get_a_5xx_or_hang(http: httpx.Client, request: tuple[str, bytes, dict[str, str]]) -> None:
    path, body, headers = request
    r = http.post(path, content=body, headers=headers, timeout=10)
    assert r.status_code in (200, 400, 404), (path, body[:300], r.text)
    if r.status_code != 200:
        assert set(r.json()) == {"error", "detail"}


def _flood(url: str, concurrency: int, seconds: float) -> list[tuple[int, float, str | None]]:
    body = json.dumps({"images": [[[0.5] * 32 for _ in range(32)]] * 16}).encode()

    async def run() -> list[tuple[int, float, str | None]]:
        results: list[tuple[int, float, str | None]] = []
        deadline = time.monotonic() + seconds
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

            async def worker() -> None:
                while time.monotonic() < deadline:
                    started = time.monotonic()
                    r = await client.post(
                        "/v1/lenet/predict", content=body, headers={"content-type": "application/json"}
                    )
                    results.append((r.status_code, time.monotonic() - started, r.headers.get("retry-after")))

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return results

    return asyncio.run(run())


def test_overload_turns_into_429s_that_never_reach_the_model_and_the_server_recovers(tmp_path: Path) -> None:
    """Past the limit, requests are refused by the guard itself: none is queued, none runs the model.

    (How fast a refusal comes is a timing, measured by `make bench`; here the behaviour is counted.)
    """
    with running(tmp_path / "server.log", {"TINYSERVE_MAX_CONCURRENCY": "4"}) as server:
        results = _flood(server.url, concurrency=64, seconds=4)
        statuses = Counter(status for status, _, _ in results)
        assert set(statuses) <= {200, 429}, statuses
        assert statuses[429] > 0 and statuses[200] > 0, statuses
        assert all(after == "1" for status, _, after in results if status == 429)
        # every refusal was counted by the guard, and only the served requests' rows ran through ONNX Runtime
        text = httpx.get(f"{server.url}/metrics").text
        assert metric(text, "tinyserve_requests_refused_total", status="429") == statuses[429]
        assert metric(text, "tinyserve_rows_inferred_total", model="lenet") == 16 * statuses[200]
        busy = httpx.post(f"{server.url}/v1/linear/predict", json={"x": [1.0]})
        assert busy.status_code == 200
        assert httpx.get(f"{server.url}/readyz").status_code == 200


def _worker_rss(server: Server) -> int:
    return sum(p.memory_info().rss for p in psutil.Process(server.process.pid).children(recursive=True))


def test_a_huge_chunked_body_is_refused_without_being_read_whole(server: Server) -> None:
    before = _worker_rss(server)
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        yield b'{"x": ['
        for _ in range(400):  # 400 MiB if the server read it all
            sent += 1
            yield b"1.0, " * (1024 * 1024 // 5)

    try:
        r = httpx.post(
            f"{server.url}/v1/linear/predict", content=body(), headers={"content-type": "application/json"}, timeout=60
        )
        assert r.status_code == 413
    except (httpx.WriteError, httpx.RemoteProtocolError):
        pass  # the server answered 413 and closed while the client was still sending
    assert sent < 100  # it stopped reading after the limit, far before 400 MiB
    assert _worker_rss(server) - before < 64 * 2**20
    assert httpx.post(f"{server.url}/v1/linear/predict", json={"x": [1.0]}).status_code == 200


def test_sigterm_drains_in_flight_requests_and_drops_readiness_first(tmp_path: Path) -> None:
    server = launch(tmp_path / "server.log", {"TINYSERVE_DRAIN_SECONDS": "1.5"})
    streams = 4
    try:
        wait_ready(server)
        body = {"images": [[[0.5] * 32 for _ in range(32)]] * 64}
        outcomes: list[tuple[float, str]] = []
        readiness: list[tuple[float, int]] = []
        answered = threading.Semaphore(0)  # released once by each stream at its first 200, and by the poller
        stopped = threading.Event()  # set once the server has exited

        def stream() -> None:
            first = True
            with httpx.Client(base_url=server.url, timeout=10) as client:  # keep-alive, like a real client
                while not stopped.is_set():
                    started = time.monotonic()
                    try:
                        r = client.post("/v1/lenet/predict", json=body)
                        complete = r.status_code != 200 or len(r.json()["labels"]) == 64
                        outcomes.append((started, f"{r.status_code}" if complete else "truncated"))
                        if first and r.status_code == 200:
                            first = False
                            answered.release()
                    except httpx.RemoteProtocolError as e:
                        kind = "truncated" if "incomplete" in str(e) else "closed"
                        outcomes.append((started, kind))
                    except httpx.TransportError:
                        outcomes.append((started, "refused"))
                        stopped.wait(0.05)

        def poll_ready() -> None:
            with httpx.Client(base_url=server.url, timeout=2) as client:
                while not stopped.is_set():
                    try:
                        readiness.append((time.monotonic(), client.get("/readyz").status_code))
                    except httpx.TransportError:
                        break
                    if len(readiness) == 1:
                        answered.release()
                    stopped.wait(0.05)

        threads = [threading.Thread(target=stream) for _ in range(streams)] + [threading.Thread(target=poll_ready)]
        for t in threads:
            t.start()
        for _ in range(streams + 1):  # every stream has a request answered, and readiness is polled
            assert answered.acquire(timeout=60), "the server never answered every stream"
        terminated = time.monotonic()
        os.kill(server.process.pid, signal.SIGTERM)
        server.process.wait(timeout=30)
        stopped.set()
        for t in threads:
            t.join()
    finally:
        stopped.set()
        stop(server)
    before = Counter(kind for started, kind in outcomes if started < terminated)
    after = Counter(kind for started, kind in outcomes if started >= terminated)
    assert before["200"] >= streams and set(before) <= {"200", "503"}, before  # in flight: finished, or a clean 503
    assert "truncated" not in after, after  # never a response cut mid-body
    assert set(after) <= {"200", "503", "closed", "refused"}, after
    # readiness dropped first: after the signal, /readyz turned 503 while the server still answered, for good
    answers = [status for t, status in readiness if t >= terminated]
    assert 503 in answers and set(answers[answers.index(503) :]) == {503}, answers
    assert server.process.returncode == 0


def test_two_minute_soak_has_no_unexpected_status_and_no_gross_leak(tmp_path: Path) -> None:
    """The CI-sized `make soak`: mixed good and bad traffic, JSON and binary, at 40 requests/s."""
    out = tmp_path / "soak.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.soak", "--minutes", "2", "--out", str(out)],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=400,
    )
    report = json.loads(out.read_text())
    assert report["unexpected"] == {}, result.stdout
    assert report["requests"] >= 4000
    assert report["rss_growth"] < 0.05, result.stdout
    assert result.returncode == 0, result.stdout
