"""Adaptive batching without a timer: requests that arrive together share one ONNX Runtime call.

A request that finds its model idle is run after one turn of the event loop, in which every request
already read joins it; requests that arrive while a call runs queue, and the next call takes them all, up
to `max_rows` rows. Nothing waits for company that is not coming: a lone request pays one loop turn
(microseconds), and under load the batches grow by themselves with the model's own latency, as Triton's
dynamic batcher does with no queue delay. A request that waited in the queue past `max_wait_s` is shed.

Threads that are not the event loop's (the gRPC door's) call `run_blocking` and merge with each other the same
way, without the loop: the first caller to find no call running leads, running what is queued on its own
thread; callers that arrive meanwhile wait, and when the call ends the oldest of them leads the next. A lone
call runs where it arrived, with no thread hop; under load, the same batches form.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import anyio
import numpy as np

from service.errors import Unavailable
from service.timing import Timing

SHED = "the server is overloaded: a request waited longer than TINYSERVE_MAX_LATENCY_MS"


@dataclass
class _Job:
    x: np.ndarray
    future: asyncio.Future[np.ndarray]
    timing: Timing | None
    queued: float = field(default_factory=time.perf_counter)

    @property
    def gone(self) -> bool:
        return self.future.done()  # the client went away

    def answer(self, out: np.ndarray | BaseException) -> None:
        if not self.future.done():
            if isinstance(out, BaseException):
                self.future.set_exception(out)
            else:
                self.future.set_result(out)


@dataclass(eq=False)
class _Waiter:
    """A call of `run_blocking`: its rows, and what its thread is woken with."""

    x: np.ndarray
    timing: Timing | None
    queued: float = field(default_factory=time.perf_counter)
    woken: threading.Event = field(default_factory=threading.Event)
    out: np.ndarray | BaseException | None = None
    lead: bool = False  # woken to run the next call, not with an answer
    gone: bool = False  # stopped waiting (its time was up): not run

    def answer(self, out: np.ndarray | BaseException) -> None:
        self.out = out
        self.woken.set()


J = TypeVar("J", _Job, _Waiter)


def _take(queue: deque[J], max_rows: int, max_wait_s: float) -> list[J]:
    """The next call's jobs, oldest first: the first, then those that fit with it up to `max_rows` rows (rows of
    another shape, an input of a free width, wait for the next call). Jobs whose caller is gone are dropped,
    those that waited past `max_wait_s` shed."""
    jobs: list[J] = []
    rows = 0
    now = time.perf_counter()
    while queue and (not jobs or (rows + len(queue[0].x) <= max_rows and queue[0].x.shape[1:] == jobs[0].x.shape[1:])):
        job = queue.popleft()
        if job.gone:
            continue
        if now - job.queued > max_wait_s:
            job.answer(Unavailable(SHED))
            continue
        if job.timing is not None:
            job.timing.add("queue", now - job.queued)
        jobs.append(job)
        rows += len(job.x)
    return jobs


def _run(run: Callable[[np.ndarray], np.ndarray], jobs: list[J]) -> np.ndarray | BaseException:
    """`run` on the jobs' rows as one array; its error, if it fails."""
    try:
        return run(jobs[0].x if len(jobs) == 1 else np.concatenate([job.x for job in jobs]))
    except Exception as e:
        return e


def _hand_out(jobs: list[J], out: np.ndarray | BaseException, took: float) -> None:
    """Each job its rows of the call's output (or the call's error)."""
    start = 0
    for job in jobs:
        if job.timing is not None:
            job.timing.add("run", took)
        if isinstance(out, BaseException):
            job.answer(out)
            continue
        job.answer(out[start : start + len(job.x)])
        start += len(job.x)


