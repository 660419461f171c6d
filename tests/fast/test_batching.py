"""The batcher merges what arrives together, never holds a lone request, sheds what waited too long, and closes."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from service.batching import SHED, Batcher
from service.errors import Unavailable


class Model:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(len(x))
        return x * 2


def test_requests_that_arrive_together_share_one_call() -> None:
    model = Model()

    async def main() -> list[np.ndarray]:
        batcher = Batcher(model, max_rows=64)
        return await asyncio.gather(*(batcher(np.full((2, 1), i, np.float32)) for i in range(8)))

    outs = asyncio.run(main())
    assert model.calls == [16]
    assert [o.ravel().tolist() for o in outs] == [[2.0 * i, 2.0 * i] for i in range(8)]


def test_a_lone_request_runs_in_the_next_loop_turn_without_a_timer() -> None:
    model = Model()

    async def main() -> int:
        batcher = Batcher(model, max_wait_s=3600)
        turns = 0
        task = asyncio.ensure_future(batcher(np.ones((1, 1), np.float32)))
        while not task.done():
            await asyncio.sleep(0)
            turns += 1
        return turns

    assert asyncio.run(main()) <= 3 and model.calls == [1]  # start, flush, resolve: no waiting on a clock


def test_batches_stop_at_max_rows_and_the_rest_follows() -> None:
    model = Model()

    async def main() -> None:
        batcher = Batcher(model, max_rows=5)
        await asyncio.gather(*(batcher(np.ones((2, 1), np.float32)) for _ in range(4)))

    asyncio.run(main())
    assert model.calls == [4, 4]


def test_a_request_of_max_rows_runs_alone_on_a_thread() -> None:
    model = Model()

    async def main() -> np.ndarray:
        return await Batcher(model, max_rows=4, inline_values=1)(np.ones((4, 1), np.float32))

    assert asyncio.run(main()).shape == (4, 1) and model.calls == [4]


def test_a_request_that_waited_past_the_limit_is_shed() -> None:
    model = Model()

    async def main() -> None:
        batcher = Batcher(model, max_wait_s=0.0)
        await batcher(np.ones((1, 1), np.float32))

    with pytest.raises(Unavailable, match=SHED):
        asyncio.run(main())
    assert model.calls == []


def test_an_error_of_the_model_reaches_every_request_of_its_batch() -> None:
    def broken(x: np.ndarray) -> np.ndarray:
        raise RuntimeError("boom")

    async def main() -> list[BaseException | np.ndarray]:
        batcher = Batcher(broken)
        return await asyncio.gather(*(batcher(np.ones((1, 1), np.float32)) for _ in range(3)), return_exceptions=True)

    assert [str(e) for e in asyncio.run(main())] == ["boom"] * 3


def test_close_lets_queued_work_finish_and_refuses_new_work() -> None:
    model = Model()

    async def main() -> None:
        batcher = Batcher(model, inline_values=1)  # on a thread: the close has something to wait for
        queued = [asyncio.ensure_future(batcher(np.ones((2, 1), np.float32))) for _ in range(3)]
        await asyncio.sleep(0)
        await batcher.close()
        assert all(q.done() and q.result().tolist() == [[2.0], [2.0]] for q in queued)
        with pytest.raises(Unavailable, match="being unloaded"):
            await batcher(np.ones((1, 1), np.float32))

    asyncio.run(main())
    assert sum(model.calls) == 6
