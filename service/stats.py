"""Per-model inference statistics, as Triton's statistics extension reports them (HTTP and gRPC).

Counted in each worker process for the models it serves: requests that succeeded or failed with their
time, time queued for a batch, time in ONNX Runtime, rows inferred and ONNX Runtime calls made.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from service.timing import Timing

T = TypeVar("T")
NS = 1_000_000_000


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += int(seconds * NS)

    def to_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


class ModelStats:
    def __init__(self) -> None:
        self.success = Duration()
        self.fail = Duration()
        self.queue = Duration()
        self.compute_infer = Duration()
        self.inference_count = 0  # rows, as Triton counts each inference of a batched request
        self.execution_count = 0  # ONNX Runtime calls: fewer than requests when the batcher merges them
        self.last_inference_ms = 0

    def counting(self, run: Callable[[Any], T]) -> Callable[[Any], T]:
        """`run`, counting its calls (the batcher's ONNX Runtime calls)."""

        def counted(x: Any) -> T:
            self.execution_count += 1
            return run(x)

        return counted

    def record(self, rows: int, seconds: float, timing: Timing, *, ok: bool) -> None:
        """One request's outcome; its queue and run phases from `timing`."""
        self.last_inference_ms = int(time.time() * 1000)
        if not ok:
            self.fail.add(seconds)
            return
        self.success.add(seconds)
        self.inference_count += rows
        self.queue.add(timing.phases.get("queue", 0.0))
        self.compute_infer.add(timing.phases.get("run", 0.0))

    def to_dict(self, name: str, version: str) -> dict[str, Any]:
        """Triton's ModelStatistics (the HTTP JSON and the gRPC message's fields)."""
        unmeasured = Duration(self.success.count).to_dict()  # input and output work is in the request time
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.to_dict(),
                "fail": self.fail.to_dict(),
                "queue": self.queue.to_dict(),
                "compute_input": unmeasured,
                "compute_infer": self.compute_infer.to_dict(),
                "compute_output": unmeasured,
                "cache_hit": Duration().to_dict(),
                "cache_miss": Duration().to_dict(),
            },
            "batch_stats": [],
            "memory_usage": [],
        }
