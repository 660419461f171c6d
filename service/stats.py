"""Per-model inference statistics, as Triton's statistics extension reports them (HTTP and gRPC).

From Prometheus counters, so that every worker's requests are in the answer whichever worker gives it (the
multi-process files BentoML's workers share, as /metrics reads them). What each ONNX Runtime call already
counts (service/metrics.py: rows, calls and their time) gives the inference and execution counts and the
compute time; the requests themselves are counted here: by outcome with their time, their time queued for
a batch, and when the last one was answered. A version unloaded and loaded again goes on from its earlier
counts in this server's life, as its series on /metrics do.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from typing import Any

import bentoml

from service.timing import Timing

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
LAST_INFERENCE = bentoml.metrics.Gauge(
    name="tinyserve_model_last_inference_timestamp_seconds",
    documentation="When a model version last answered a request (Unix time)",
    multiprocess_mode="max",  # the latest of every worker's
    labelnames=_LABELS,
)
FAMILIES = (REQUESTS, REQUEST_SECONDS, QUEUE_SECONDS, LAST_INFERENCE)
# Read with them: what service/metrics.py counts per ONNX Runtime call (rows, calls, their time).
_READ = {
    "tinyserve_model_requests_total",
    "tinyserve_model_request_seconds_total",
    "tinyserve_model_queue_seconds_total",
    "tinyserve_model_last_inference_timestamp_seconds",
    "tinyserve_rows_inferred_total",
    "tinyserve_batch_rows_count",
    "tinyserve_inference_seconds_sum",
}


class ModelStats:
    """One version's request counters (children looked up once: `.labels()` costs more than `.inc()`)."""

    def __init__(self, model: str, version: str) -> None:
        labels = {"model": model, "version": version}
        self._success = REQUESTS.labels(**labels, outcome="success")
        self._fail = REQUESTS.labels(**labels, outcome="fail")
        self._success_s = REQUEST_SECONDS.labels(**labels, outcome="success")
        self._fail_s = REQUEST_SECONDS.labels(**labels, outcome="fail")
        self._queue_s = QUEUE_SECONDS.labels(**labels)
        self._last = LAST_INFERENCE.labels(**labels)

    def record(self, seconds: float, timing: Timing, *, ok: bool) -> None:
        """One request's outcome; its time queued from `timing`."""
        self._last.set(time.time())
        if not ok:
            self._fail.inc()
            self._fail_s.inc(seconds)
            return
        self._success.inc()
        self._success_s.inc(seconds)
        self._queue_s.inc(timing.phases.get("queue", 0.0))


Totals = dict[tuple[str, str], dict[str, float]]
_read = threading.Lock()


def totals() -> Totals:
    """(model, version) -> sample name (with its outcome) -> value, summed over every worker."""
    import prometheus_client
    from prometheus_client import multiprocess

    out: Totals = defaultdict(dict)
    with _read:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            families = multiprocess.MultiProcessCollector(None).collect()  # type: ignore[no-untyped-call]
        else:
            families = prometheus_client.REGISTRY.collect()
        for family in families:
            for sample in family.samples:
                if sample.name not in _READ:
                    continue
                key = (sample.labels.get("model", ""), sample.labels.get("version", ""))
                name = sample.name + (f"/{sample.labels['outcome']}" if "outcome" in sample.labels else "")
                out[key][name] = out[key].get(name, 0.0) + sample.value
    return out


def to_dict(name: str, version: str, counts: dict[str, float]) -> dict[str, Any]:
    """Triton's ModelStatistics (the HTTP JSON and the gRPC message's fields) from `totals()[name, version]`.

    Requests merged into one ONNX Runtime call share its compute time (Triton counts the call's time for
    each of its requests); input and output work is in the request's time."""

    def ns(sample: str) -> int:
        return round(counts.get(sample, 0.0) * NS)

    success = round(counts.get("tinyserve_model_requests_total/success", 0.0))
    fail = round(counts.get("tinyserve_model_requests_total/fail", 0.0))
    return {
        "name": name,
        "version": version,
        "last_inference": ns("tinyserve_model_last_inference_timestamp_seconds") // 1_000_000,
        "inference_count": round(counts.get("tinyserve_rows_inferred_total", 0.0)),
        "execution_count": round(counts.get("tinyserve_batch_rows_count", 0.0)),
        "inference_stats": {
            "success": {"count": success, "ns": ns("tinyserve_model_request_seconds_total/success")},
            "fail": {"count": fail, "ns": ns("tinyserve_model_request_seconds_total/fail")},
            "queue": {"count": success, "ns": ns("tinyserve_model_queue_seconds_total")},
            "compute_input": {"count": success, "ns": 0},
            "compute_infer": {"count": success, "ns": ns("tinyserve_inference_seconds_sum")},
            "compute_output": {"count": success, "ns": 0},
            "cache_hit": {"count": 0, "ns": 0},
            "cache_miss": {"count": 0, "ns": 0},
        },
        "batch_stats": [],
        "memory_usage": [],
    }
