"""The CUDA execution provider: its options, its libraries, and the start-up probe that proves it runs.

`ort.get_available_providers()` lists CUDA for any GPU build of onnxruntime, on any machine: it says what
the build has, not what works. Only a session that was created on CUDA and ran proves it. The probe does
that in a child process (`python -m service.cuda MODEL...`), so that the server's own process holds no
GPU memory and ONNX Runtime's messages (it writes them to stderr as sessions are created) can be read
to name what is missing.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

CUDA = "CUDAExecutionProvider"
SOURCE_ROOT = Path(__file__).resolve().parents[1]  # where `service` imports from (a bento: its src/)
PROBE_TIMEOUT_S = 180  # CUDA's first initialisation can take tens of seconds on a cold machine

# ONNX Runtime's words for what went wrong, most specific first
_PROVIDER_LIBRARY = re.compile(r"libonnxruntime_providers_cuda\.so with error: (\S+?): cannot open shared object file")
_ANY_LIBRARY = re.compile(r"(lib[\w.+-]+\.so[\w.]*): cannot open shared object file")
_NO_DEVICE = re.compile(r"no CUDA-capable device|cudaErrorNoDevice|CUDA failure 100\b", re.IGNORECASE)
_OLD_DRIVER = re.compile(r"driver version is insufficient|cudaErrorInsufficientDriver|CUDA failure 35\b", re.I)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def provider_options(*, device_id: int, tf32: bool, conv_algo_search: str) -> dict[str, str]:
    """The CUDA provider's options, chosen rather than defaulted.

    - `use_tf32=0`: ONNX Runtime defaults to TF32 matrix maths; on an H100 it moved LeNet's logits by up to
      2.2e-3 against float32 on the CPU (2.9e-6 with TF32 off). These models are tiny; exactness wins.
    - `cudnn_conv_algo_search=HEURISTIC` rather than the default EXHAUSTIVE: EXHAUSTIVE times every cuDNN
      algorithm for each new input shape, so each new batch size pays a slow first call; for LeNet's two
      small convolutions the algorithms differ little. (Not measured on a GPU in this session.)
    """
    return {
        "device_id": str(device_id),
        "use_tf32": "1" if tf32 else "0",
        "cudnn_conv_algo_search": conv_algo_search,
    }


def build_info() -> str:
    """'onnxruntime-gpu 1.31.1, built for CUDA 13.0' (or without the CUDA part on a CPU build)."""
    version = getattr(ort, "cuda_version", "")
    return f"{getattr(ort, 'package_name', 'onnxruntime')} {ort.__version__}" + (
        f", built for CUDA {version}" if version else ""
    )


def preload_libraries() -> None:
    """Make the CUDA and cuDNN libraries of the nvidia-* wheels loadable (onnxruntime-gpu[cuda,cudnn]).

    The provider library has no RPATH to them: without this, only a system CUDA toolkit or
    LD_LIBRARY_PATH would do. Call it before the first CUDA session, and only when CUDA is wanted.
    """
    ort.preload_dlls()


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    reason: str  # why CUDA cannot run ("" when it can)


def probe(models: list[Path], options: dict[str, str]) -> ProbeResult:
    """Create a session on CUDA for each model and run it once, in a child process."""
    command = [sys.executable, "-m", "service.cuda", json.dumps(options), *(str(m.resolve()) for m in models)]
    try:
        done = subprocess.run(
            command, cwd=SOURCE_ROOT, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        return ProbeResult(False, f"creating a CUDA session did not finish in {PROBE_TIMEOUT_S} s")
    if done.returncode == 0:
        return ProbeResult(True, "")
    return ProbeResult(False, explain(done.stdout + done.stderr))


def explain(output: str) -> str:
    """What is missing, in one sentence, from what ONNX Runtime and `preload_dlls` printed."""
    output = _ANSI.sub("", output)
    library = _PROVIDER_LIBRARY.search(output) or _ANY_LIBRARY.search(output)
    if library is not None:
        name = library.group(1)
        if name.startswith("libcuda.so"):
            return (
                f"{name}, the NVIDIA driver's library, cannot be loaded: this machine has no NVIDIA driver "
                "(a container needs the NVIDIA container runtime, e.g. `--gpus all`)"
            )
        return (
            f"{name} cannot be loaded: {build_info()}, which needs its CUDA and cuDNN 9 libraries; install "
            f"onnxruntime-gpu[cuda,cudnn]=={ort.__version__} (they come as wheels) or the matching CUDA toolkit"
        )
    if _NO_DEVICE.search(output):
        return "no CUDA device is visible to this process (check the GPU, the driver and CUDA_VISIBLE_DEVICES)"
    if _OLD_DRIVER.search(output):
        return f"the NVIDIA driver is too old for {build_info()}"
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "[E:onnxruntime" in line or line.startswith("probe:")]
    return (errors or lines or ["the CUDA probe failed without a message"])[-1]


def _zeros(node: ort.NodeArg) -> np.ndarray:
    from service.tensors import DATATYPES, ONNX_TYPES

    shape = [d if isinstance(d, int) and d > 0 else 1 for d in node.shape]
    return np.zeros(shape, dtype=DATATYPES[ONNX_TYPES[node.type]])


def _probe_main(options_json: str, models: list[str]) -> int:
    """The child: exit 0 when every model ran on CUDA, else print why and exit 1."""
    options = json.loads(options_json)
    preload_libraries()
    for model in models:
        session = ort.InferenceSession(model, providers=[(CUDA, options)])
        if session.get_providers()[0] != CUDA:
            sys.stderr.write(f"probe: {model}: the session fell back to {session.get_providers()[0]}\n")
            return 1
        session.run(None, {node.name: _zeros(node) for node in session.get_inputs()})
    return 0


if __name__ == "__main__":
    try:
        sys.exit(_probe_main(sys.argv[1], sys.argv[2:]))
    except Exception as error:  # any failure is the probe's answer, reported by the parent in one line
        sys.stderr.write(f"probe: {type(error).__name__}: {error}\n")
        sys.exit(1)
