"""The V2 HTTP routes' completeness items: classification, per-output parameters, compressed bodies,
/v2/ in place, HEAD, and Triton's statistics extension; on the real ASGI app in process."""

from __future__ import annotations

import gzip
import json
import struct
import zlib
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

pytestmark = pytest.mark.timeout(60)
IMAGES = np.random.default_rng(7).random((2, 1, 32, 32), dtype=np.float32)


def _lenet(outputs: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 1, 32, 32]}], **extra}
    body["inputs"][0]["data"] = IMAGES.ravel().tolist()
    if outputs is not None:
        body["outputs"] = outputs
    return body


def _logits(client: TestClient) -> np.ndarray:
    data = client.post("/v2/models/lenet/infer", json=_lenet()).json()["outputs"][0]["data"]
    return np.asarray(data, np.float32).reshape(2, 10)


def _expected_top(logits: np.ndarray, k: int) -> list[str]:
    return [f"{row[i]:f}:{i}:{i}" for row in logits for i in np.argsort(-row, kind="stable")[:k]]


def test_class_count_answers_value_index_label_strings(client: TestClient) -> None:
    logits = _logits(client)
    r = client.post("/v2/models/lenet/infer", json=_lenet([{"name": "logits", "parameters": {"classification": 3}}]))
    assert r.status_code == 200, r.text
    (output,) = r.json()["outputs"]
    assert (output["datatype"], output["shape"]) == ("BYTES", [2, 3])
    assert output["data"] == _expected_top(logits, 3)


def test_class_count_in_binary_comes_length_prefixed(client: TestClient) -> None:
    logits = _logits(client)
    wanted = [{"name": "logits", "parameters": {"classification": 2, "binary_data": True}}]
    r = client.post("/v2/models/lenet/infer", json=_lenet(wanted))
    length = int(r.headers["inference-header-content-length"])
    blob, strings = r.content[length:], []
    while blob:
        (size,) = struct.unpack("<I", blob[:4])
        strings.append(blob[4 : 4 + size].decode())
        blob = blob[4 + size :]
    assert strings == _expected_top(logits, 2)
    assert json.loads(r.content[:length])["outputs"][0]["parameters"] == {"binary_data_size": len(r.content) - length}


def test_class_count_past_the_classes_is_cut_and_unnamed_columns_get_no_label(client: TestClient) -> None:
    body = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 1.0]}],
        "outputs": [{"name": "probability", "parameters": {"classification": 5}}],
    }
    (output,) = client.post("/v2/models/blobs/infer", json=body).json()["outputs"]
    assert output["shape"] == [1, 1]  # the one column: the probability of label 1, not a class of its own
    value, index = output["data"][0].split(":")
    assert index == "0" and 0.0 <= float(value) <= 1.0


@pytest.mark.parametrize(
    ("parameters", "error"),
    [
        (
            {"shared_memory_region": "out", "shared_memory_byte_size": 80},
            "output 'logits': shared memory is not supported (parameter 'shared_memory_region'); "
            "send the data in the request and read it from the response",
        ),
        ({"top_k": 3}, "output 'logits': unsupported parameter 'top_k'; expected binary_data or classification"),
        ({"classification": "3"}, "output 'logits': classification must be a non-negative integer, got '3'"),
    ],
)
def test_unsupported_output_parameters_are_refused(client: TestClient, parameters: dict[str, Any], error: str) -> None:
    r = client.post("/v2/models/lenet/infer", json=_lenet([{"name": "logits", "parameters": parameters}]))
    assert (r.status_code, r.json()["error"]) == (400, error)


def test_shared_memory_inputs_are_refused(client: TestClient) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "parameters": {"shared_memory_region": "a"}}]}
    r = client.post("/v2/models/linear/infer", json=body)
    assert (r.status_code, r.json()["error"]) == (
        400,
        "input 'x': shared memory is not supported (parameter 'shared_memory_region'); "
        "send the data in the request and read it from the response",
    )


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_request_bodies_are_answered_as_the_plain_ones(client: TestClient, encoding: str) -> None:
    plain = json.dumps(_lenet()).encode()
    packed = gzip.compress(plain) if encoding == "gzip" else zlib.compress(plain)
    r = client.post(
        "/v2/models/lenet/infer",
        content=packed,
        headers={"content-type": "application/json", "content-encoding": encoding},
    )
    assert r.status_code == 200, r.text
    assert r.json() == client.post("/v2/models/lenet/infer", content=plain).json()


