"""The data plane: what every front door (typed /v1, V2 over HTTP and gRPC, the playground) calls.

Transport-neutral, after MLServer's `DataPlane`: readiness, metadata and inference over the registry,
with the one value rule and typed errors (service.errors). A front door parses its transport, calls one
method here, and encodes the answer or maps the error to its status codes; it decides nothing itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import numpy as np
from fastapi import FastAPI, Request
from starlette.responses import Response

import modelrepo
from service import images, kinds, metrics, stats, tensors
from service.batching import Batcher
from service.errors import InvalidInput, PayloadTooLarge, ServingError, UnsupportedMedia, refusal
from service.kinds import contract
from service.lifecycle import Lifecycle
from service.registry import Registry, ServedModel
from service.runtime import Runtime, open_session
from service.schemas import ImageResponse, ModelInfo, RuntimeInfo
from service.timing import Timing

if TYPE_CHECKING:
    from service.control import Controller

logger = logging.getLogger("bentoml.tinyserve")
T = TypeVar("T")
REJECTED: dict[int, type[ServingError]] = {413: PayloadTooLarge, 415: UnsupportedMedia}


@dataclass(frozen=True)
class Batching:
    enabled: bool = True
    max_rows: int = 256
    max_wait_s: float = 1.0


@dataclass(frozen=True)
class V2Result:
    """A V2 inference's answer: the model that ran, and each requested output as (spec, as binary?, array)."""

    model: ServedModel
    id: str | None
    outputs: list[tuple[modelrepo.TensorSpec, bool, np.ndarray]]


def _v2_result(
    model: ServedModel, request: tensors.InferenceRequest, wanted: list[tensors.WantedOutput], out: np.ndarray
) -> V2Result:
    results = {model.output.name: out}
    return V2Result(model, request.id, [w.take(results[w.spec.name], model.card.labels) for w in wanted])


def front_door(title: str) -> FastAPI:
    """A FastAPI app for a front door: the data plane's typed errors answered in the envelope; no docs pages of
    its own (the server's one document is /docs.json)."""
    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)

    async def refuse(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServingError)
        return refusal(exc)

    app.add_exception_handler(ServingError, refuse)
    return app


async def on_thread_if(heavy: bool, function: Callable[..., T], *args: Any) -> T:
    """Run `function` on a worker thread when the work is heavy; on the event loop (no hop) when not."""
    if not heavy:
        return function(*args)
    return await anyio.to_thread.run_sync(function, *args)


def load_model(entry: modelrepo.ModelEntry, runtime: Runtime, batching: Batching) -> ServedModel:
    """One version from disk: verified against its card, its session warmed, its batcher and contract made."""
    started = time.perf_counter()
    session = open_session(entry, runtime)
    batcher = Batcher(session.run, enabled=batching.enabled, max_rows=batching.max_rows, max_wait_s=batching.max_wait_s)
    model = ServedModel(entry, session, batcher, contract(entry.card), stats.ModelStats(entry.name, entry.version))
    metrics.set_provider(entry.name, entry.version, session.provider)
    logger.info(
        "loaded %s/%s from %s on %s (intra-op threads %d, %s, verified, warmed) in %.0f ms",
        entry.name,
        entry.version,
        entry.model_path,
        session.provider,
        runtime.shape.threads,
        f"calls of at most {session.chunk_rows} rows, spread over {session.threads} threads"
        if session.chunk_rows
        else "a call per batch",
        (time.perf_counter() - started) * 1000,
    )
    return model


