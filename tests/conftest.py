"""Shared fixtures: the shipped models served by a real `bentoml serve` on a free 127.0.0.1 port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import Reference
from tests.server import Server, running


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The shipped models served as a user would serve them, shared by the HTTP tests."""
    with running(tmp_path_factory.mktemp("server") / "server.log") as s:
        yield s


@pytest.fixture
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def reference(server: Server) -> Reference:
    """ONNX Runtime in process on the provider and options the shared server reports: its expected answers."""
    return Reference(httpx.get(f"{server.url}/v1/models", timeout=30).json())


FAST_TIER = Path(__file__).resolve().parent / "fast"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tier is where a test lives: tests/fast runs in process, every other test starts processes."""
    for item in items:
        if FAST_TIER not in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.process)
