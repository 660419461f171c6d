"""The tinyserve BentoML service: typed `/v1` routes over ONNX Runtime sessions.

The JSON predict routes are BentoML APIs; the GET catalog and the image upload are a small FastAPI app
mounted at /v1 (service.v1), on the same server, sessions and batchers.

Each request goes validate (schemas) -> batch (batching) -> run (runtime) -> encode. Sessions are built
once, at start-up, after every model file is verified against its card and warmed up; `/readyz`
answers 200 only then.
"""

from __future__ import annotations

import logging
from pathlib import Path

import bentoml
import numpy as np

from service import images, listeners, playground, v1, v2
from service.batching import Batcher
from service.errors import ApiError, install_log_filter
from service.lifecycle import LIFECYCLE
from service.middleware import GuardMiddleware
from service.runtime import LoadedModel, load_repository, read_settings, start_up, tune_gc
from service.schemas import (
    BlobsRequest,
    BlobsResponse,
    LenetImageResponse,
    LenetRequest,
    LenetResponse,
    LinearRequest,
    ModelInfo,
    MultilinearRequest,
    RegressionResponse,
    RuntimeInfo,
)

logger = logging.getLogger("bentoml.tinyserve")
SETTINGS = read_settings()
# Before any worker starts: a tampered model or a provider that cannot run stops `bentoml serve` here with
# one line, not in a restart loop; the cores decide the number of workers, which BentoML reads right here.
ENTRIES, RUNTIME = start_up(SETTINGS)
PER_WORKER_SOCKETS = SETTINGS.reuse_port and RUNTIME.shape.workers > 1
listeners.install(per_worker=PER_WORKER_SOCKETS)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities: np.ndarray = z / z.sum(axis=1, keepdims=True)
    return probabilities


def lenet_batch(images_: list[list[list[float]]]) -> np.ndarray:
    """Validated 32x32 / 28x28 images -> (N, 1, 32, 32); 28x28 are zero-padded by 2 on each side."""
    batch = np.zeros((len(images_), 1, 32, 32), dtype=np.float32)
    for i, image in enumerate(images_):
        pad = (32 - len(image)) // 2
        batch[i, 0, pad : 32 - pad, pad : 32 - pad] = image
    return batch


