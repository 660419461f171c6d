"""Every route of the real ASGI app, in process: answers, every refusal's exact sentence, V2, the docs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from client import v2 as v2_client
from service.runtime import start_up
from service.server import create_service
from service.settings import Settings
from tests.cases import CASES, send
from tests.fast.conftest import REPO

DIGITS = np.load(__import__("pathlib").Path(__file__).resolve().parents[2] / "examples" / "digits.npy")


@pytest.mark.parametrize(
    ("method", "path", "body", "content_type", "status", "message"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_bad_request_is_refused_with_its_exact_sentence(
    client: TestClient, method: str, path: str, body: Any, content_type: str | None, status: int, message: str
) -> None:
    r = send(client, method, path, body, content_type)
    assert (r.status_code, r.json()) == (status, {"error": message, "detail": r.json()["detail"]}), r.text
    assert r.headers["content-type"] == "application/json"


def test_typed_routes_answer_the_readme_examples(client: TestClient) -> None:
    linear = client.post("/v1/linear/predict", json={"x": [1.0, 2.0]}).json()
    assert linear["model"] == "linear" and linear["version"] == "1"
    np.testing.assert_allclose(linear["y"], [12.08, 18.84], atol=0.01)  # the fitted y = 7x + 5 (+ noise)
    blobs = client.post("/v1/blobs/predict", json={"x": [[1, 1], [-1, 1]]}).json()
    assert blobs["labels"] == [0, 1]
    multi = client.post("/v1/multilinear/predict", json={"x": [[73, 80, 75]]}).json()
    assert abs(multi["y"][0] - 152) < 5


def test_the_fast_path_and_pydantic_give_the_same_answer(client: TestClient) -> None:
    """A 28x28 image goes through Pydantic (mixed sizes); the same 32x32 image through the fast path."""
    image = DIGITS[0, 0]
    small = image[2:30, 2:30]
    padded = np.zeros((32, 32), np.float32)
    padded[2:30, 2:30] = small
    mixed = client.post("/v1/lenet/predict", json={"images": [small.tolist(), image.tolist()]}).json()
    alone = client.post("/v1/lenet/predict", json={"images": [padded.tolist()]}).json()
    assert mixed["probabilities"][0] == alone["probabilities"][0]


def test_a_boolean_among_numbers_is_refused_not_read_as_one(client: TestClient) -> None:
    r = client.post("/v1/linear/predict", json={"x": [1.0, True]})
    assert r.json()["error"] == "x[1]: input should be a valid number, got boolean true"
    r = client.post("/v1/linear/predict", json={"x": [1, "2"]})
    assert r.json()["error"] == "x[1]: input should be a valid number, got string '2'"


def test_v2_refuses_an_output_asked_twice(client: TestClient) -> None:
    body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 1]}]}
    twice = body | {"outputs": [{"name": "probability"}] * 2}
    r = client.post("/v2/models/blobs/infer", json=twice)
    assert (r.status_code, r.json()["error"]) == (400, "output 'probability' is requested twice; name each output once")
    many = body | {"outputs": [{"name": "probability"}] * 4000}  # counted before any is looked at
    r = client.post("/v2/models/blobs/infer", json=many)
    assert (r.status_code, r.json()["error"]) == (400, "the request has 4000 outputs; at most 64 are accepted")
    once = client.post("/v2/models/blobs/infer", json=body | {"outputs": [{"name": "probability"}]}).json()
    assert [o["name"] for o in once["outputs"]] == ["probability"]


def test_v2_counts_a_request_s_lists_and_maps_before_reading_their_entries(client: TestClient) -> None:
    tensor = {"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 1]}
    many = {f"p{i}": i for i in range(65)}
    cases = {
        "the request has 65 parameters; at most 64 are accepted": {"inputs": [tensor], "parameters": many},
        "the request has 65 inputs; at most 64 are accepted": {"inputs": [tensor] * 65},
        "input 'x' has 65 parameters; at most 64 are accepted": {"inputs": [tensor | {"parameters": many}]},
        "input #0 has 65 dimensions in its shape; at most 64 are accepted": {"inputs": [{"shape": [1] * 65}]},
        "output 'probability' has 65 parameters; at most 64 are accepted": {
            "inputs": [tensor],
            "outputs": [{"name": "probability", "parameters": many}],
        },
    }
    for sentence, body in cases.items():
        r = client.post("/v2/models/blobs/infer", json=body)
        assert (r.status_code, r.json()["error"]) == (400, sentence)


def test_an_unknown_name_is_echoed_cut_short(client: TestClient) -> None:
    name = "n" * 5000
    r = client.post(
        "/v2/models/blobs/infer", json={"inputs": [{"name": name, "shape": [1, 2], "datatype": "FP32", "data": [1, 1]}]}
    )
    assert r.status_code == 400 and len(r.text) < 400
    assert r.json()["error"] == f"unknown input {'n' * 80!r}... (5000 characters): the model's inputs are x"


def test_v2_binary_answer_equals_the_typed_route(client: TestClient) -> None:
    x = DIGITS[:4].astype(np.float32)
    body, headers = v2_client.binary_request(x)
    r = client.post("/v2/models/lenet/infer", content=body, headers=headers)
    logits = v2_client.read_answer(r.content, r.headers)["logits"]
    assert logits.shape == (4, 10)
    typed = client.post("/v1/lenet/predict", json={"images": x[:, 0].tolist()}).json()
    assert typed["labels"] == logits.argmax(axis=1).tolist()


def test_server_timing_names_each_phase_when_turned_on(client: TestClient) -> None:
    r = client.post("/v1/linear/predict", json={"x": [1.0]})
    assert [part.split(";")[0] for part in r.headers["server-timing"].split(", ")] == [
        "parse",
        "queue",
        "run",
        "encode",
    ]
    tensor = {"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1]}
    v2 = client.post("/v2/models/linear/infer", json={"inputs": [tensor]})
    assert [p.split(";")[0] for p in v2.headers["server-timing"].split(", ")] == ["parse", "queue", "run", "encode"]


def test_docs_publish_each_model_s_typed_route_from_its_card(client: TestClient) -> None:
    spec = client.get("/docs.json").json()
    for name, request in (("linear", "LinearRequest"), ("blobs", "BlobsRequest"), ("lenet", "LenetRequest")):
        content = spec["paths"][f"/v1/{name}/predict"]["post"]["requestBody"]["content"]["application/json"]
        assert content["schema"] == {"$ref": f"#/components/schemas/{request}"}
        example = spec["components"]["schemas"][request]["properties"]
        field = "images" if name == "lenet" else "x"
        body = {field: example[field]["examples"][0]}
        assert client.post(f"/v1/{name}/predict", json=body).status_code == 200, name
    assert "/v1/lenet/predict-image" in spec["paths"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("body", "request_timeout"), [(10.0, 25.0), (30.0, 60.0), (0.5, 0.05)])
def test_bentomls_own_timeout_never_answers_before_the_guard(body: float, request_timeout: float) -> None:
    """BentoML's request timeout sits in front of the guard: its 504 is not in the envelope and not counted. A
    request may take TINYSERVE_BODY_TIMEOUT to arrive, then TINYSERVE_REQUEST_TIMEOUT for its answer to begin;
    BentoML's must be longer than both together, for any settings (it was a fixed 30 s: a request timeout of
    60 s was cut at 30 s by BentoML's own answer)."""
    timeouts = {"body_timeout": body, "request_timeout": request_timeout}
    chosen = Settings.model_validate({"workers": 1, "threads": 1, "models_dir": REPO / "models"} | timeouts)
    service = create_service(start_up(chosen, serving=False))
    assert service.config["traffic"]["timeout"] > body + request_timeout
