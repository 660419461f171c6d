"""Shutdown that a load balancer can follow: readiness drops first, requests in flight finish.

On SIGTERM (or SIGINT) the worker marks itself draining: `/readyz` and `/v2/health/ready` answer 503 and
new model requests get a clean 503 with `Connection: close`, while requests already in flight run to
the end. After `TINYSERVE_DRAIN_SECONDS` the signal goes on to uvicorn, which stops accepting
connections and waits for the rest.
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
