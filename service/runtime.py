"""ONNX Runtime sessions: provider choice, start-up verification and warm-up, and `run` itself.

`LoadedModel.run` is the only place in the service where `session.run` is called.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

import modelrepo
from service import metrics
from service.settings import Settings
from service.tensors import TensorSpec, spec_from_onnx

logger = logging.getLogger("bentoml.tinyserve")  # a child of bentoml's logger: its handlers, its format

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


class ProviderUnavailable(RuntimeError):
    """`providers=cuda` was asked for, and this onnxruntime build or machine cannot give it."""


def choose_providers(setting: str, available: Sequence[str]) -> list[str]:
    """The providers to ask ONNX Runtime for, by name (it also lists e.g. Azure: never take the list)."""
    if setting == "cpu":
        return [CPU]
    has_cuda = CUDA in available
    if setting == "cuda" and not has_cuda:
        raise ProviderUnavailable(
            f"TINYSERVE_PROVIDERS=cuda, but this onnxruntime build offers only {', '.join(available)}; "
            "install onnxruntime-gpu on a machine with a CUDA GPU, or use auto/cpu"
        )
    if setting not in ("auto", "cuda"):
        raise ValueError(f"providers setting must be auto, cpu or cuda, got {setting!r}")
    return [CUDA, CPU] if has_cuda else [CPU]


@dataclass
class LoadedModel:
    entry: modelrepo.ModelEntry
    session: ort.InferenceSession
    input_name: str
    output_name: str
    provider: str
    inputs: list[TensorSpec]  # as ONNX Runtime reads them from the file
    outputs: list[TensorSpec]
    metrics: metrics.ModelMetrics

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def version(self) -> str:
        return self.entry.version

    def run(self, x: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        (out,) = self.session.run([self.output_name], {self.input_name: x})
        self.metrics.observe(rows=len(x), seconds=time.perf_counter() - started)
        result: np.ndarray = out
        return result


def session_options(settings: Settings) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = settings.intra_op_threads()
    options.inter_op_num_threads = 1
    return options


def load_model(entry: modelrepo.ModelEntry, settings: Settings) -> LoadedModel:
    """Verify the file against its card, open a session with explicit providers, warm it up."""
    modelrepo.verify(entry)
    wanted = choose_providers(settings.providers, ort.get_available_providers())
    session = ort.InferenceSession(str(entry.model_path), session_options(settings), providers=wanted)
    active = session.get_providers()[0]
    if wanted[0] == CUDA and active != CUDA:
        message = f"{entry.model_path}: asked for CUDA, ONNX Runtime fell back to {active}"
        if settings.providers == "cuda":
            raise ProviderUnavailable(message)
        logger.warning("%s (providers=auto: serving on CPU)", message)
    (spec_in,), (spec_out,) = entry.card.inputs, entry.card.outputs
    model = LoadedModel(
        entry,
        session,
        spec_in.name,
        spec_out.name,
        provider=active,
        inputs=[spec_from_onnx(i.name, i.type, i.shape) for i in session.get_inputs()],
        outputs=[spec_from_onnx(o.name, o.type, o.shape) for o in session.get_outputs()],
        metrics=metrics.ModelMetrics(entry.name, entry.version),
    )
    warm = np.zeros((1, *spec_in.shape[1:]), dtype=np.float32)
    out = model.session.run(None, {spec_in.name: warm})[0]
    if out.shape != (1, *spec_out.shape[1:]):
        raise modelrepo.ModelRepositoryError(
            f"{entry.model_path}: warm-up output shape {out.shape} does not match the card's {spec_out.shape}"
        )
    return model


def preflight(settings: Settings) -> list[modelrepo.ModelEntry]:
    """Fail fast, before any worker starts: every model file matches its card, the provider exists.

    BentoML restarts a worker whose start-up fails, forever; checked here, `bentoml serve` (and
    `bentoml build`) stop at once with the reason instead.
    """
    entries = modelrepo.discover(settings.models_dir)
    if not entries:
        raise modelrepo.ModelRepositoryError(f"{settings.models_dir}: no models found")
    for entry in entries:
        modelrepo.verify(entry)
    choose_providers(settings.providers, ort.get_available_providers())
    return entries


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the request path.

    Measured (benchmarks, LeNet, 32 concurrent single-image requests): full collections stalled every
    request in flight for ~100 ms twice a second, p99 7x p50. Freezing the start-up objects (bentoml,
    pydantic, onnxruntime: they are never garbage) and collecting the young generation less often
    removed the stalls: p99 1.7x p50, and 1.3x the requests/s.
    """
    gc.freeze()
    gc.set_threshold(20_000, 20, 40)


def load_repository(settings: Settings) -> dict[str, LoadedModel]:
    """Every version of every model, verified and warmed; keyed by 'name' (latest) and 'name/version'."""
    models: dict[str, LoadedModel] = {}
    for entry in preflight(settings):
        started = time.perf_counter()
        model = load_model(entry, settings)
        models[f"{entry.name}/{entry.version}"] = models[entry.name] = model
        metrics.set_provider(entry.name, entry.version, model.provider)
        logger.info(
            "loaded %s/%s from %s on %s (%d threads, verified, warmed) in %.0f ms",
            entry.name,
            entry.version,
            entry.model_path,
            model.provider,
            settings.intra_op_threads(),
            (time.perf_counter() - started) * 1000,
        )
    return models
