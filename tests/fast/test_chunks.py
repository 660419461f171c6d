"""A big batch runs as ONNX Runtime calls of a few rows on a one-thread CPU session, with the same answers."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest

from modelrepo import TensorSpec, discover
from service.machine import Cores, Shape
from service.runtime import CPU, CUDA, Runtime, open_session
from tests.fast.conftest import REPO

ENTRIES = {entry.name: entry for entry in discover(REPO / "models")}
ONE_THREAD = Runtime(Cores(1, None), Shape(1, 1, spinning=False), CPU, {}, chunk_bytes=65536)


class Counting:
    """The real session, with the batch size of each of its calls written down."""

    def __init__(self, session: ort.InferenceSession, meet: int = 0) -> None:
        self.session = session
        self.rows: list[int] = []
        self.threads: set[str] = set()
        # each of `meet` threads waits, on its first call, for the others' first: each is sure to make one
        self.meet = threading.Barrier(meet, timeout=30) if meet else None

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.rows.append(len(next(iter(feeds.values()))))
        thread = threading.current_thread().name
        if thread not in self.threads:
            self.threads.add(thread)
            if self.meet is not None:
                self.meet.wait()
        result: list[np.ndarray] = self.session.run(names, feeds)
        return result


def test_rows_per_call_follow_the_input_size_and_only_on_a_one_thread_cpu_session() -> None:
    lenet, linear = ENTRIES["lenet"].card.inputs[0], ENTRIES["linear"].card.inputs[0]
    assert ONE_THREAD.chunk_rows(lenet) == 16  # 65,536 bytes of 1x32x32 float32 images
    assert ONE_THREAD.chunk_rows(linear) == 16384  # one float a row: no batch it takes is ever split
    two_threads = Runtime(ONE_THREAD.cores, Shape(1, 2, spinning=False), CPU, {}, chunk_bytes=65536)
    on_cuda = Runtime(ONE_THREAD.cores, ONE_THREAD.shape, CUDA, {}, chunk_bytes=65536)
    off = Runtime(ONE_THREAD.cores, ONE_THREAD.shape, CPU, {}, chunk_bytes=0)
    assert [r.chunk_rows(lenet) for r in (two_threads, on_cuda, off)] == [None, None, None]


@pytest.mark.parametrize("rows", [1, 16, 17, 1000])
def test_a_batch_in_pieces_answers_as_one_call_in_order(rows: int) -> None:
    model = open_session(ENTRIES["lenet"], ONE_THREAD)
    x = np.random.default_rng(rows).random((rows, 1, 32, 32), dtype=np.float32)
    whole = model.session.run(None, {"x": x})[0]
    counting = Counting(model.session)
    model.session = counting  # type: ignore[assignment]
    out = model.run(x)
    assert counting.rows == [16] * (rows // 16) + ([rows % 16] if rows % 16 else [])
    np.testing.assert_array_equal(out, whole)  # bit for bit: each row's answer does not depend on its batch


@pytest.mark.parametrize(("rows", "helpers"), [(17, 0), (48, 0), (49, 1), (1000, 1)])
def test_a_long_batch_s_calls_are_spread_over_threads_with_the_same_answers(rows: int, helpers: int) -> None:
    """Two threads take the calls in turn: at least two calls each (49 rows: 4), or the caller runs them all."""
    two = replace(ONE_THREAD, cores=Cores(2, None), bulk_threads=2)
    assert two.spread(ENTRIES["lenet"].card.inputs[0]) == 2
    assert two.spread(ENTRIES["linear"].card.inputs[0]) == 2  # spread once cut: past 16,384 rows
    model = open_session(ENTRIES["lenet"], two)
    assert model.threads == 2
    x = np.random.default_rng(rows).random((rows, 1, 32, 32), dtype=np.float32)
    whole = model.session.run(None, {"x": x})[0]
    counting = Counting(model.session, meet=1 + helpers)
    model.session = counting  # type: ignore[assignment]
    out = model.run(x)
    assert sorted(counting.rows, reverse=True) == [16] * (rows // 16) + ([rows % 16] if rows % 16 else [])
    assert len(counting.threads) == 1 + helpers
    assert threading.current_thread().name in counting.threads
    np.testing.assert_array_equal(out, whole)


class FailingOnHelpers(Counting):
    """The real session, except that a call made by any thread but the caller's fails."""

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = super().run(names, feeds)  # meets the other thread first: the helper is sure to make a call
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("a helper's call failed")
        return result


def test_a_call_that_fails_on_a_helper_fails_the_batch() -> None:
    """The caller's own calls all succeed; the batch still fails, with the helper's error, and runs on after."""
    model = open_session(ENTRIES["lenet"], replace(ONE_THREAD, bulk_threads=2))
    session = model.session
    x = np.random.default_rng(0).random((256, 1, 32, 32), dtype=np.float32)
    model.session = FailingOnHelpers(session, meet=2)  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match="a helper's call failed"):
        model.run(x)
    model.session = session
    np.testing.assert_array_equal(model.run(x), session.run(None, {"x": x})[0])


@pytest.mark.parametrize(("shape", "dtype"), [((-1, -1), "float32"), ((-1, 3), "bytes"), ((-1, 3), "no-such-type")])
def test_rows_of_no_fixed_size_in_bytes_run_whole(shape: tuple[int, ...], dtype: str) -> None:
    """A dynamic axis besides the batch, or rows of strings: no size to cut by, so one call per batch."""
    assert ONE_THREAD.chunk_rows(TensorSpec("x", dtype, shape)) is None
