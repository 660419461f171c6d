"""Shutdown that a load balancer can follow: readiness drops first, requests in flight finish.

On SIGTERM (or SIGINT) the worker marks itself draining: `/readyz` and `/v2/health/ready` answer 503 and
new model requests get a clean 503 with `Connection: close`, while requests already in flight run to
the end. After `TINYSERVE_DRAIN_SECONDS` the signal goes on to uvicorn, which stops accepting
connections and waits for the rest. And a worker that exits for any other reason is logged by the server
process with its cause (`watch_workers`): an OOM kill leaves no log of its own.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
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


def watch_workers() -> None:
    """In the server process: log each worker that exits, with why (an OOM kill leaves no log of its own).

    BentoML starts its workers under circus and restarts one that dies, silently. circus calls a watcher's
    `after_reap` hook with the exit status of each process it reaps; the hook is added to every watcher as
    BentoML hands them to circus (the arbiter, as service.listeners hooks it too; circus 0.19).
    """
    if "--fd" in sys.argv:
        return  # a worker (BentoML hands it its socket as --fd): the server process watches
    from bentoml._internal.utils import circus

    create_arbiter: Callable[..., Any] = circus.create_standalone_arbiter
    if getattr(create_arbiter, "watches_workers", False):
        return

    def create_standalone_arbiter(watchers: list[Any], *args: Any, **kwargs: Any) -> Any:
        for watcher in watchers:
            watcher.hooks["after_reap"] = _log_exit
            watcher.ignore_hook_failure.append("after_reap")
        return create_arbiter(watchers, *args, **kwargs)

    create_standalone_arbiter.watches_workers = True  # type: ignore[attr-defined]
    circus.create_standalone_arbiter = create_standalone_arbiter
    logger.info("workers: each exit is logged with its cause")


def _log_exit(watcher: Any, process_pid: int, exit_code: int | None = None, **_: Any) -> bool:
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
