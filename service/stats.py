"""Per-model inference statistics, as Triton's statistics extension reports them (HTTP and gRPC).

Counted as Prometheus counters, so that every worker's requests are in the answer whichever worker gives
it (the multi-process files BentoML's workers share, as /metrics reads them): requests that succeeded or
failed with their time, time queued for a batch, time in ONNX Runtime, rows inferred and ONNX Runtime
calls made. The counters are on /metrics too (`tinyserve_model_*`). A version unloaded and loaded again
goes on from its earlier counts in this server's life, as its series on /metrics do.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any, TypeVar

import bentoml

from service.timing import Timing

T = TypeVar("T")
NS = 1_000_000_000
_LABELS = ["model", "version"]


def _counter(name: str, documentation: str, *labels: str) -> Any:
    return bentoml.metrics.Counter(
        name=f"tinyserve_model_{name}", documentation=documentation, labelnames=[*_LABELS, *labels]
    )


REQUESTS = _counter("requests_total", "Inference requests of a model version, every front door, by outcome", "outcome")
REQUEST_SECONDS = _counter(
    "request_seconds_total", "Their time in the data plane, call to answer, by outcome", "outcome"
)
QUEUE_SECONDS = _counter("queue_seconds_total", "Time successful requests waited for a batch")
COMPUTE_SECONDS = _counter(
    "compute_seconds_total", "Time successful requests spent in ONNX Runtime (a merged batch's time counts for each)"
)
INFERENCES = _counter("inferences_total", "Rows of successful requests (Triton's inference_count)")
EXECUTIONS = _counter(
    "executions_total", "ONNX Runtime calls for requests: fewer than requests when batches merge them"
)
LAST_INFERENCE = bentoml.metrics.Gauge(
    name="tinyserve_model_last_inference_timestamp_seconds",
    documentation="When a model version last answered a request (Unix time)",
    multiprocess_mode="max",  # the latest of every worker's
    labelnames=_LABELS,
)
FAMILIES = (REQUESTS, REQUEST_SECONDS, QUEUE_SECONDS, COMPUTE_SECONDS, INFERENCES, EXECUTIONS, LAST_INFERENCE)


class ModelStats:
    """One version's counters (children looked up once: `.labels()` per request costs more than `.inc()`)."""

    def __init__(self, model: str, version: str) -> None:
        self.model, self.version = model, version
        labels = {"model": model, "version": version}
        self._success = REQUESTS.labels(**labels, outcome="success")
        self._fail = REQUESTS.labels(**labels, outcome="fail")
        self._success_s = REQUEST_SECONDS.labels(**labels, outcome="success")
        self._fail_s = REQUEST_SECONDS.labels(**labels, outcome="fail")
        self._queue_s = QUEUE_SECONDS.labels(**labels)
        self._compute_s = COMPUTE_SECONDS.labels(**labels)
        self._inferences = INFERENCES.labels(**labels)
        self._executions = EXECUTIONS.labels(**labels)
        self._last = LAST_INFERENCE.labels(**labels)

    def counting(self, run: Callable[[Any], T]) -> Callable[[Any], T]:
        """`run`, counting its calls (the batcher's ONNX Runtime calls)."""

        def counted(x: Any) -> T:
            self._executions.inc()
            return run(x)

        return counted

    def record(self, rows: int, seconds: float, timing: Timing, *, ok: bool) -> None:
        """One request's outcome; its queue and run phases from `timing`."""
        self._last.set(time.time())
        if not ok:
            self._fail.inc()
            self._fail_s.inc(seconds)
            return
        self._success.inc()
        self._success_s.inc(seconds)
        self._inferences.inc(rows)
        self._queue_s.inc(timing.phases.get("queue", 0.0))
        self._compute_s.inc(timing.phases.get("run", 0.0))


Totals = dict[tuple[str, str], dict[str, float]]
_read = threading.Lock()


def totals() -> Totals:
    """(model, version) -> sample name (with the outcome) -> value, summed over every worker."""
    import prometheus_client
    from prometheus_client import multiprocess

    out: Totals = defaultdict(dict)
    with _read:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            families = multiprocess.MultiProcessCollector(None).collect()  # type: ignore[no-untyped-call]
        else:
            families = prometheus_client.REGISTRY.collect()
        for family in families:
            if not family.name.startswith("tinyserve_model_") or family.name == "tinyserve_model_provider":
                continue
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                key = (sample.labels.get("model", ""), sample.labels.get("version", ""))
                name = sample.name + (f"/{sample.labels['outcome']}" if "outcome" in sample.labels else "")
                out[key][name] = out[key].get(name, 0.0) + sample.value
    return out


def to_dict(name: str, version: str, counts: dict[str, float]) -> dict[str, Any]:
    """Triton's ModelStatistics (the HTTP JSON and the gRPC message's fields) from `totals()[name, version]`."""

    def count(metric: str) -> int:
        return round(counts.get(metric, 0.0))

    def duration(requests: str, seconds: str) -> dict[str, int]:
        return {"count": count(requests), "ns": round(counts.get(seconds, 0.0) * NS)}

    success = count("tinyserve_model_requests_total/success")
    unmeasured = {"count": success, "ns": 0}  # input and output work is in the request time
    return {
        "name": name,
        "version": version,
        "last_inference": round(counts.get("tinyserve_model_last_inference_timestamp_seconds", 0.0) * 1000),
        "inference_count": count("tinyserve_model_inferences_total"),
        "execution_count": count("tinyserve_model_executions_total"),
        "inference_stats": {
            "success": duration(
                "tinyserve_model_requests_total/success", "tinyserve_model_request_seconds_total/success"
            ),
            "fail": duration("tinyserve_model_requests_total/fail", "tinyserve_model_request_seconds_total/fail"),
            "queue": {"count": success, "ns": round(counts.get("tinyserve_model_queue_seconds_total", 0.0) * NS)},
            "compute_input": unmeasured,
            "compute_infer": {
                "count": success,
                "ns": round(counts.get("tinyserve_model_compute_seconds_total", 0.0) * NS),
            },
            "compute_output": unmeasured,
            "cache_hit": {"count": 0, "ns": 0},
            "cache_miss": {"count": 0, "ns": 0},
        },
        "batch_stats": [],
        "memory_usage": [],
    }
