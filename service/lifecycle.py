"""Shutdown that a load balancer can follow: readiness drops first, requests in flight finish.

On SIGTERM (or SIGINT) the worker marks itself draining: `/readyz` and `/v2/health/ready` answer 503 and
new model requests get a clean 503 with `Connection: close`, while requests already in flight run to
the end. After `TINYSERVE_DRAIN_SECONDS` the signal goes on to uvicorn, which stops accepting
connections and waits for the rest. And a worker that exits for any other reason is logged by the server
process with its cause (`log_exit`, hooked into circus by service.compat): an OOM kill leaves no log of its own.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

logger = logging.getLogger("bentoml.tinyserve")


class Lifecycle:
    def __init__(self) -> None:
        self.draining = False

    def install(self, drain_seconds: float) -> None:
        """Chain in front of the server's own SIGTERM/SIGINT handlers (uvicorn's, installed by now)."""
        loop = asyncio.get_event_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(signum)
            if callable(previous):
                signal.signal(signum, self._handler(loop, previous, drain_seconds))

    def _handler(
        self, loop: asyncio.AbstractEventLoop, previous: Callable[[int, FrameType | None], Any], drain: float
    ) -> Callable[[int, FrameType | None], None]:
        def on_signal(signum: int, frame: FrameType | None) -> None:
            if self.draining:  # a second signal: stop now
                previous(signum, frame)
                return
            self.draining = True
            logger.info("%s: not ready any more; draining for %.1f s", signal.Signals(signum).name, drain)
            loop.call_soon_threadsafe(loop.call_later, drain, previous, signum, frame)

        return on_signal


LIFECYCLE = Lifecycle()  # one per worker process


def log_exit(watcher: Any, process_pid: int, exit_code: int | None = None, **_: Any) -> bool:
    """circus's `after_reap` hook (service.compat installs it): one line per worker that exits, with why."""
    logger.log(*exit_cause(watcher.name, process_pid, exit_code))
    return True


def exit_cause(name: str, pid: int, exit_code: int | None) -> tuple[int, str, str, int, str]:
    """(level, format, name, pid, cause) for a worker's exit: a signal's name, and what usually sends it."""
    if exit_code is None or exit_code >= 0:
        level = logging.INFO if exit_code == 0 else logging.WARNING
        return level, "worker %s (pid %d) exited: %s", name, pid, f"exit code {exit_code}"
    name_of = signal.Signals(-exit_code).name if -exit_code in signal.valid_signals() else f"signal {-exit_code}"
    why = " (the kernel's OOM killer, or a container's memory limit, sends it)" if exit_code == -signal.SIGKILL else ""
    stopped = -exit_code in (signal.SIGTERM, signal.SIGINT)  # asked to stop: a shutdown, not a failure
    level = logging.INFO if stopped else logging.WARNING
    return level, "worker %s (pid %d) exited: %s", name, pid, f"{'stopped' if stopped else 'killed'} by {name_of}{why}"