def test_a_compressed_body_that_grows_past_the_limit_is_413(client: TestClient) -> None:
    bomb = gzip.compress(b" " * (17 * 1024 * 1024))  # ~17 KB on the wire, 17 MiB once inflated
    r = client.post(
        "/v2/models/lenet/infer", content=bomb, headers={"content-type": "application/json", "content-encoding": "gzip"}
    )
    assert (r.status_code, r.json()["error"]) == (
        413,
        "request body too large: more than 16777216 bytes once decompressed, the limit is 16777216 "
        "(TINYSERVE_MAX_BODY_BYTES)",
    )


def test_a_body_that_is_not_what_its_encoding_says_is_400(client: TestClient) -> None:
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    r = client.post("/v2/models/lenet/infer", content=b"{}", headers=headers)
    assert r.status_code == 400
    assert r.json()["error"].startswith("request body is not valid gzip data (")
    truncated = gzip.compress(json.dumps(_lenet()).encode())[:100]
    r = client.post("/v2/models/lenet/infer", content=truncated, headers=headers)
    assert (r.status_code, r.json()["error"]) == (400, "request body is truncated gzip data; send the whole stream")
    r = client.post("/v2/models/lenet/infer", content=b"{}", headers={**headers, "content-encoding": "br"})
    assert (r.status_code, r.json()["error"]) == (415, "unsupported content encoding 'br': send the body uncompressed")


def test_v2_with_a_slash_is_answered_in_place(client: TestClient) -> None:
    r = client.get("/v2/", follow_redirects=False)
    assert r.status_code == 200
    assert r.json() == client.get("/v2").json()
    assert r.json()["extensions"] == ["binary_tensor_data", "classification", "statistics"]


@pytest.mark.parametrize("path", ["/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/lenet", "/v2/models/stats"])
def test_head_answers_get_routes_without_a_body(client: TestClient, path: str) -> None:
    got = client.get(path)
    head = client.head(path)
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["content-length"] == got.headers["content-length"]


def test_statistics_count_requests_rows_and_time(client: TestClient) -> None:
    def lenet() -> dict[str, Any]:
        (stats,) = client.get("/v2/models/lenet/stats").json()["model_stats"]
        return stats

    before = lenet()
    for _ in range(3):
        client.post("/v2/models/lenet/infer", json=_lenet())
    client.post("/v1/lenet/predict", json={"images": IMAGES[:, 0].tolist()})  # every front door counts
    after = lenet()
    assert (after["name"], after["version"]) == ("lenet", "1")
    assert after["inference_count"] - before["inference_count"] == 8
    assert after["execution_count"] - before["execution_count"] == 4
    success, was = after["inference_stats"]["success"], before["inference_stats"]["success"]
    assert success["count"] - was["count"] == 4 and success["ns"] > was["ns"]
    assert after["inference_stats"]["compute_infer"]["ns"] > before["inference_stats"]["compute_infer"]["ns"]
    assert after["last_inference"] >= before["last_inference"] > 0
    assert client.get("/v2/models/lenet/versions/1/stats").json()["model_stats"][0]["name"] == "lenet"
    names = [s["name"] for s in client.get("/v2/models/stats").json()["model_stats"]]
    assert names == ["blobs", "lenet", "linear", "multilinear"]


def test_statistics_of_an_unknown_model_is_404(client: TestClient) -> None:
    r = client.get("/v2/models/nope/stats")
    assert (r.status_code, r.json()["error"]) == (
        404,
        "unknown model 'nope': expected one of blobs, lenet, linear, multilinear",
    )
    r = client.get("/v2/models/lenet/versions/9/stats")
    assert (r.status_code, r.json()["error"]) == (
        404,
        "unknown version '9' of model 'lenet': available versions are 1",
    )