@bentoml.service(
    name="tinyserve",
    workers=RUNTIME.shape.workers,
    traffic={"timeout": 30},
    metrics={"enabled": True},
    logging={"access": {"enabled": SETTINGS.access_log}},
    tracing={} if SETTINGS.tracing else {"excluded_urls": [".*"]},  # off: every URL skips the span work
)
@bentoml.asgi_app(playground.app, path=playground.PATH)
@bentoml.asgi_app(v1.app, path="/v1")
@bentoml.asgi_app(v2.app, path="/")
class TinyServe:
    def __init__(self) -> None:
        install_log_filter()
        self.settings = SETTINGS
        self.runtime = RUNTIME
        self.models: dict[str, LoadedModel] = load_repository(ENTRIES, RUNTIME)
        self.batchers = {
            key: Batcher(
                model,
                enabled=self.settings.batching,
                max_rows=self.settings.max_batch_rows,
                max_latency_ms=self.settings.max_latency_ms,
            )
            for key, model in self.models.items()
            if "/" in key
        }
        logger.info("ready: %s", ", ".join(k for k in self.models if "/" in k))
        logger.info(playground.banner())
        tune_gc()
        LIFECYCLE.install(self.settings.drain_seconds)
        listeners.join(per_worker=PER_WORKER_SOCKETS)  # ready: from now on this worker gets connections

    def __is_ready__(self) -> bool:
        return self.is_ready()

    def is_ready(self) -> bool:
        return bool(self.models) and not LIFECYCLE.draining

    async def infer(self, model: LoadedModel, x: np.ndarray) -> np.ndarray:
        """The one inference path of every route: the model's batcher, then ONNX Runtime."""
        out = await self.batchers[f"{model.name}/{model.version}"](x)
        if not np.isfinite(out).all():  # e.g. V2 binary inputs near float32's limit
            raise ApiError(400, f"the inputs are too large: {model.name}'s output overflows float32")
        return out

    async def _infer(self, name: str, x: np.ndarray) -> tuple[LoadedModel, np.ndarray]:
        model = self.models[name]
        return model, await self.infer(model, x)

    @bentoml.api(route="/v1/linear/predict")
    async def predict_linear(self, request: LinearRequest, /) -> RegressionResponse:
        """Simple linear regression: y = b + w*x (the model fitted y = 7x + 5 + noise)."""
        model, y = await self._infer("linear", np.asarray(request.x, dtype=np.float32).reshape(-1, 1))
        return RegressionResponse(model=model.name, version=model.version, y=y.ravel().tolist())

    @bentoml.api(route="/v1/multilinear/predict")
    async def predict_multilinear(self, request: MultilinearRequest, /) -> RegressionResponse:
        """Multivariate linear regression: three exam scores -> final score."""
        model, y = await self._infer("multilinear", np.asarray(request.x, dtype=np.float32))
        return RegressionResponse(model=model.name, version=model.version, y=y.ravel().tolist())

    @bentoml.api(route="/v1/blobs/predict")
    async def predict_blobs(self, request: BlobsRequest, /) -> BlobsResponse:
        """XOR blobs classifier: label and P(label 1) per 2-D point."""
        model, p = await self._infer("blobs", np.asarray(request.x, dtype=np.float32))
        p = p.ravel()
        return BlobsResponse(
            model=model.name,
            version=model.version,
            labels=(p > 0.5).astype(int).tolist(),
            probabilities=p.tolist(),
        )

    @bentoml.api(route="/v1/lenet/predict")
    async def predict_lenet(self, request: LenetRequest, /) -> LenetResponse:
        """LeNet-5 digits: 32x32 or 28x28 images in [0, 1], ink high -> digit and probabilities."""
        model, logits = await self._infer("lenet", lenet_batch(request.images))
        probabilities = softmax(logits)
        return LenetResponse(
            model=model.name,
            version=model.version,
            labels=probabilities.argmax(axis=1).tolist(),
            probabilities=probabilities.tolist(),
        )

    async def predict_image(self, data: bytes, *, with_input: bool = False) -> LenetImageResponse:
        """An uploaded PNG or JPEG of one digit -> digit (served by service.v1, FastAPI parses the upload)."""
        x = images.to_lenet_input(data)  # raises images.ImageRejected with its status
        model, logits = await self._infer("lenet", x[None])
        probabilities = softmax(logits)[0]
        return LenetImageResponse(
            model=model.name,
            version=model.version,
            label=int(probabilities.argmax()),
            probabilities=probabilities.tolist(),
            input=x[0].tolist() if with_input else None,
        )

    def versions(self, name: str) -> list[str]:
        return [k.split("/", 1)[1] for k in self.models if k.startswith(f"{name}/")]

    def model_info(self, name: str) -> ModelInfo:
        model = self.models[name]
        versions = self.versions(name)
        return ModelInfo(
            name=model.name,
            version=model.version,
            versions=versions,
            provider=model.provider,
            provider_options=model.provider_options,
            ready=True,
            card=model.entry.card.to_dict(),
            pictures=sorted(p.name for p in self.pictures(name)),
        )

    def runtime_info(self) -> RuntimeInfo:
        runtime = self.runtime
        return RuntimeInfo(
            cores=runtime.cores.available,
            cpu_affinity=runtime.cores.affinity,
            cgroup_cpu_quota=runtime.cores.quota,
            workers=runtime.shape.workers,
            intra_op_threads=runtime.shape.threads,
            spinning=runtime.shape.spinning,
            provider=runtime.provider,
            provider_options=runtime.provider_options,
            cuda_fallback=runtime.fallback or None,
        )

    def pictures(self, name: str) -> list[Path]:
        """The training pictures beside the served version's model file (where the bento has them)."""
        return sorted(self.models[name].entry.directory.glob("*.png"))

    def model_names(self) -> list[str]:
        return [k for k in self.models if "/" not in k]


TinyServe.add_asgi_middleware(  # type: ignore[attr-defined]
    GuardMiddleware,
    max_body_bytes=SETTINGS.max_body_bytes,
    max_concurrency=SETTINGS.max_concurrency,
    lifecycle=LIFECYCLE,
    api_token=SETTINGS.api_token.get_secret_value() if SETTINGS.api_token else None,
    quick_ack=SETTINGS.quick_ack,
)
