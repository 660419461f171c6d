"""The model registry: name -> versions -> a served model (session, batcher, typed contract).

The one place that knows which versions are served. Its state is replaced whole (copy on write), so a
request that took a model keeps it to the end while the registry moves on (see service.control).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelrepo import ModelCard, ModelEntry, ModelKind, TensorSpec, version_key
from service.batching import Batcher
from service.errors import InvalidInput, ModelNotFound, echo
from service.kinds import Contract
from service.runtime import ModelSession
from service.stats import ModelStats
from service.timing import Timing


@dataclass(eq=False)
class ServedModel:
    """One version of one model, loaded, verified and warmed: what a request runs on."""

    entry: ModelEntry
    session: ModelSession
    batcher: Batcher
    contract: Contract
    stats: ModelStats

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def version(self) -> str:
        return self.entry.version

    @property
    def card(self) -> ModelCard:
        return self.entry.card

    @property
    def kind(self) -> ModelKind:
        return self.contract.kind

    @property
    def input(self) -> TensorSpec:
        return self.card.inputs[0]

    @property
    def output(self) -> TensorSpec:
        return self.card.outputs[0]

    @property
    def pictures(self) -> list[Path]:
        """The training pictures beside the model file (where the bento has them)."""
        return sorted(self.entry.directory.glob("*.png"))

    async def infer(self, x: np.ndarray, timing: Timing | None = None) -> np.ndarray:
        """x, checked by the caller against the model's input and rule -> the model's output rows."""
        timing = timing if timing is not None else Timing()
        with self._recorded(timing):
            return self._checked(await self.batcher(x, timing))

    def infer_blocking(self, x: np.ndarray, timing: Timing | None = None, timeout: float | None = None) -> np.ndarray:
        """The same from a thread that is not the event loop's (Batcher.run_blocking)."""
        timing = timing if timing is not None else Timing()
        with self._recorded(timing):
            return self._checked(self.batcher.run_blocking(x, timing, timeout))

    @contextlib.contextmanager
    def _recorded(self, timing: Timing) -> Iterator[None]:
        """The request's outcome and time in the model's statistics."""
        started = time.perf_counter()
        ok = False
        try:
            yield
            ok = True
        finally:
            self.stats.record(time.perf_counter() - started, timing, ok=ok)

    def _checked(self, out: np.ndarray) -> np.ndarray:
        if out.dtype.kind == "f" and not np.isfinite(out).all():  # e.g. V2 binary inputs near float32's limit
            raise InvalidInput(f"the inputs are too large: {self.name}'s output overflows float32")
        return out


class Registry:
    """Every served version, by name; reads see one consistent state."""

    def __init__(self, models: Iterable[ServedModel] = ()) -> None:
        self._models: dict[str, dict[str, ServedModel]] = {}
        for model in models:
            self._models = _with(self._models, model)

    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> list[str]:
        return sorted(self._models.get(name, {}), key=version_key)

    def models(self) -> list[ServedModel]:
        return [self._models[name][version] for name in self.names() for version in self.versions(name)]

    def get(self, name: str, version: str | None = None) -> ServedModel:
        """The version asked for, or the newest; ModelNotFound naming what exists."""
        versions = self._models.get(name)
        if not versions:
            known = ", ".join(self.names()) or "none (no model is served)"
            raise ModelNotFound(f"unknown model {echo(name)}: expected one of {known}")
        if version is None:
            return versions[max(versions, key=version_key)]
        model = versions.get(version)
        if model is None:
            available = ", ".join(self.versions(name))
            raise ModelNotFound(
                f"unknown version {echo(version)} of model '{name}': available versions are {available}"
            )
        return model

    def put(self, model: ServedModel) -> ServedModel | None:
        """Serve `model`; returns the model it replaced (same name and version), if any."""
        replaced = self._models.get(model.name, {}).get(model.version)
        self._models = _with(self._models, model)
        return replaced

    def remove(self, name: str, version: str) -> ServedModel | None:
        versions = dict(self._models.get(name, {}))
        removed = versions.pop(version, None)
        state = dict(self._models)
        if versions:
            state[name] = versions
        else:
            state.pop(name, None)
        self._models = state
        return removed


def _with(state: dict[str, dict[str, ServedModel]], model: ServedModel) -> dict[str, dict[str, ServedModel]]:
    return state | {model.name: state.get(model.name, {}) | {model.version: model}}
