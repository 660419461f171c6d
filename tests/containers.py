"""Build the images as `make image` does (deploy/image/build.sh) and run them with a real container engine."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.server import REPO, free_port

VENV_BIN = Path(sys.executable).parent


def engine() -> str:
    """The engine that builds and runs the images here: CONTAINER_ENGINE, else Docker if its daemon answers,
    else Podman. Neither is a failure with the reason, not a skip: CI must run these tests."""
    if chosen := os.environ.get("CONTAINER_ENGINE"):
        return chosen
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        return "docker"
    if shutil.which("podman"):
        return "podman"
    raise RuntimeError("no container engine to run the image: install Podman (make system-deps) or Docker")


def run_flags(name: str) -> list[str]:
    """Flags for every container the tests start."""
    flags = ["--name", name]
    if engine() == "podman":
        # runc: crun refuses hosts whose cgroups are half v1, half v2 (CI machines like this one). Limits below
        # the host's own: Podman's defaults (1M open files) exceed what CI's root may set.
        flags += ["--runtime", "runc", "--ulimit", "nofile=8192:8192", "--ulimit", "nproc=4096:4096"]
    return flags


@dataclass
class Built:
    tag: str  # what build.sh was asked to name it
    image: str  # its id: what the tests run, even if another run moves the tag meanwhile
    output: str  # build.sh's output; its last line names the image and its size


def build(variant: str) -> Built:
    """Run deploy/image/build.sh as `make image` does, into a throwaway BENTOML_HOME.

    The image stays, tagged localhost/tinyserve-test:VARIANT: its layers are the next run's build cache (the
    venv layer is reused while the lock is the same), as they are for a developer's `make image`. The image
    the tag named before is left to `podman image prune`: another checkout's tests may be running it."""
    tag = f"localhost/tinyserve-test:{variant}"
    with tempfile.TemporaryDirectory(prefix="bentoml-home-") as home:
        env = os.environ | {
            "BENTOML_HOME": home,
            "IMAGE": tag,
            "CONTAINER_ENGINE": engine(),
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        }
        done = subprocess.run(
            ["deploy/image/build.sh", variant],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"deploy/image/build.sh {variant} failed ({done.returncode}):\n{done.stdout[-6000:]}")
    return Built(tag, inspect(tag, "{{.Id}}"), done.stdout)


def inspect(image: str, template: str) -> str:
    return subprocess.run(
        [engine(), "image", "inspect", "--format", template, image], capture_output=True, text=True, check=True
    ).stdout.strip()


def run(image: str, *args: str, flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """Run the image to completion (its entrypoint, or `--entrypoint` in flags) without network."""
    name = f"tinyserve-run-{os.getpid()}-{time.monotonic_ns()}"
    command = [engine(), "run", "--rm", "--network", "none", *run_flags(name), *flags, image, *args]
    return subprocess.run(command, capture_output=True, text=True, check=False)


@dataclass
class Container:
    name: str
    url: str
    grpc: str = ""  # host:port of its gRPC port (8001 inside), published as its HTTP port is

    def logs(self) -> str:
        done = subprocess.run([engine(), "logs", self.name], capture_output=True, text=True, check=False)
        return done.stdout + done.stderr

    def stop(self, grace_seconds: int) -> int:
        """`docker stop -t GRACE`: SIGTERM to PID 1, SIGKILL after the grace period; returns the exit code."""
        subprocess.run([engine(), "stop", "-t", str(grace_seconds), self.name], capture_output=True, check=True)
        state = subprocess.run(
            [engine(), "inspect", "--format", "{{.State.ExitCode}}", self.name], capture_output=True, text=True
        )
        return int(state.stdout.strip())


@contextlib.contextmanager
def serving(image: str, env: dict[str, str] | None = None, timeout: float = 180) -> Iterator[Container]:
    """The image served as `docker run -p 3000:3000 IMAGE` would, on a free 127.0.0.1 port, until ready."""
    port, grpc_port = free_port(), free_port()
    container = Container(f"tinyserve-test-{os.getpid()}-{port}", f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}")
    variables = [f"--env={key}={value}" for key, value in (env or {}).items()]
    published = ["-p", f"127.0.0.1:{port}:3000", "-p", f"127.0.0.1:{grpc_port}:8001"]
    command = [engine(), "run", "--detach", *run_flags(container.name), *published, *variables]
    subprocess.run([*command, image], capture_output=True, text=True, check=True)
    try:
        _wait_ready(container, timeout)
        yield container
    finally:
        subprocess.run([engine(), "rm", "--force", container.name], capture_output=True, check=False)


def _wait_ready(container: Container, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{container.url}/readyz", timeout=2).status_code == 200:
                return
        state = subprocess.run(
            [engine(), "inspect", "--format", "{{.State.Running}}", container.name], capture_output=True, text=True
        ).stdout.strip()
        if state == "false":
            raise RuntimeError(f"container exited before it was ready:\n{container.logs()}")
        time.sleep(0.25)
    raise TimeoutError(f"container not ready after {timeout}s:\n{container.logs()}")
