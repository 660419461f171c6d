"""Adaptive batching of validated rows, by BentoML's own dispatcher.

BentoML's `batchable=True` APIs cannot take a Pydantic model (every request fails with 500), and the
typed routes must. So the routes validate first, then hand their rows to `CorkDispatcher`, the engine
behind `batchable` APIs: it learns the model's latency, merges queued requests up to `max_batch_rows`
rows (splitting a request that does not fit), and sheds requests that waited past `max_latency_ms`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import NoReturn

import anyio
import numpy as np
from bentoml._internal.marshal.dispatcher import CorkDispatcher
from bentoml.exceptions import ServiceUnavailable

from service.runtime import LoadedModel


def _shed() -> NoReturn:
    raise ServiceUnavailable("the server is overloaded: a request waited longer than TINYSERVE_MAX_LATENCY_MS")


class Batcher:
    """`await batcher(x)` runs `model.run` on x, merged with whatever else is queued for this model."""

    def __init__(
        self, model: LoadedModel, *, enabled: bool, max_rows: int, max_latency_ms: int, inline_values: int = 16384
    ) -> None:
        self.model = model
        self.enabled = enabled
        self.inline_values = inline_values  # 16 LeNet images (~0.3 ms of ONNX Runtime) or 16k rows of linear
        self.max_rows = max_rows
        dispatcher = CorkDispatcher(
            max_latency_in_ms=max_latency_ms,
            max_batch_size=max_rows,
            fallback=_shed,
            get_batch_size=len,
            batch_dim=(0, 0),
        )
        self._dispatch: Callable[[np.ndarray], Awaitable[np.ndarray]] = dispatcher(self._run_merged)  # type: ignore[arg-type,assignment]
        self._limiter = anyio.CapacityLimiter(1)  # one ORT call per model at a time

    async def __call__(self, x: np.ndarray) -> np.ndarray:
        if not self.enabled or len(x) >= self.max_rows:  # a full batch by itself gains nothing from the queue
            return await self._run(x)
        return await self._dispatch(x)

    async def _run(self, x: np.ndarray) -> np.ndarray:
        """Small calls run on the event loop: the hop to a thread costs more than they do."""
        if x.size <= self.inline_values:
            return self.model.run(x)
        return await anyio.to_thread.run_sync(self.model.run, x, limiter=self._limiter)

    async def _run_merged(self, parts: Sequence[np.ndarray]) -> list[np.ndarray]:
        merged = parts[0] if len(parts) == 1 else np.concatenate(parts)
        out = await self._run(merged)
        bounds = np.cumsum([len(p) for p in parts])[:-1]
        return np.split(out, bounds)
