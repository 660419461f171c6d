"""The server launcher of benchmarks/server.py for the tests, and a start that must be refused."""

from __future__ import annotations

from pathlib import Path

from benchmarks.server import BENTOML, REPO, Server, free_port, kill, launch, running, stop, wait_ready

__all__ = ["BENTOML", "REPO", "Server", "free_port", "kill", "launch", "refused_start", "running", "stop", "wait_ready"]


def refused_start(log: Path, env: dict[str, str] | None = None, **kwargs: object) -> str:
    """Start a server that must refuse to start: it exits non-zero at once, with one line and no traceback."""
    server = launch(log, env, **kwargs)  # type: ignore[arg-type]
    try:
        server.process.wait(timeout=120)
    finally:
        stop(server)
    assert server.process.returncode not in (0, None)
    output = server.output()
    assert "Traceback" not in output and "] loaded " not in output, output  # and no worker ever started
    (line,) = [line for line in output.splitlines() if line.strip()]
    return line
