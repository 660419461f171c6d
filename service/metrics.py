"""Prometheus metrics: per model, per route template, and the /metrics exposition the guard serves."""

from __future__ import annotations

import functools
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

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

# Each request of a model version, every front door (with the per-call series above: Triton's statistics,
# service/stats.py)
MODEL_REQUESTS = bentoml.metrics.Counter(
    name="tinyserve_model_requests_total",
    documentation="Inference requests of a model version, every front door, by outcome (success, fail)",
    labelnames=[*_LABELS, "outcome"],
)
MODEL_REQUEST_SECONDS = bentoml.metrics.Counter(
    name="tinyserve_model_request_seconds_total",
    documentation="Their time in the data plane, from the call to the answer, by outcome",
    labelnames=[*_LABELS, "outcome"],
)
MODEL_QUEUE_SECONDS = bentoml.metrics.Counter(
    name="tinyserve_model_queue_seconds_total",
    documentation="Time successful requests waited for a batch",
    labelnames=_LABELS,
)
MODEL_LAST_INFERENCE = bentoml.metrics.Gauge(
    name="tinyserve_model_last_inference_timestamp_seconds",
    documentation="When a model version last answered a request (Unix time)",
    multiprocess_mode="max",  # the latest of every worker's
    labelnames=_LABELS,
)

MODEL_FAMILIES = (MODEL_REQUESTS, MODEL_REQUEST_SECONDS, MODEL_QUEUE_SECONDS, MODEL_LAST_INFERENCE)

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


# Requests by route template, never by raw path: BentoML's own request metrics label the raw path, so every
# distinct unknown URL added series (files under PROMETHEUS_MULTIPROC_DIR, and scrape time) at no cost to
# the sender. Here a path that matches no template, or that no route answered (404), is "other".
ROUTE_TEMPLATES = [
    (template, re.compile(pattern))
    for template, pattern in (
        ("/v1/{model}/predict", r"/v1/[^/]+/predict"),
        ("/v1/lenet/predict-image", r"/v1/lenet/predict-image"),
        ("/v1/models", r"/v1/models"),
        ("/v1/models/{name}", r"/v1/models/[^/]+"),
        ("/v1/models/{name}/pictures/{picture}", r"/v1/models/[^/]+/pictures/[^/]+"),
        ("/v2", r"/v2/?"),
        ("/v2/health/{probe}", r"/v2/health/(live|ready)"),
        ("/v2/models/{name}", r"/v2/models/[^/]+"),
        ("/v2/models/{name}/versions/{version}", r"/v2/models/[^/]+/versions/[^/]+"),
        ("/v2/models/{name}/{action}", r"/v2/models/[^/]+(/versions/[^/]+)?/(ready|infer|stats)"),
        ("/{probe}", r"/(livez|healthz|readyz|metrics)"),
        ("/", r"/"),
        ("/docs.json", r"/docs\.json"),
        ("/static_content/{file}", r"/static_content/.+"),
        ("/ui/{file}", r"/ui(/.*)?"),
    )
]
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
HTTP_REQUESTS = bentoml.metrics.Counter(
    name="tinyserve_http_requests_total",
    documentation="HTTP requests answered, by route template (unknown routes: 'other'), method and status",
    labelnames=["route", "method", "status"],
)
HTTP_SECONDS = bentoml.metrics.Histogram(
    name="tinyserve_http_request_seconds",
    documentation="From a request's arrival at the guard to the end of its answer, by route template",
    labelnames=["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)


def route_label(path: str, status: int) -> str:
    """A bounded label for a request: the template of the route it names, or 'other'."""
    if status == 404:
        return "other"
    return _template(path)


@functools.lru_cache(maxsize=4096)  # bounded: a client choosing paths fills it, never more
def _template(path: str) -> str:
    return next((template for template, pattern in ROUTE_TEMPLATES if pattern.fullmatch(path)), "other")


_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}  # routes x methods x statuses: a few hundred at most


def observe_request(path: str, method: str, status: int, seconds: float) -> None:
    route = route_label(path, status)
    key = (route, method if method in METHODS else "other", str(status))
    children = _children.get(key)
    if children is None:  # `.labels()` on every request cost ~5% of a small request's CPU
        children = _children[key] = (
            HTTP_REQUESTS.labels(route=key[0], method=key[1], status=key[2]),
            HTTP_SECONDS.labels(route=route),
        )
    children[0].inc()
    children[1].observe(seconds)


_scrape = threading.Lock()


def _every_worker() -> Any:
    """The registry with every worker's series where BentoML's workers share files, else this process's.

    prometheus_client directly, as bentoml.metrics advises; imported here, once PROMETHEUS_MULTIPROC_DIR is
    set in the worker.
    """
    import prometheus_client
    from prometheus_client import multiprocess

    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return prometheus_client.REGISTRY
    registry = prometheus_client.CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def exposition() -> tuple[bytes, str]:
    """Every worker's metrics (BentoML's and ours) in Prometheus' text format, and its content type.

    One scrape at a time per worker: a scraper that asks twice waits, it does not double the work.
    """
    import prometheus_client

    with _scrape:
        return prometheus_client.generate_latest(_every_worker()), prometheus_client.CONTENT_TYPE_LATEST


def samples(names: set[str]) -> list[Any]:
    """Every worker's samples of these names (summed over the workers by prometheus_client), one read at a time."""
    with _scrape:
        return [sample for family in _every_worker().collect() for sample in family.samples if sample.name in names]


def forget(model: str, version: str) -> None:
    """An unloaded version's series go away from this process (`UnservedSeriesFilter` hides its files' values)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # multi-process mode: "removal not implemented", hence the filter
        for metric in (ROWS, BATCH_ROWS, INFERENCE_SECONDS, PROVIDER, *MODEL_FAMILIES):
            metric.remove_by_labels({"model": model, "version": version})


_MODEL_LABEL = re.compile(rb'[{,]model="([^"]*)"')
_VERSION_LABEL = re.compile(rb'[{,]version="([^"]*)"')


def hide_unserved(body: bytes, served: set[tuple[str, str]]) -> bytes:
    """The Prometheus text without the tinyserve series of versions no longer served.

    In multi-process mode every worker's values live in files that outlive an unload; the samples of a
    version that this worker does not serve (every worker, once a call converged) are left out.
    """
    kept = []
    for line in body.split(b"\n"):
        if line.startswith(b"tinyserve_") and (model := _MODEL_LABEL.search(line)):
            version = _VERSION_LABEL.search(line)
            if version and (model.group(1).decode(), version.group(1).decode()) not in served:
                continue
        kept.append(line)
    return b"\n".join(kept)


class UnservedSeriesFilter:
    """ASGI: GET /metrics answered without the series of unloaded versions (see hide_unserved)."""

    def __init__(self, app: Any, *, served: Callable[[], set[tuple[str, str]] | None]) -> None:
        self.app = app
        self.served = served

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/metrics" or (served := self.served()) is None:
            await self.app(scope, receive, send)
            return
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def held(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = hide_unserved(b"".join(chunks), served) if start["status"] == 200 else b"".join(chunks)
            headers = [(k, v) for k, v in start.get("headers", []) if k != b"content-length"]
            await send(start | {"headers": [*headers, (b"content-length", b"%d" % len(body))]})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, held)
