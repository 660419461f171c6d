"""The CUDA image, built as `make image-cuda` builds it (no GPU here, so it is not served): the base of the CPU
image, onnxruntime-gpu with the CUDA and cuDNN wheels its provider needs, TINYSERVE_PROVIDERS=cuda."""

from __future__ import annotations

import re

import pytest

from tests import containers
from tests.server import REPO
from tests.test_image import USER, installed_versions, locked_versions

pytestmark = pytest.mark.timeout(1800)  # builds the CUDA image (~3 GB)

# The one library the image must not carry: the driver's, mounted by the NVIDIA container runtime.
DRIVER = "libcuda.so.1"

# Lists the libraries that the CUDA provider cannot resolve once the wheels' lib folders are on the path.
UNRESOLVED = """
set -eu
site=/app/.venv/lib/python3.11/site-packages
export LD_LIBRARY_PATH=$(find $site/nvidia -type d -name lib | tr '\\n' :)
ldd $site/onnxruntime/capi/libonnxruntime_providers_cuda.so | awk '/not found/ {print $1}'
"""


@pytest.fixture(scope="module")
def image() -> str:
    built = containers.build("cuda")
    print(built.output.splitlines()[-1])  # the image's name, size and build time, for CI's log
    return built.image


def test_cuda_image_asks_for_cuda_and_the_driver(image: str) -> None:
    env = containers.inspect(image, "{{json .Config.Env}}")
    for variable in (
        "TINYSERVE_PROVIDERS=cuda",
        "NVIDIA_VISIBLE_DEVICES=all",
        "NVIDIA_DRIVER_CAPABILITIES=compute,utility",
    ):
        assert f'"{variable}"' in env
    assert containers.inspect(image, "{{.Config.User}}") == USER


def test_cuda_image_packages_are_the_locked_ones_with_onnxruntime_gpu(image: str) -> None:
    installed = installed_versions(image)
    assert installed == locked_versions(REPO / "requirements" / "serve-cuda.lock.txt")
    assert "onnxruntime-gpu==1.31.1" in installed
    assert not [p for p in installed if p.startswith(("onnxruntime==", "torch"))]
    cuda_wheels = {p.split("==")[0] for p in installed if p.startswith("nvidia-")}
    assert {"nvidia-cuda-runtime", "nvidia-cublas", "nvidia-curand", "nvidia-cufft", "nvidia-cudnn-cu13"} <= cuda_wheels


def test_cuda_provider_finds_every_library_but_the_driver_in_the_wheels(image: str) -> None:
    done = containers.run(image, "-c", UNRESOLVED, flags=("--entrypoint", "sh"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [DRIVER]


def test_cuda_image_is_built_on_the_base_of_the_cpu_image(image: str) -> None:
    base = re.search(r'base_image: "(.+)"', (REPO / "bentofile.cuda.yaml").read_text())
    assert base and base[1] == "python:3.11-slim-bookworm"
    assert base[1] in (REPO / "bentofile.yaml").read_text()
    base_layers = containers.inspect(f"docker.io/library/{base[1]}", "{{json .RootFS.Layers}}")
    image_layers = containers.inspect(image, "{{json .RootFS.Layers}}")
    assert image_layers.startswith(base_layers.rstrip("]"))  # the base's layers, then the image's own


def test_cuda_image_without_a_gpu_refuses_to_start_in_one_line(image: str) -> None:
    """Here there is no driver: the start-up probe names it, and no worker ever starts (no restart loop)."""
    done = containers.run(image)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr[-3000:]
    assert lines == [
        "tinyserve: refusing to start: TINYSERVE_PROVIDERS=cuda, but CUDA cannot run here: libcuda.so.1, the "
        "NVIDIA driver's library, cannot be loaded: this machine has no NVIDIA driver (a container needs the "
        "NVIDIA container runtime, e.g. `--gpus all`)"
    ], lines