class Batcher:
    """`await batcher(x)` runs `run(x)`, merged with whatever else is queued for the same model."""

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        *,
        enabled: bool = True,
        max_rows: int = 256,
        max_wait_s: float = 1.0,
        inline_values: int = 16384,  # 16 LeNet images (~0.3 ms of ONNX Runtime): below, a thread hop costs more
    ) -> None:
        self.run = run
        self.enabled = enabled
        self.max_rows = max_rows
        self.max_wait_s = max_wait_s
        self.inline_values = inline_values
        self._pending: deque[_Job] = deque()
        self._busy = False  # a call runs on a thread
        self._scheduled = False
        self._closed = False
        self._running: asyncio.Task[None] | None = None
        self._limiter = anyio.CapacityLimiter(1)  # one ONNX Runtime call per model at a time
        self._lock = threading.Lock()  # run_blocking's queue, filled and emptied by other threads than the loop
        self._waiting: deque[_Waiter] = deque()
        self._leading = False  # a thread runs the threads' call now
        self._blocking = 0  # run_blocking calls in progress

    async def __call__(self, x: np.ndarray, timing: Timing | None = None) -> np.ndarray:
        if self._closed:
            raise Unavailable("this model version is being unloaded; send the request again")
        if not self.enabled or len(x) >= self.max_rows:  # a full batch by itself gains nothing from the queue
            return await self._direct(x, timing)
        job = _Job(x, asyncio.get_running_loop().create_future(), timing)
        self._pending.append(job)
        self._schedule()
        return await job.future

    async def close(self) -> None:
        """Refuse new requests, let those queued and running finish."""
        self._closed = True
        while self._pending or self._busy or self._scheduled:
            if self._running is not None:
                await self._running
            else:
                await asyncio.sleep(0)  # a flush is scheduled for this loop turn
        while self._blocking:
            await asyncio.sleep(0.005)  # the other threads' calls end on those threads

    def run_blocking(self, x: np.ndarray, timing: Timing | None = None, timeout: float | None = None) -> np.ndarray:
        """`run(x)` merged with the calls of other threads queued meanwhile, from a thread that is not the event
        loop's. TimeoutError if its answer is not there within `timeout` s (a call already running finishes)."""
        if self._closed:
            raise Unavailable("this model version is being unloaded; send the request again")
        me = _Waiter(x, timing)
        with self._lock:
            self._blocking += 1
            self._waiting.append(me)
            me.lead = not self._leading
            self._leading = True
        try:
            if not me.lead and not me.woken.wait(timeout):
                with self._lock:
                    me.gone = not me.woken.is_set()  # answered or made leader meanwhile: not gone
                if me.gone:
                    raise TimeoutError
            if me.lead:  # from the start, or passed the lead when the call before ended
                self._lead()
        finally:
            with self._lock:
                self._blocking -= 1
        if isinstance(me.out, BaseException):
            raise me.out
        assert me.out is not None
        return me.out

    def _lead(self) -> None:
        """Run the oldest queued calls (the leader's own among them) as one, hand each its rows, then pass the
        lead to the oldest still waiting. Without batching, the oldest alone."""
        with self._lock:
            jobs = _take(self._waiting, self.max_rows if self.enabled else 0, self.max_wait_s)
        try:
            if jobs:
                started = time.perf_counter()
                out = _run(self.run, jobs)
                _hand_out(jobs, out, time.perf_counter() - started)  # the leader's own job too
        finally:
            with self._lock:
                while self._waiting and self._waiting[0].gone:
                    self._waiting.popleft()
                if self._waiting:
                    self._waiting[0].lead = True
                    self._waiting[0].woken.set()
                else:
                    self._leading = False

    async def _direct(self, x: np.ndarray, timing: Timing | None) -> np.ndarray:
        started = time.perf_counter()
        if x.size <= self.inline_values:
            out = self.run(x)
        else:
            out = await anyio.to_thread.run_sync(self.run, x, limiter=self._limiter)
        if timing is not None:
            timing.add("run", time.perf_counter() - started)
        return out

    def _schedule(self) -> None:
        if not self._scheduled and not self._busy and self._pending:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        jobs = _take(self._pending, self.max_rows, self.max_wait_s)
        if not jobs:
            self._schedule()
            return
        if sum(job.x.size for job in jobs) > self.inline_values:
            self._busy = True
            self._running = asyncio.get_running_loop().create_task(self._on_thread(jobs))
            return
        started = time.perf_counter()
        _hand_out(jobs, _run(self.run, jobs), time.perf_counter() - started)
        self._schedule()

    async def _on_thread(self, jobs: list[_Job]) -> None:
        try:
            started = time.perf_counter()
            out = await anyio.to_thread.run_sync(_run, self.run, jobs, limiter=self._limiter)
            _hand_out(jobs, out, time.perf_counter() - started)
        finally:
            self._busy = False
            self._running = None
            self._schedule()
