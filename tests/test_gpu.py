"""On a machine with an NVIDIA GPU: all four models served on CUDA from the wheels alone (`make test-gpu`).

Deselected from `make test` by the `gpu` marker. `make test-gpu` runs them in a virtualenv of their own
with `onnxruntime-gpu[cuda,cudnn]` (the CUDA and cuDNN libraries as wheels) in place of onnxruntime, and
serves with LD_LIBRARY_PATH emptied so that a system CUDA toolkit cannot stand in for the wheels. On a
machine without a GPU they fail with the server's one-line reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import psutil
import pytest
import tritonclient.http as triton

from service import cuda
from tests.helpers import REPO, Reference, held_out_digits, upscale_32
from tests.server import Server, launch, stop, wait_ready

pytestmark = pytest.mark.gpu

CHOSEN = {"device_id": "0", "use_tf32": "0", "cudnn_conv_algo_search": "HEURISTIC"}
FEATURES = {"linear": (1,), "multilinear": (3,), "blobs": (2,), "lenet": (1, 32, 32)}
OUTPUTS = {"linear": "y", "multilinear": "y", "blobs": "probability", "lenet": "logits"}


@pytest.fixture(scope="module")
def cuda_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = launch(
        tmp_path_factory.mktemp("gpu") / "server.log", {"TINYSERVE_PROVIDERS": "cuda", "LD_LIBRARY_PATH": ""}
    )
    try:
        wait_ready(server, timeout=300)
    except (RuntimeError, TimeoutError):
        pytest.fail(f"the server did not start on CUDA:\n{server.output()[-2000:]}")
    yield server
    stop(server)


@pytest.fixture(scope="module")
def catalog(cuda_server: Server) -> dict[str, Any]:
    listing: dict[str, Any] = httpx.get(f"{cuda_server.url}/v1/models").json()
    return listing


def test_every_model_is_served_on_cuda_with_the_chosen_options(cuda_server: Server, catalog: dict[str, Any]) -> None:
    runtime = catalog["runtime"]
    assert (runtime["provider"], runtime["provider_options"], runtime["cuda_fallback"]) == (cuda.CUDA, CHOSEN, None)
    served = {model["name"]: (model["provider"], model["provider_options"]) for model in catalog["models"]}
    assert served == dict.fromkeys(FEATURES, (cuda.CUDA, CHOSEN))
    metrics = httpx.get(f"{cuda_server.url}/metrics").text
    for name in FEATURES:
        assert re.search(rf'tinyserve_model_provider\{{[^}}]*model="{name}"[^}}]*provider="{cuda.CUDA}"', metrics)


def test_cuda_libraries_come_from_the_wheels(cuda_server: Server) -> None:
    workers = [
        p for p in psutil.Process(cuda_server.process.pid).children(recursive=True) if "worker" in " ".join(p.cmdline())
    ]
    assert workers
    for worker in workers:
        loaded = {m.path for m in worker.memory_maps()}
        for library in ("libcublasLt.so", "libcudart.so", "libcudnn.so"):
            paths = [p for p in loaded if Path(p).name.startswith(library)]
            assert paths, f"{library} is not loaded in worker {worker.pid}"
            assert all("/site-packages/nvidia/" in p for p in paths), paths


def _inputs(name: str, batch: int) -> np.ndarray:
    rng = np.random.default_rng(batch)
    if name == "lenet":
        return rng.random((batch, *FEATURES[name]), dtype=np.float32)
    return (rng.standard_normal((batch, *FEATURES[name])) * (100 if name == "multilinear" else 2)).astype(np.float32)


@pytest.mark.parametrize("name", list(FEATURES))
@pytest.mark.parametrize("batch", [1, 7, 1024])
def test_v2_answers_match_onnxruntime_on_cuda_in_process(
    cuda_server: Server, catalog: dict[str, Any], name: str, batch: int
) -> None:
    reference = Reference(catalog)
    client = triton.InferenceServerClient(cuda_server.url.removeprefix("http://"), network_timeout=60)
    x = _inputs(name, batch)
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    got = client.infer(name, [tensor], outputs=[triton.InferRequestedOutput(OUTPUTS[name], binary_data=True)])
    reference.assert_matches(got.as_numpy(OUTPUTS[name]), name, x)
    client.close()


def test_typed_route_reads_the_held_out_digits_on_cuda(cuda_server: Server, catalog: dict[str, Any]) -> None:
    images8, labels = held_out_digits()
    batch = np.stack([upscale_32(im) for im in images8[:200]])
    body = httpx.post(f"{cuda_server.url}/v1/lenet/predict", json={"images": batch.tolist()}, timeout=60).json()
    logits = Reference(catalog).run("lenet", batch[:, None])
    assert body["labels"] == logits.argmax(1).tolist()
    assert np.mean(np.array(body["labels"]) == labels[:200]) >= 0.99


def test_cuda_without_tf32_agrees_with_the_cpu_to_float32_noise() -> None:
    """The reason TF32 is off by default: with it, LeNet's logits moved by up to 2.2e-3 on an H100."""
    cuda.preload_libraries()
    images8, _ = held_out_digits()
    x = np.stack([upscale_32(im) for im in images8])[:, None]
    path = str(REPO / "models" / "lenet" / "1" / "model.onnx")
    on_cuda = ort.InferenceSession(path, providers=[(cuda.CUDA, CHOSEN)])
    assert on_cuda.get_providers()[0] == cuda.CUDA
    on_cpu = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    gpu, cpu = on_cuda.run(None, {"x": x})[0], on_cpu.run(None, {"x": x})[0]
    np.testing.assert_allclose(gpu, cpu, rtol=0, atol=1e-4)
    assert (gpu.argmax(1) == cpu.argmax(1)).all()
