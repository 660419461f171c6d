"""The Open Inference Protocol (V2) as Triton's own client speaks it, plus the error cases over httpx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

import service
from tests.helpers import FEATURES, OUTPUTS, Reference, held_out_digits, upscale_32, v2_inputs
from tests.server import Server


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(server.url.removeprefix("http://"), connection_timeout=30, network_timeout=60)
    yield c
    c.close()


def test_server_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata() == {
        "name": "tinyserve",
        "version": service.__version__,
        "extensions": ["binary_tensor_data", "classification", "statistics"],
    }


@pytest.mark.parametrize("name", list(FEATURES))
def test_model_metadata_comes_from_the_onnx_file(client: triton.InferenceServerClient, name: str) -> None:
    assert client.is_model_ready(name) and client.is_model_ready(name, "1")
    metadata = client.get_model_metadata(name)
    assert metadata == {
        "name": name,
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, *FEATURES[name]]}],
        "outputs": [{"name": OUTPUTS[name], "datatype": "FP32", "shape": [-1, 10 if name == "lenet" else 1]}],
        "version_policy": {"all": {}},  # no config.json: every version in the repository serves
    }
    assert client.get_model_metadata(name, "1") == metadata


@pytest.mark.parametrize("name", list(FEATURES))
@pytest.mark.parametrize("batch", [1, 256])
@pytest.mark.parametrize(("binary_in", "binary_out"), [(True, True), (True, False), (False, True), (False, False)])
def test_infer_matches_onnx_runtime_run_directly(
    client: triton.InferenceServerClient,
    reference: Reference,
    name: str,
    batch: int,
    binary_in: bool,
    binary_out: bool,
) -> None:
    x = v2_inputs(name, batch)
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary_in)
    wanted = triton.InferRequestedOutput(OUTPUTS[name], binary_data=binary_out)
    result = client.infer(name, [tensor], outputs=[wanted], request_id=f"{name}-{batch}")
    got = result.as_numpy(OUTPUTS[name])
    assert got.dtype == np.float32
    reference.assert_matches(got, name, x)
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == (name, "1", f"{name}-{batch}")


def test_infer_without_named_outputs_returns_them_all_in_binary(
    client: triton.InferenceServerClient, reference: Reference
) -> None:
    x = v2_inputs("blobs", 5)
    tensor = triton.InferInput("x", [5, 2], "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("blobs", [tensor], model_version="1")
    assert result.get_response()["outputs"][0]["parameters"] == {"binary_data_size": 20}
    reference.assert_matches(result.as_numpy("probability"), "blobs", x)


def test_v2_and_the_typed_route_give_exactly_the_same_output(
    server: Server, client: triton.InferenceServerClient
) -> None:
    images8, _ = held_out_digits()
    batch = np.stack([upscale_32(im) for im in images8[:16]])[:, None]
    tensor = triton.InferInput("x", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    logits = client.infer("lenet", [tensor]).as_numpy("logits")
    typed = httpx.post(f"{server.url}/v1/lenet/predict", json={"images": batch[:, 0].tolist()}).json()
    z = np.exp(logits - logits.max(1, keepdims=True))
    assert typed["probabilities"] == (z / z.sum(1, keepdims=True)).tolist()
    linear = client.infer(
        "linear",
        [triton.InferInput("x", [3, 1], "FP32").set_data_from_numpy(np.array([[1.0], [2.0], [-3.5]], np.float32))],
    ).as_numpy("y")
    typed_linear = httpx.post(f"{server.url}/v1/linear/predict", json={"x": [1.0, 2.0, -3.5]}).json()
    assert typed_linear["y"] == linear.ravel().tolist()


def test_class_count_gets_the_top_classes_as_triton_answers_them(client: triton.InferenceServerClient) -> None:
    x = v2_inputs("lenet", 4)
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    logits = client.infer("lenet", [tensor]).as_numpy("logits")
    for binary in (True, False):
        wanted = triton.InferRequestedOutput("logits", binary_data=binary, class_count=2)
        top = client.infer("lenet", [tensor], outputs=[wanted]).as_numpy("logits")
        assert top.shape == (4, 2)
        for row, classes in zip(logits, top, strict=True):
            best = np.argsort(-row, kind="stable")[:2]
            got = [c.decode() if isinstance(c, bytes) else c for c in classes]
            assert got == [f"{row[i]:f}:{i}:{i}" for i in best]


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_get_the_plain_request_s_answer(
    client: triton.InferenceServerClient, algorithm: str
) -> None:
    x = v2_inputs("lenet", 8)
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    plain = client.infer("lenet", [tensor]).as_numpy("logits")
    packed = client.infer("lenet", [tensor], request_compression_algorithm=algorithm).as_numpy("logits")
    assert packed.tobytes() == plain.tobytes()


def test_inference_statistics_through_the_client(client: triton.InferenceServerClient) -> None:
    every = client.get_inference_statistics()["model_stats"]
    assert [s["name"] for s in every] == ["blobs", "lenet", "linear", "multilinear"]
    (linear,) = client.get_inference_statistics("linear", "1")["model_stats"]
    assert set(linear["inference_stats"]) >= {"success", "fail", "queue", "compute_infer"}
    with pytest.raises(InferenceServerException, match="unknown model 'resnet'"):
        client.get_inference_statistics("resnet")


def test_unknown_model_is_a_404_through_the_client(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="unknown model 'resnet'"):
        client.get_model_metadata("resnet")
    assert client.is_model_ready("resnet") is False
    assert client.is_model_ready("linear", "7") is False


# Raw requests: the error cases, each a 400 or 404 with {"error": ...}


def _infer_body(**tensor: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": [2, 1], "datatype": "FP32", "data": [1.0, 2.0]} | tensor]}


def _binary(json_part: dict[str, Any], payload: bytes, header: int | None = None) -> tuple[bytes, dict[str, str]]:
    text = json.dumps(json_part).encode()
    length = len(text) if header is None else header
    return text + payload, {"Inference-Header-Content-Length": str(length)}


RAW_CASES: list[tuple[str, str, Any, dict[str, str], int, str]] = [
    (
        "wrong input name",
        "/v2/models/linear/infer",
        _infer_body(name="input"),
        {},
        400,
        "unknown input 'input': the model's inputs are x",
    ),
    (
        "shape against data length",
        "/v2/models/linear/infer",
        _infer_body(shape=[3, 1]),
        {},
        400,
        "input 'x': shape [3, 1] needs 3 values, data has 2",
    ),
    (
        "shape against the model",
        "/v2/models/multilinear/infer",
        _infer_body(shape=[1, 2]),
        {},
        400,
        "input 'x': shape [1, 2] does not match the model's [-1, 3]",
    ),
    (
        "rank against the model",
        "/v2/models/lenet/infer",
        _infer_body(shape=[2]),
        {},
        400,
        "input 'x': shape [2] does not match the model's [-1, 1, 32, 32]",
    ),
    (
        "negative dimension",
        "/v2/models/linear/infer",
        _infer_body(shape=[-2, 1]),
        {},
        400,
        "input 'x': shape [-2, 1] does not match the model's [-1, 1]",
    ),
    (
        "unsupported datatype",
        "/v2/models/linear/infer",
        _infer_body(datatype="BYTES"),
        {},
        400,
        "input 'x': unsupported datatype 'BYTES'; expected FP32",
    ),
    (
        "other datatype",
        "/v2/models/linear/infer",
        _infer_body(datatype="FP64"),
        {},
        400,
        "input 'x': datatype FP64 does not match the model's FP32",
    ),
    (
        "strings as data",
        "/v2/models/linear/infer",
        _infer_body(data=["1", "2"]),
        {},
        400,
        "input 'x': data must be numbers for FP32, got strings",
    ),
    (
        "ragged data",
        "/v2/models/linear/infer",
        _infer_body(data=[[1.0], [2.0, 3.0]]),
        {},
        400,
        "input 'x': data is ragged (rows of different lengths)",
    ),
    (
        "NaN data",
        "/v2/models/linear/infer",
        b'{"inputs":[{"name":"x","shape":[1,1],"datatype":"FP32","data":[NaN]}]}',
        {},
        400,
        "input 'x': data contains NaN or Infinity; expected finite numbers",
    ),
    (
        "no data",
        "/v2/models/linear/infer",
        {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32"}]},
        {},
        400,
        "input 'x': no data; give 'data' or parameters.binary_data_size",
    ),
    (
        "missing inputs",
        "/v2/models/linear/infer",
        {"id": "1"},
        {},
        400,
        "inputs: required field is missing (this endpoint takes id, parameters, inputs, outputs)",
    ),
    (
        "missing datatype",
        "/v2/models/linear/infer",
        {"inputs": [{"name": "x", "shape": [1, 1], "data": [1]}]},
        {},
        400,
        "inputs[0].datatype: required field is missing (this endpoint takes id, parameters, inputs, outputs)",
    ),
    (
        "not JSON",
        "/v2/models/linear/infer",
        b"{inputs",
        {},
        400,
        "request JSON is not valid: key must be a string at line 1 column 2",
    ),
    (
        "unknown output",
        "/v2/models/linear/infer",
        _infer_body() | {"outputs": [{"name": "z"}]},
        {},
        400,
        "unknown output 'z': the model's outputs are y",
    ),
    (
        "binary size against shape",
        "/v2/models/linear/infer",
        _binary(_infer_body(data=None, parameters={"binary_data_size": 4}), b"\0" * 4),
        {},
        400,
        "input 'x': binary_data_size is 4 bytes, but shape [2, 1] of FP32 is 8 bytes",
    ),
    (
        "binary truncated",
        "/v2/models/linear/infer",
        _binary(_infer_body(data=None, parameters={"binary_data_size": 8}), b"\0" * 5),
        {},
        400,
        "input 'x': expected 8 bytes of binary data, only 5 follow the JSON (truncated body?)",
    ),
    (
        "binary leftovers",
        "/v2/models/linear/infer",
        _binary(_infer_body(data=None, parameters={"binary_data_size": 8}), b"\0" * 12),
        {},
        400,
        "4 bytes follow the JSON that no input's binary_data_size accounts for",
    ),
    (
        "header longer than body",
        "/v2/models/linear/infer",
        _binary(_infer_body(), b"", header=10_000),
        {},
        400,
        "Inference-Header-Content-Length is 10000 but the body has only 84 bytes",
    ),
    (
        "header not a number",
        "/v2/models/linear/infer",
        (json.dumps(_infer_body()).encode(), {"Inference-Header-Content-Length": "ten"}),
        {},
        400,
        "Inference-Header-Content-Length must be a byte count, got 'ten'",
    ),
    (
        "unknown model",
        "/v2/models/resnet/infer",
        _infer_body(),
        {},
        404,
        "unknown model 'resnet': expected one of blobs, lenet, linear, multilinear",
    ),
    (
        "unknown version",
        "/v2/models/linear/versions/9/infer",
        _infer_body(),
        {},
        404,
        "unknown version '9' of model 'linear': available versions are 1",
    ),
    (
        "brotli body",
        "/v2/models/linear/infer",
        _infer_body(),
        {"Content-Encoding": "br"},
        415,
        "unsupported content encoding 'br': send the body uncompressed",
    ),
    (
        "gzip header on a plain body",
        "/v2/models/linear/infer",
        _infer_body(),
        {"Content-Encoding": "gzip"},
        400,
        "request body is not valid gzip data (Error -3 while decompressing data: incorrect header check); "
        "send it uncompressed",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "message"), [c[1:] for c in RAW_CASES], ids=[c[0] for c in RAW_CASES]
)
def test_bad_infer_request_is_refused_with_a_clear_error(
    http: httpx.Client, path: str, body: Any, headers: dict[str, str], status: int, message: str
) -> None:
    if isinstance(body, tuple):
        body, extra = body
        headers = headers | extra
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = http.post(path, content=content, headers={"content-type": "application/json"} | headers)
    assert r.status_code == status, r.text
    assert r.json() == {"error": message, "detail": []}


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/resnet",
        "/v2/models/resnet/ready",
        "/v2/models/linear/versions/3",
        "/v2/models/linear/versions/3/ready",
    ],
)
def test_unknown_model_or_version_metadata_is_404(http: httpx.Client, path: str) -> None:
    r = http.get(path)
    assert r.status_code == 404 and r.json()["error"].startswith("unknown")


def test_v2_routes_are_in_the_openapi_document(http: httpx.Client) -> None:
    paths = http.get("/docs.json").json()["paths"]
    for path in (
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/versions/{version}",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/versions/{version}/ready",
    ):
        assert "get" in paths[path], path
    for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
        assert "application/octet-stream" in paths[path]["post"]["requestBody"]["content"], path
