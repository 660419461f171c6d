"""Every bad request gets a 4xx in one envelope whose message names the field, the expectation and what
came; never a 500, never a traceback; and the server keeps serving."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.cases import CASES, JSON, LINEAR, send
from tests.server import Server


@pytest.mark.parametrize(
    ("method", "path", "body", "content_type", "status", "message"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_bad_request_is_refused_with_a_clear_envelope(
    http: httpx.Client, method: str, path: str, body: Any, content_type: str | None, status: int, message: str
) -> None:
    r = send(http, method, path, body, content_type)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    envelope = r.json()
    assert set(envelope) <= {"error", "detail"}
    assert envelope["error"] == message
    assert "Traceback" not in r.text


def test_table_has_at_least_30_distinct_cases() -> None:
    assert len({c[0] for c in CASES}) == len(CASES) >= 30


def test_server_keeps_serving_after_every_bad_request(http: httpx.Client, server: Server) -> None:
    for _, method, path, body, content_type, _, _ in CASES:
        send(http, method, path, body, content_type)
    r = http.post(LINEAR, json={"x": [1.0]})
    assert r.status_code == 200 and r.json()["model"] == "linear"
    assert "Traceback" not in server.output()
    assert server.process.poll() is None


def test_body_over_the_limit_is_413_from_its_content_length(http: httpx.Client) -> None:
    body = b'{"x": [' + b"1.0, " * (4 * 1024 * 1024) + b"1.0]}"  # ~20 MB, over the 16 MiB default
    r = http.post(LINEAR, content=body, headers={"content-type": JSON})
    assert r.status_code == 413
    assert r.json()["error"] == (
        f"request body too large: {len(body)} bytes, the limit is 16777216 (TINYSERVE_MAX_BODY_BYTES)"
    )


def test_chunked_body_over_the_limit_is_413_too(http: httpx.Client) -> None:
    def chunks() -> Any:
        yield b'{"x": ['
        for _ in range(20):
            yield b"1.0, " * (1024 * 1024 // 5)
        yield b"1.0]}"

    r = http.post(LINEAR, content=chunks(), headers={"content-type": JSON})
    assert "content-length" not in r.request.headers  # really chunked
    assert r.status_code == 413
    assert r.json()["error"] == (
        "request body too large: more than 16777216 bytes, the limit is 16777216 (TINYSERVE_MAX_BODY_BYTES)"
    )
    assert http.post(LINEAR, json={"x": [2.0]}).status_code == 200


def test_chunked_body_within_the_limit_is_served(http: httpx.Client) -> None:
    def chunks() -> Any:
        yield b'{"x": [1.0,'
        yield b" 2.0]}"

    r = http.post(LINEAR, content=chunks(), headers={"content-type": JSON})
    assert r.status_code == 200 and len(r.json()["y"]) == 2
