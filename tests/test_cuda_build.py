"""The CUDA code paths on a machine without a GPU, with the real onnxruntime-gpu wheel.

`make test` installs onnxruntime-gpu (the same version, without its CUDA libraries) into a folder beside
the virtualenv's packages (`pip install --target`); these tests put it first on the server's PYTHONPATH,
so that the server imports the GPU build: `get_available_providers()` lists CUDA, and only the start-up
probe can tell that it cannot run.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from service import cuda
from tests.helpers import Reference
from tests.server import BENTOML, REPO, refused_start, running

GPU_BUILD = Path(sys.prefix) / "onnxruntime-gpu"  # `make test` installs it there (~255 MB, once)
REFUSED = re.compile(
    r"tinyserve: refusing to start: TINYSERVE_PROVIDERS=cuda, but CUDA cannot run here: "
    r"(?P<reason>(?P<library>lib[\w.+-]+\.so[\w.]*) cannot be loaded: onnxruntime-gpu 1\.31\.1, built for CUDA 13\.0, "
    r"which needs its CUDA and cuDNN 9 libraries; install onnxruntime-gpu\[cuda,cudnn\]==1\.31\.1 "
    r"\(they come as wheels\) or the matching CUDA toolkit)"
)


@pytest.fixture(scope="module")
def gpu_build() -> dict[str, str]:
    if not (GPU_BUILD / "onnxruntime" / "capi" / "libonnxruntime_providers_cuda.so").is_file():
        pytest.fail(f"onnxruntime-gpu is not installed in {GPU_BUILD}: run `make test` (it installs it there)")
    return {"PYTHONPATH": str(GPU_BUILD)}


def test_cuda_required_without_its_libraries_refuses_in_one_line_naming_the_library(
    gpu_build: dict[str, str], tmp_path: Path
) -> None:
    line = refused_start(tmp_path / "server.log", gpu_build | {"TINYSERVE_PROVIDERS": "cuda"})
    refused = REFUSED.fullmatch(line)
    assert refused is not None, line
    with pytest.raises(OSError, match="cannot open shared object file"):
        ctypes.CDLL(refused["library"])  # the library it names is indeed the one this machine lacks


def test_the_built_bento_probes_from_its_own_source(gpu_build: dict[str, str], tmp_path: Path) -> None:
    """Served from a bento in another directory, the probe still imports the service (it runs as a child)."""
    home = tmp_path / "bentoml-home"
    env = os.environ | {"BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    subprocess.run([BENTOML, "build"], cwd=REPO, env=env, check=True, capture_output=True)
    line = refused_start(
        tmp_path / "server.log",
        gpu_build | {"TINYSERVE_PROVIDERS": "cuda", "BENTOML_HOME": str(home)},
        target="tinyserve:latest",
        cwd=tmp_path,
    )
    assert REFUSED.fullmatch(line), line


def test_auto_falls_back_to_the_cpu_once_with_the_reason(gpu_build: dict[str, str], tmp_path: Path) -> None:
    env = gpu_build | {"TINYSERVE_WORKERS": "2"}
    with running(tmp_path / "server.log", env) as server:
        catalog = httpx.get(f"{server.url}/v1/models").json()
        runtime = catalog["runtime"]
        assert (runtime["provider"], runtime["provider_options"]) == ("CPUExecutionProvider", {})
        assert {m["provider"] for m in catalog["models"]} == {"CPUExecutionProvider"}
        fallbacks = [line for line in server.output().splitlines() if "CUDA cannot run" in line]
        assert len(fallbacks) == 1, fallbacks  # logged once, not once per worker
        assert fallbacks[0].endswith(
            f"[WARNING] [cli] providers=auto: CUDA cannot run, serving on the CPU: {runtime['cuda_fallback']}"
        )
        library = re.match(r"(lib\S+) cannot be loaded: onnxruntime-gpu 1\.31\.1", runtime["cuda_fallback"])
        assert library is not None, runtime["cuda_fallback"]
        x = np.random.default_rng(0).random((8, 1, 32, 32), dtype=np.float32)
        r = httpx.post(f"{server.url}/v1/lenet/predict", json={"images": x[:, 0].tolist()})
        assert r.status_code == 200
        logits = Reference(catalog).run("lenet", x)
        assert r.json()["labels"] == logits.argmax(1).tolist()


def test_cpu_setting_on_the_gpu_build_does_not_probe(gpu_build: dict[str, str], tmp_path: Path) -> None:
    with running(tmp_path / "server.log", gpu_build | {"TINYSERVE_PROVIDERS": "cpu"}) as server:
        runtime = httpx.get(f"{server.url}/v1/models").json()["runtime"]
        assert (runtime["provider"], runtime["cuda_fallback"]) == ("CPUExecutionProvider", None)
        assert "CUDA" not in server.output()


# What ONNX Runtime 1.31.1 (GPU build) printed here and on an H100, and the sentence made of it


ORT_MISSING_CUBLAS = (
    "Failed to load libcublasLt.so.13: libcublasLt.so.13: cannot open shared object file: No such file or directory\n"
    "\x1b[1;31m2026-11-22 10:57:42.390254811 [E:onnxruntime:Default, provider_bridge_ort.cc:2458 operator()] "
    "/onnxruntime_src/onnxruntime/core/session/provider_bridge_ort.cc:2043 onnxruntime::Provider& "
    "onnxruntime::ProviderLibrary::Get() [ONNXRuntimeError] : 1 : FAIL : Failed to load library "
    "/x/onnxruntime/capi/libonnxruntime_providers_cuda.so with error: libcublasLt.so.13: cannot open shared object "
    "file: No such file or directory\n\x1b[m\n"
    "Failed to create CUDAExecutionProvider. Require cuDNN 9.* and CUDA 13.*.\n"
)
ORT_MISSING_DRIVER = (
    "[E:onnxruntime:Default, provider_bridge_ort.cc:2458 operator()] Failed to load library "
    "/x/onnxruntime/capi/libonnxruntime_providers_cuda.so with error: libcuda.so.1: cannot open shared object file: "
    "No such file or directory\n"
)
ORT_NO_DEVICE = (
    "[E:onnxruntime:, cuda_call.cc:123 CudaCall] CUDA failure 100: no CUDA-capable device is detected ; "
    "GPU=-1 ; hostname=x ; expr=cudaSetDevice(info_.device_id);\n"
)


def test_explain_names_the_missing_cuda_library() -> None:
    assert cuda.explain(ORT_MISSING_CUBLAS).startswith("libcublasLt.so.13 cannot be loaded: ")


def test_explain_names_the_missing_driver() -> None:
    assert cuda.explain(ORT_MISSING_DRIVER) == (
        "libcuda.so.1, the NVIDIA driver's library, cannot be loaded: this machine has no NVIDIA driver "
        "(a container needs the NVIDIA container runtime, e.g. `--gpus all`)"
    )


def test_explain_names_the_missing_device() -> None:
    assert cuda.explain(ORT_NO_DEVICE) == (
        "no CUDA device is visible to this process (check the GPU, the driver and CUDA_VISIBLE_DEVICES)"
    )


def test_explain_falls_back_to_the_last_error_line() -> None:
    output = "some warning\n[E:onnxruntime:Default, x.cc:1] something new went wrong\n"
    assert cuda.explain(output) == "[E:onnxruntime:Default, x.cc:1] something new went wrong"


def test_cuda_options_are_chosen_not_defaulted() -> None:
    assert cuda.provider_options(device_id=0, tf32=False, conv_algo_search="HEURISTIC") == {
        "device_id": "0",
        "use_tf32": "0",
        "cudnn_conv_algo_search": "HEURISTIC",
    }
    assert cuda.provider_options(device_id=1, tf32=True, conv_algo_search="EXHAUSTIVE")["use_tf32"] == "1"
