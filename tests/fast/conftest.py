"""The in-process tier: the real ASGI app (BentoML's, with the guard and every front door) in this process.

No server process, no socket: `TestClient(TinyServe.to_asgi())`, as BentoML's own tests do, on the shipped
models (each well under a megabyte). Seconds for the whole tier; `make test-fast` runs it alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from service.dataplane import Batching, DataPlane, load_model
from service.machine import Cores, Shape
from service.registry import Registry
from service.runtime import CPU, Runtime, start_up
from service.server import create_service
from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
RUNTIME = Runtime(Cores(1, None), Shape(1, 1, spinning=False), CPU, {})


def serve_in_process(**settings: object) -> TestClient:
    """The whole service in this process, as `bentoml serve` would build it from these settings."""
    chosen = Settings.model_validate({"workers": 1, "threads": 1, "models_dir": REPO / "models"} | settings)
    service = create_service(start_up(chosen, serving=False))
    return TestClient(service.to_asgi(), raise_server_exceptions=True)


@pytest.fixture(scope="session")
def client() -> Iterator[TestClient]:
    """One per process: BentoML registers its metrics once. Server-Timing on, to see the phases."""
    with serve_in_process(server_timing=True) as c:
        yield c


@pytest.fixture(scope="session")
def plane() -> DataPlane:
    """The data plane alone, over the shipped models."""
    from modelrepo import discover

    return DataPlane(Registry(load_model(e, RUNTIME, Batching()) for e in discover(REPO / "models")), RUNTIME)
