"""The bento builds offline, carries the models and no torch, and serves from the built bento."""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.helpers import run_onnx
from tests.server import BENTOML, REPO, running


def _build(home: Path, bentofile: str) -> Path:
    env = os.environ | {"BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    subprocess.run([BENTOML, "build", "-f", bentofile], cwd=REPO, env=env, check=True, capture_output=True)
    (bento,) = [p for p in (home / "bentos").glob("*/*") if p.name != "latest"]
    return bento


def _requirements(bento: Path) -> list[str]:
    """The `name==version` pins of the bento's requirements (the lock, whose pins carry hashes)."""
    lines = (bento / "env" / "python" / "requirements.txt").read_text().splitlines()
    return [line.split()[0] for line in lines if line and not line.startswith(("#", " "))]


@pytest.fixture(scope="module")
def bento_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bentoml-home")


@pytest.fixture(scope="module")
def bento(bento_home: Path) -> Path:
    return _build(bento_home, "bentofile.yaml")


def test_bento_has_a_dockerfile_the_models_and_lean_requirements(bento: Path) -> None:
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile and "EXPOSE 3000" in dockerfile
    requirements = _requirements(bento)
    assert "onnxruntime==1.31.1" in requirements
    assert not [r for r in requirements if r.startswith(("torch", "onnxscript", "scikit-learn"))]
    for name in ("linear", "multilinear", "blobs", "lenet"):
        assert (bento / "src" / "models" / name / "1" / "model.onnx").is_file()
        assert (bento / "src" / "models" / name / "1" / "card.json").is_file()
    assert not (bento / "src" / "training").exists() and not (bento / "src" / "tests").exists()


def test_built_bento_serves_a_correct_prediction(bento: Path, bento_home: Path, tmp_path: Path) -> None:
    env = {"BENTOML_HOME": str(bento_home)}
    # served from an empty directory: everything comes from the bento, nothing from the source tree
    with running(tmp_path / "server.log", env, target="tinyserve:latest", cwd=tmp_path) as server:
        r = httpx.post(f"{server.url}/v1/lenet/predict", json={"images": [[[0.0] * 32] * 32]})
        assert r.status_code == 200
        expected = run_onnx("lenet", np.zeros((1, 1, 32, 32)))
        assert r.json()["labels"] == [int(expected.argmax())]
        assert f"src{os.sep}models" in server.output()  # it loaded the bento's copy of the models
        page = httpx.get(f"{server.url}/ui/")  # the playground and the training pictures travel in the bento
        assert page.status_code == 200 and "tinyserve playground" in page.text
        lenet = httpx.get(f"{server.url}/v1/models/lenet").json()
        assert lenet["pictures"] == ["lenet_confusion.png", "lenet_misclassified.png"]
        picture = httpx.get(f"{server.url}/v1/models/lenet/pictures/lenet_confusion.png")
        assert picture.status_code == 200 and picture.content.startswith(b"\x89PNG")


def test_cuda_variant_has_the_cpu_base_and_onnxruntime_gpu_with_its_cuda_wheels(tmp_path: Path) -> None:
    bento = _build(tmp_path, "bentofile.cuda.yaml")
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    assert "FROM python:3.11-slim-bookworm as base-container" in dockerfile and "nvidia/cuda" not in dockerfile
    assert "ENV TINYSERVE_PROVIDERS=$TINYSERVE_PROVIDERS" in dockerfile
    requirements = _requirements(bento)
    assert "onnxruntime-gpu==1.31.1" in requirements and "onnxruntime==1.31.1" not in requirements
    assert {"nvidia-cudnn-cu13", "nvidia-cublas", "nvidia-cuda-runtime"} <= {r.split("==")[0] for r in requirements}
    assert not [r for r in requirements if r.startswith("torch")]


def test_bento_requirements_match_the_serve_extra() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    serve = pyproject["project"]["optional-dependencies"]["serve"]
    lines = (REPO / "requirements" / "serve.txt").read_text().splitlines()
    assert sorted(line for line in lines if line and not line.startswith("#")) == sorted(serve)
    cuda = (REPO / "requirements" / "serve-cuda.txt").read_text().splitlines()
    assert sorted(line for line in cuda if line and not line.startswith("#")) == sorted(
        s.replace("onnxruntime==", "onnxruntime-gpu[cuda,cudnn]==") for s in serve
    )
