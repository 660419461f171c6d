"""The batcher merges what arrives together, never holds a lone request, sheds what waited too long, and closes:
on the event loop, and among other threads (run_blocking)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

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


# -- run_blocking: the same merging among threads that are not the event loop's (the gRPC door's)


class Held(Model):
    """A model whose first call waits until released: the calls that arrive meanwhile queue behind it."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.threads: list[int] = []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.threads.append(threading.get_ident())
        if not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(30)
        return super().__call__(x)


def _queued(batcher: Batcher, n: int) -> None:
    """Wait until `n` calls wait behind the one running."""
    for _ in range(3000):
        if len(batcher._waiting) == n:
            return
        time.sleep(0.01)
    raise AssertionError(f"{len(batcher._waiting)} calls queued, expected {n}")


def _behind_a_held_call(batcher: Batcher, model: Held, first: np.ndarray, rest: list[np.ndarray]) -> list[Future[Any]]:
    """`first` run and held, `rest` queued behind it, then all let go: each call's future, done."""
    with ThreadPoolExecutor(1 + len(rest)) as pool:
        futures = [pool.submit(batcher.run_blocking, first)]
        assert model.entered.wait(30)
        futures += [pool.submit(batcher.run_blocking, x) for x in rest]
        _queued(batcher, len(rest))
        model.release.set()
    return futures


def test_a_lone_threaded_call_runs_on_its_own_thread() -> None:
    model = Held()
    model.entered.set()  # not held
    out = Batcher(model).run_blocking(np.full((3, 1), 2.0, np.float32))
    assert out.ravel().tolist() == [4.0, 4.0, 4.0]
    assert model.calls == [3] and model.threads == [threading.get_ident()]


def test_threaded_calls_that_arrive_during_a_call_share_the_next_one() -> None:
    model = Held()
    batcher = Batcher(model, max_rows=5)
    rest = [np.full((2, 1), float(i), np.float32) for i in range(4)]
    first, *others = _behind_a_held_call(batcher, model, np.full((1, 1), 100.0, np.float32), rest)
    assert first.result().ravel().tolist() == [200.0]
    assert [f.result().ravel().tolist() for f in others] == [[2.0 * i, 2.0 * i] for i in range(4)]  # its own rows
    assert model.calls == [1, 4, 4]  # max_rows 5: two calls of two requests, oldest first
    assert not batcher._leading and not batcher._waiting


def test_a_threaded_call_whose_time_is_up_stops_waiting_and_is_not_run() -> None:
    model = Held()
    batcher = Batcher(model)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(batcher.run_blocking, np.ones((1, 1), np.float32))
        assert model.entered.wait(30)
        with pytest.raises(TimeoutError):
            batcher.run_blocking(np.full((7, 1), 3.0, np.float32), timeout=0.05)
        model.release.set()
        assert first.result(timeout=30).tolist() == [[2.0]]
    assert model.calls == [1] and batcher._blocking == 0
    assert batcher.run_blocking(np.ones((2, 1), np.float32)).tolist() == [[2.0], [2.0]]  # the lead was passed on


def test_an_error_reaches_every_threaded_call_of_its_batch_and_the_next_call_runs() -> None:
    class Broken(Held):
        def __call__(self, x: np.ndarray) -> np.ndarray:
            out = super().__call__(x)
            if len(self.calls) == 2:
                raise RuntimeError("boom")
            return out

    model = Broken()
    batcher = Batcher(model)
    one = np.ones((1, 1), np.float32)
    first, *failing = _behind_a_held_call(batcher, model, one, [one] * 3)
    assert first.result().tolist() == [[2.0]]
    assert [str(f.exception()) for f in failing] == ["boom"] * 3 and model.calls == [1, 3]
    assert batcher.run_blocking(np.ones((1, 1), np.float32)).tolist() == [[2.0]]


def test_a_threaded_call_that_waited_past_the_limit_is_shed() -> None:
    model = Model()
    with pytest.raises(Unavailable, match=SHED):
        Batcher(model, max_wait_s=0.0).run_blocking(np.ones((1, 1), np.float32))
    assert model.calls == []


def test_without_batching_threaded_calls_run_alone_in_turn() -> None:
    model = Held()
    batcher = Batcher(model, enabled=False)
    one = np.ones((1, 1), np.float32)
    assert [f.result().tolist() for f in _behind_a_held_call(batcher, model, one, [one] * 3)] == [[[2.0]]] * 4
    assert model.calls == [1, 1, 1, 1]


def test_close_waits_for_the_threaded_calls_in_progress() -> None:
    model = Held()
    batcher = Batcher(model)

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(batcher.run_blocking, np.ones((1, 1), np.float32))
            assert await asyncio.to_thread(model.entered.wait, 30)
            closing = asyncio.ensure_future(batcher.close())
            await asyncio.sleep(0.05)
            assert not closing.done()  # a threaded call is in progress
            model.release.set()
            await closing
            assert running.result(timeout=30).tolist() == [[2.0]]
        with pytest.raises(Unavailable, match="being unloaded"):
            batcher.run_blocking(np.ones((1, 1), np.float32))

    asyncio.run(main())


def test_rows_of_another_width_wait_for_the_next_call_on_the_loop_and_on_threads() -> None:
    # an input whose card leaves a dimension free: rows of two widths cannot be one array
    model = Model()

    async def main() -> list[np.ndarray]:
        batcher = Batcher(model)
        sent = [np.ones((1, 2), np.float32), np.ones((1, 2), np.float32), np.ones((1, 3), np.float32)]
        return await asyncio.gather(*(batcher(x) for x in sent))

    assert [o.shape for o in asyncio.run(main())] == [(1, 2), (1, 2), (1, 3)] and model.calls == [2, 1]
    held = Held()
    batcher = Batcher(held)
    wide, narrow = np.ones((1, 3), np.float32), np.ones((1, 2), np.float32)
    answers = _behind_a_held_call(batcher, held, narrow, [narrow, wide, narrow])
    assert [f.result().shape for f in answers] == [(1, 2), (1, 2), (1, 3), (1, 2)]
    assert held.calls == [1, 1, 1, 1]  # in order: the wide row is not merged, nor overtaken