class DataPlane:
    def __init__(
        self,
        registry: Registry,
        runtime: Runtime,
        lifecycle: Lifecycle | None = None,
        control: Controller | None = None,  # the repository calls (index, load, unload); None in bare tests
    ) -> None:
        self.registry = registry
        self.runtime = runtime
        self.lifecycle = lifecycle or Lifecycle()
        self.control = control

    # -- health
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return bool(self.registry.names()) and not self.lifecycle.draining

    def model(self, name: str, version: str | None = None) -> ServedModel:
        return self.registry.get(name, version)

    # -- the typed routes
    async def predict(self, name: str, body: bytes, timing: Timing | None = None) -> dict[str, Any]:
        """A typed request's body -> its answer (the model's response model, as a dict)."""
        model = self.registry.get(name)
        timing = timing or Timing()
        with timing.measure("parse"):  # a large body on a thread: its JSON holds the loop for milliseconds
            x = await on_thread_if(len(body) > kinds.LARGE_BODY, model.contract.parse, body)
        out = await model.infer(x, timing)
        with timing.measure("encode"):
            return model.contract.answer(model.name, model.version, out)

    async def predict_image(self, name: str, data: bytes, *, with_input: bool = False) -> ImageResponse:
        """An uploaded picture -> the image classifier's answer."""
        model = self.registry.get(name)
        if model.kind is not modelrepo.ModelKind.IMAGE:
            raise InvalidInput(f"model '{name}' does not take pictures: it is a {model.card.task} model")
        try:
            x = await images.to_lenet_input_async(data)
        except images.ImageRejected as e:
            raise REJECTED.get(e.status, InvalidInput)(str(e)) from None
        out = await model.infer(x[None])
        answer = model.contract.answer(model.name, model.version, out)
        return ImageResponse(
            model=model.name,
            version=model.version,
            label=answer["labels"][0],
            probabilities=answer["probabilities"][0],
            input=x[0].tolist() if with_input else None,
            recognised=answer["recognised"][0] if "recognised" in answer else None,
        )

    # -- the Open Inference Protocol
    async def infer(
        self,
        name: str,
        version: str | None,
        request: tensors.InferenceRequest,
        binary: memoryview,
        timing: Timing | None = None,
        *,
        offload: bool = False,  # a large request: decode its tensors on a thread, off the event loop
    ) -> V2Result:
        model, x, wanted = await on_thread_if(offload, self._decoded, name, version, request, binary)
        return _v2_result(model, request, wanted, await model.infer(x, timing))

    def infer_blocking(
        self,
        name: str,
        version: str | None,
        request: tensors.InferenceRequest,
        binary: memoryview,
        timing: Timing | None = None,
        timeout: float | None = None,
    ) -> V2Result:
        """`infer` from a thread that is not the event loop's (the gRPC door's), all of it on that thread: the
        model's batcher merges it with the other threads' calls (Batcher.run_blocking). TimeoutError if its
        answer is not there within `timeout` s."""
        model, x, wanted = self._decoded(name, version, request, binary)
        return _v2_result(model, request, wanted, model.infer_blocking(x, timing, timeout))

    def _decoded(
        self, name: str, version: str | None, request: tensors.InferenceRequest, binary: memoryview
    ) -> tuple[ServedModel, np.ndarray, list[tensors.WantedOutput]]:
        """The model a V2 request names, its input checked and decoded, and the outputs it asks for."""
        model = self.registry.get(name, version)
        inputs = tensors.decode_inputs(request, binary, list(model.card.inputs))
        return model, inputs[model.input.name], tensors.wanted_outputs(request, list(model.card.outputs))

    def statistics(self, name: str | None = None, version: str | None = None) -> dict[str, Any]:
        """Triton's statistics extension: every served version, or those of one model, or one version."""
        models = [self.registry.get(name, version)] if name and version else self.registry.models()
        if name and not version:
            self.registry.get(name)  # an unknown model is refused, not answered with no rows
            models = [m for m in models if m.name == name]
        counts = stats.totals()  # every worker's
        return {"model_stats": [stats.to_dict(m.name, m.version, counts[m.name, m.version]) for m in models]}

    def metadata(self, model: ServedModel) -> dict[str, Any]:
        return {
            "name": model.name,
            "versions": self.registry.versions(model.name),
            "platform": "onnxruntime_onnx",
            "inputs": [tensors.metadata(s) for s in model.card.inputs],
            "outputs": [tensors.metadata(s) for s in model.card.outputs],
        } | (self.control.describe(model.name) if self.control else {})

    # -- the catalog
    def model_info(self, name: str) -> ModelInfo:
        model = self.registry.get(name)
        return ModelInfo(
            name=model.name,
            version=model.version,
            versions=self.registry.versions(name),
            provider=model.session.provider,
            provider_options=model.session.provider_options,
            ready=True,
            card=model.card.to_dict(),
            pictures=[p.name for p in model.pictures],
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
