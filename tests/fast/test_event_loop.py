"""The heavy work of a large V2 body runs off the event loop; a small body's stays on it (cheaper inline).

Counted in event-loop turns, not seconds: while a coroutine decodes on the loop, no other task runs at
all; while it waits for a thread, the loop keeps turning (and would serve other requests).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import Any

import numpy as np
import pytest

from client import v2 as v2_client
from service import v2
from service.dataplane import DataPlane, V2Result
from service.errors import InvalidInput


async def _decode_and_run(plane: DataPlane, body: bytes, header: str | None) -> V2Result:
    """What the V2 route does with a body: parse the JSON (a thread when large), decode and run."""
    parsed, binary, heavy = await v2.decode_request(body, header)
    return await plane.infer("lenet", None, parsed, binary, offload=heavy)


def _body(images: int, *, binary: bool) -> tuple[bytes, str | None]:
    x = np.random.default_rng(0).random((images, 1, 32, 32), dtype=np.float32)
    tensor: dict[str, Any] = {"name": "x", "shape": list(x.shape), "datatype": "FP32"}
    if not binary:
        return json.dumps({"inputs": [tensor | {"data": x.ravel().tolist()}]}).encode(), None
    body, headers = v2_client.binary_request(x, binary_output=False)
    return body, headers["Inference-Header-Content-Length"]


async def _other_tasks_ran_during(work: Awaitable[Any]) -> int:
    """How many times another task got the loop while `work` was awaited."""
    turns, done = 0, False

    async def other() -> None:
        nonlocal turns
        while not done:
            await asyncio.sleep(0)
            turns += 1

    task = asyncio.create_task(other())
    await asyncio.sleep(0)  # the other task is running
    before = turns
    await work
    during = turns - before
    done = True
    await task
    return during


@pytest.mark.parametrize(
    ("images", "binary", "off_loop"),
    [
        (1, True, False),  # 4 KB
        (64, True, False),  # 256 KB of binary: cheap (~0.2 ms), inline
        (512, True, True),  # 2 MB of binary
        (1, False, False),  # 20 KB of JSON
        (16, False, True),  # 330 KB of JSON (~5 ms to decode)
    ],
)
def test_large_bodies_are_decoded_off_the_event_loop(images: int, binary: bool, off_loop: bool) -> None:
    body, header = _body(images, binary=binary)
    parsed = asyncio.run(_other_tasks_ran_during(v2.decode_request(body, header)))
    assert (parsed > 0) is off_loop, parsed


def test_decoding_on_a_thread_gives_the_same_answer(plane: DataPlane) -> None:
    for binary in (True, False):
        images = 512 if binary else 16
        body, header = _body(images, binary=binary)
        result = asyncio.run(_decode_and_run(plane, body, header))
        x = np.random.default_rng(0).random((images, 1, 32, 32), dtype=np.float32)
        (expected,) = plane.model("lenet").session.session.run(None, {"x": x})
        [(spec, as_binary, logits)] = result.outputs
        assert (spec.name, as_binary) == ("logits", False)
        np.testing.assert_array_equal(logits, expected)


def test_a_bad_large_body_is_refused_from_the_thread_with_the_same_message(plane: DataPlane) -> None:
    body, header = _body(512, binary=True)
    with pytest.raises(InvalidInput, match="4 bytes follow the JSON that no input's binary_data_size"):
        asyncio.run(_decode_and_run(plane, body + b"\0" * 4, header))
