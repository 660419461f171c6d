"""Per-model Prometheus metrics, exported on /metrics beside BentoML's own."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import bentoml

from service.errors import ServingError

_LABELS = ["model", "version"]

ROWS = bentoml.metrics.Counter(
    name="tinyserve_rows_inferred_total",
    documentation="Rows run through ONNX Runtime",
    labelnames=_LABELS,
)
BATCH_ROWS = bentoml.metrics.Histogram(
    name="tinyserve_batch_rows",
    documentation="Rows per ONNX Runtime call (adaptive batching merges requests)",
    labelnames=_LABELS,
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
)
INFERENCE_SECONDS = bentoml.metrics.Histogram(
    name="tinyserve_inference_seconds",
    documentation="Wall time of one ONNX Runtime call",
    labelnames=_LABELS,
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
PROVIDER = bentoml.metrics.Gauge(
    name="tinyserve_model_provider",
    documentation="1 for the execution provider each model runs on",
    multiprocess_mode="max",  # every worker sets it: one value, not their sum
    labelnames=[*_LABELS, "provider"],
)
REFUSED = bentoml.metrics.Counter(
    name="tinyserve_requests_refused_total",
    documentation="Model requests the guard answered itself, before any queue: 429 overload, 503 shutting down",
    labelnames=["status"],
)

INFER_REQUESTS = bentoml.metrics.Counter(
    name="tinyserve_infer_requests_total",
    documentation="Open Inference Protocol inference requests by front door (http, grpc) and outcome "
    "(ok, or the HTTP status of the refusal, whatever the transport)",
    labelnames=["protocol", "outcome"],
)


@contextmanager
def counting(protocol: str) -> Iterator[None]:
    """Count one inference request of a front door by its outcome."""
    outcome = "500"
    try:
        yield
        outcome = "ok"
    except ServingError as e:
        outcome = str(e.status)
        raise
    finally:
        INFER_REQUESTS.labels(protocol=protocol, outcome=outcome).inc()


class ModelMetrics:
    """One model's metric children, looked up once (`.labels()` on every call costs ~3% of a request)."""

    def __init__(self, model: str, version: str) -> None:
        self.rows = ROWS.labels(model=model, version=version)
        self.batch_rows = BATCH_ROWS.labels(model=model, version=version)
        self.seconds = INFERENCE_SECONDS.labels(model=model, version=version)

    def observe(self, rows: int, seconds: float) -> None:
        self.rows.inc(rows)
        self.batch_rows.observe(rows)
        self.seconds.observe(seconds)


def set_provider(model: str, version: str, provider: str) -> None:
    PROVIDER.labels(model=model, version=version, provider=provider).set(1)
