"""Where a request's time goes, for the `Server-Timing` header (TINYSERVE_SERVER_TIMING)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class Timing:
    """Phases of one request (parse, validate, queue, run, encode) in seconds; cheap enough to keep always."""

    __slots__ = ("phases",)

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}

    def add(self, phase: str, seconds: float) -> None:
        self.phases[phase] = self.phases.get(phase, 0.0) + seconds

    @contextmanager
    def measure(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, time.perf_counter() - started)

    def header(self) -> str:
        """`parse;dur=0.041, run;dur=0.210` (milliseconds, as the Server-Timing header has them)."""
        return ", ".join(f"{phase};dur={seconds * 1000:.3f}" for phase, seconds in self.phases.items())
