"""Start and stop real `bentoml serve` processes on free 127.0.0.1 ports (benchmarks and tests: tests/server.py)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
BENTOML = str(Path(sys.executable).parent / "bentoml")
LOCAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")  # the ports the kernel gives connections


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    grpc: str = ""  # host:port of the gRPC front door ("" when it is off)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def free_port() -> int:
    """A port nothing listens on, below the kernel's ephemeral range: a port the kernel hands out (bind to
    port 0) may meanwhile become another connection's local port, and the server's bind then fails."""
    low = int(LOCAL_RANGE.read_text().split()[0]) if LOCAL_RANGE.exists() else 32768
    while True:
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def launch(
    log: Path,
    env: dict[str, str] | None = None,
    target: str = "service.app:TinyServe",
    cwd: Path = REPO,
    wrapper: tuple[str, ...] = (),  # a command that runs the server, e.g. a sandbox
    port: int | None = None,
) -> Server:
    port = port or free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TINYSERVE_")}
    # Each server its own BENTOML_HOME: servers that share one share (and wipe) its Prometheus directory.
    home = log.parent / f"bentoml-home-{port}"
    full_env.update({"BENTOML_DO_NOT_TRACK": "True", "BENTOML_HOME": str(home)})
    full_env["TINYSERVE_GRPC_PORT"] = str(free_port())  # never the default 8001: servers of other tests share none
    full_env.update(env or {})
    handle = log.open("wb")
    process = subprocess.Popen(
        [*wrapper, BENTOML, "serve", target, "--host", "127.0.0.1", "--port", str(port)],
        cwd=cwd,
        env=full_env,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    grpc_port = full_env["TINYSERVE_GRPC_PORT"]
    return Server(f"http://127.0.0.1:{port}", process, log, f"127.0.0.1:{grpc_port}" if grpc_port != "0" else "")


def wait_ready(server: Server, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.output()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"server not ready after {timeout}s:\n{server.output()}")


def family(pid: int) -> list[psutil.Process]:
    """The process `pid` and every process it started (BentoML's workers, Ray's daemons); [] once it is gone."""
    with contextlib.suppress(psutil.NoSuchProcess):
        top = psutil.Process(pid)
        return [top, *top.children(recursive=True)]
    return []


def tree_cpu_s(pid: int) -> dict[int, float]:
    """CPU seconds (user and system) used so far by each process of `pid`'s tree, by pid."""
    used = {}
    for process in family(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            used[process.pid] = times.user + times.system
    return used


def costed(pid: int, case: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """`case(*args, **kwargs)` (a load generator's result), with what it cost the server whose process is `pid`.

    The CPU is read around the whole load, so it counts the warm-up requests too (and whatever the server does
    by itself meanwhile): `server_cpu_us` divides it by every request sent, warm-up included. `busiest_share`
    is the part of it one process used: near 1 / workers where the connections spread over the workers, near
    1 where one worker took them all.
    """
    before = tree_cpu_s(pid)
    result = case(*args, **kwargs)
    used = [total - before.get(process, 0.0) for process, total in tree_cpu_s(pid).items()]
    result["server_cpu_us"] = sum(used) / max(result["requests"] + result["warm_up"], 1) * 1e6
    result["busiest_share"] = max(used) / sum(used) if sum(used) > 0 else None
    return result


def kill(server: Server) -> None:
    """SIGKILL the server and every process it started (BentoML's workers are not all in its group)."""
    for process in family(server.process.pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    server.process.wait()


def stop(server: Server) -> None:
    if server.process.poll() is None:
        children = psutil.Process(server.process.pid).children(recursive=True)
        os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            kill(server)
        for child in children:  # a worker outside the group must not outlive the test
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


@contextlib.contextmanager
def running(log: Path, env: dict[str, str] | None = None, **kwargs: object) -> Iterator[Server]:
    server = launch(log, env, **kwargs)  # type: ignore[arg-type]
    try:
        wait_ready(server)
        yield server
    finally:
        stop(server)
