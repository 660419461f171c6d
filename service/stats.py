"""Per-model inference statistics, as Triton's statistics extension reports them (HTTP and gRPC).

From Prometheus series (service/metrics.py), read over every worker as /metrics reads them, so that every
worker's requests are in the answer whichever worker gives it. What each ONNX Runtime call already counts
(rows, calls and their time) gives the inference and execution counts and the compute time; the requests
are counted here: by outcome with their time, their time queued for a batch, and when the last one was
answered. A version unloaded and loaded again goes on from its earlier counts in this server's life, as its
series on /metrics do.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from service import metrics
from service.timing import Timing

NS = 1_000_000_000
# What Triton's statistics are made of: the requests' own series and what each ONNX Runtime call counts
# (rows, calls, their time), all in service/metrics.py.
SAMPLES = {
    "tinyserve_model_requests_total",
    "tinyserve_model_request_seconds_total",
    "tinyserve_model_queue_seconds_total",
    "tinyserve_model_last_inference_timestamp_seconds",
    "tinyserve_rows_inferred_total",
    "tinyserve_batch_rows_count",
    "tinyserve_inference_seconds_sum",
}


class ModelStats:
    """One version's request series (children looked up once: `.labels()` costs more than `.inc()`)."""

    def __init__(self, model: str, version: str) -> None:
        labels = {"model": model, "version": version}
        self._success = metrics.MODEL_REQUESTS.labels(**labels, outcome="success")
        self._fail = metrics.MODEL_REQUESTS.labels(**labels, outcome="fail")
        self._success_s = metrics.MODEL_REQUEST_SECONDS.labels(**labels, outcome="success")
        self._fail_s = metrics.MODEL_REQUEST_SECONDS.labels(**labels, outcome="fail")
        self._queue_s = metrics.MODEL_QUEUE_SECONDS.labels(**labels)
        self._last = metrics.MODEL_LAST_INFERENCE.labels(**labels)

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


def totals() -> Totals:
    """(model, version) -> sample name (with its outcome) -> value, summed over every worker."""
    out: Totals = defaultdict(dict)
    for sample in metrics.samples(SAMPLES):
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
