"""In process: a three-class model no code knows, built by hand as ONNX, served by the data plane and read
by the client on its card alone (tests/test_new_model.py trains one with torch and serves it for real)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import modelrepo
from client import v2 as v2_client
from client.backends import LocalBackend
from service import v2
from service.dataplane import Batching, DataPlane, load_model
from service.errors import InvalidInput
from service.registry import Registry
from tests.fast.conftest import RUNTIME

LABELS = ("red", "green", "blue")
CENTRES = np.array([[-3.0, 0.0], [3.0, 0.0], [0.0, 4.0]], dtype=np.float32)


def _nearest_centre(directory: Path) -> Path:
    """logits_k = 2 c_k . x - |c_k|^2: the largest is the nearest centre (|x|^2 is the same for every k)."""
    weights = numpy_helper.from_array((2 * CENTRES.T).astype(np.float32), "w")
    bias = numpy_helper.from_array(-(CENTRES**2).sum(axis=1).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["logits"])],
        "colors",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [weights, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    path = directory / modelrepo.MODEL_FILE
    onnx.save_model(model, str(path))
    return path


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    directory = root / "colors" / "1"
    directory.mkdir(parents=True)
    path = _nearest_centre(directory)
    card = modelrepo.ModelCard(
        name="colors",
        version="1",
        task="multiclass-classification",
        description="The nearest of three centres (red, green, blue), written by hand.",
        inputs=(modelrepo.TensorSpec("x", "float32", (-1, 2), (-100.0, 100.0)),),
        outputs=(modelrepo.TensorSpec("logits", "float32", (-1, 3)),),
        preprocessing={"x": "the point's two coordinates, raw"},
        recipe={},
        seed=0,
        metrics={},
        data={},
        sha256=modelrepo.sha256_file(path),
        opset=20,
        producer={"name": "onnx.helper"},
        labels=LABELS,
    )
    modelrepo.write_card(card, directory)
    return root


@pytest.fixture(scope="module")
def plane(repository: Path) -> DataPlane:
    return DataPlane(Registry(load_model(e, RUNTIME, Batching()) for e in modelrepo.discover(repository)), RUNTIME)


def test_typed_route_v2_and_the_client_agree_on_a_new_model(plane: DataPlane, repository: Path) -> None:
    answer = asyncio.run(plane.predict("colors", b'{"x": [[-3, 0], [3, 0], [0, 4]]}'))
    assert (answer["model"], answer["labels"]) == ("colors", [0, 1, 2])

    body, headers = v2_client.binary_request(CENTRES, ["logits"])

    async def infer() -> np.ndarray:
        parsed, binary, heavy = await v2.decode_request(body, headers["Inference-Header-Content-Length"])
        [(spec, as_binary, logits)] = (await plane.infer("colors", None, parsed, binary, offload=heavy)).outputs
        assert (spec.name, as_binary) == ("logits", True)
        return logits

    logits = asyncio.run(infer())
    assert logits.argmax(axis=1).tolist() == [0, 1, 2]
    assert modelrepo.softmax(logits).tolist() == answer["probabilities"]

    local = LocalBackend("colors", repository)
    assert local.model.layout.fields == ("row", "label", "probabilities", "error")
    assert local.model.layout.classes == 3
    assert local.predict(CENTRES) == [
        {"label": label, "probabilities": p} for label, p in zip(answer["labels"], answer["probabilities"], strict=True)
    ]


def test_a_row_of_the_wrong_width_is_refused_by_the_card(plane: DataPlane) -> None:
    with pytest.raises(InvalidInput) as refused:
        asyncio.run(plane.predict("colors", b'{"x": [[1, 2, 3]]}'))
    assert str(refused.value) == "x[0]: list should have at most 2 items after validation, not 3"
