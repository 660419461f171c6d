"""One worker's overload guard, shared by its front doors: HTTP and gRPC draw on the same slots.

TINYSERVE_MAX_CONCURRENCY is a worker's limit on model requests in flight, whichever door they came in
by: a client that fills it over HTTP gets RESOURCE_EXHAUSTED on gRPC too, and the other way round (two
counters would let a client hold twice the limit). While the worker drains, both doors refuse new work.
The event loop (HTTP) and the gRPC server's threads take slots: the count changes under a lock.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from service import metrics
from service.errors import Overloaded, ServingError, Unavailable
from service.lifecycle import Lifecycle


class Admission:
    def __init__(self, limit: int, lifecycle: Lifecycle) -> None:
        self.limit = limit
        self.lifecycle = lifecycle
        self.in_flight = 0
        self._lock = threading.Lock()

    def refusal(self) -> ServingError | None:
        """Why a new request may not start now (counted on /metrics), or None."""
        error: ServingError | None = None
        if self.lifecycle.draining:
            error = Unavailable("the server is shutting down; send the request to another instance")
        elif self.in_flight >= self.limit:
            error = Overloaded(
                f"server busy: {self.in_flight} requests in flight, the limit is {self.limit} "
                "(TINYSERVE_MAX_CONCURRENCY); retry after 1 s",
                headers={"retry-after": "1"},
            )
        if error is not None:
            metrics.REFUSED.labels(status=str(error.status)).inc()
        return error

    @contextlib.contextmanager
    def slot(self, *, check: bool = False) -> Iterator[None]:
        """Hold a slot for the request's time; with `check`, the refusal raised instead (checked and taken at
        once: threads call this). Without, the caller checked `refusal()` first."""
        with self._lock:
            if check and (error := self.refusal()) is not None:
                raise error
            self.in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self.in_flight -= 1

    def __call__(self) -> contextlib.AbstractContextManager[None]:
        """A slot, or the refusal raised."""
        return self.slot(check=True)
