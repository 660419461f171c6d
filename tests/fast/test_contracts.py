"""Property-based tests of the typed contracts made from the cards: valid bodies accepted, invalid refused.

On the contracts themselves (hundreds of bodies: the fast path on whole arrays, and Pydantic where it
refuses, must agree) and through the real ASGI app (fewer: each is a request) for the 4xx envelope.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

import modelrepo
from service.errors import InvalidInput
from service.kinds import Contract, contract
from tests.fast.conftest import REPO

CONTRACTS = {e.name: contract(e.card) for e in modelrepo.discover(REPO / "models")}


class _Checked:
    """A contract's request model, as the tests call it: parse a JSON body, or raise with the sentence."""

    def __init__(self, contract: Contract) -> None:
        self.contract = contract

    def model_validate(self, body: Any) -> np.ndarray:
        x = self.contract.parse(json.dumps(body).encode())
        pydantic = self.contract.request.model_validate(body)  # the slow path agrees with the fast one
        assert len(getattr(pydantic, self.contract.field)) == len(x)
        return x


LinearRequest = _Checked(CONTRACTS["linear"])
MultilinearRequest = _Checked(CONTRACTS["multilinear"])
BlobsRequest = _Checked(CONTRACTS["blobs"])
LenetRequest = _Checked(CONTRACTS["lenet"])
ValidationError = InvalidInput

finite = st.floats(-1e30, 1e30, allow_nan=False) | st.integers(-(10**6), 10**6)  # the models take |x| <= 1e30
not_a_number = st.one_of(
    st.just(math.nan),
    st.just(math.inf),
    st.just(-math.inf),
    st.text(max_size=5),
    st.booleans(),
    st.none(),
    st.lists(finite, max_size=2),
    st.dictionaries(st.text(max_size=3), finite, max_size=1),
)
pixel = st.floats(0, 1, allow_nan=False, width=32)


def rows(width: int, max_rows: int = 20) -> st.SearchStrategy[list[list[Any]]]:
    return st.lists(st.lists(finite, min_size=width, max_size=width), min_size=1, max_size=max_rows)


@st.composite
def with_one_bad(draw: st.DrawFn, values: st.SearchStrategy[list[Any]]) -> list[Any]:
    """A valid list with one element replaced by something that is not a finite number."""
    good = draw(values)
    i = draw(st.integers(0, len(good) - 1))
    return [*good[:i], draw(not_a_number), *good[i + 1 :]]


@given(st.lists(finite, min_size=1, max_size=200))
def test_linear_accepts_any_finite_numbers(x: list[float]) -> None:
    assert LinearRequest.model_validate({"x": x}).ravel().tolist() == np.float32([float(v) for v in x]).tolist()


@given(with_one_bad(st.lists(finite, min_size=1, max_size=50)))
def test_linear_refuses_any_non_finite_or_non_number(x: list[Any]) -> None:
    with pytest.raises(ValidationError, match=r"x\[\d+\]"):
        LinearRequest.model_validate({"x": x})


@given(st.integers(modelrepo.MAX_ROWS + 1, modelrepo.MAX_ROWS + 50))
@settings(max_examples=5)
def test_linear_refuses_too_many_rows(n: int) -> None:
    with pytest.raises(ValidationError, match=f"at most {modelrepo.MAX_ROWS} items"):
        LinearRequest.model_validate({"x": [0.0] * n})


@given(rows(3))
def test_multilinear_accepts_rows_of_three(x: list[list[float]]) -> None:
    assert len(MultilinearRequest.model_validate({"x": x})) == len(x)


@given(rows(3), st.integers(0, 19), st.integers(0, 6).filter(lambda w: w != 3))
def test_multilinear_refuses_a_ragged_row(x: list[list[float]], i: int, width: int) -> None:
    x = [*x, [1.0] * width] if i >= len(x) else [*x[:i], [1.0] * width, *x[i + 1 :]]
    with pytest.raises(ValidationError, match=r"x\[\d+\]: list should have at (least|most) 3 items"):
        MultilinearRequest.model_validate({"x": x})


@given(rows(2), st.text(min_size=1, max_size=8).filter(lambda k: k != "x"))
def test_blobs_refuses_any_unknown_field(x: list[list[float]], key: str) -> None:
    assert len(BlobsRequest.model_validate({"x": x})) == len(x)
    with pytest.raises(ValidationError, match="unknown field"):
        BlobsRequest.model_validate({"x": x, key: 1})


@given(st.sampled_from([28, 32]), pixel)
@settings(max_examples=20)
def test_lenet_accepts_square_28_or_32_images_in_range(size: int, value: float) -> None:
    image = [[value] * size for _ in range(size)]
    x = LenetRequest.model_validate({"images": [image]})
    assert x.shape == (1, 1, 32, 32) and float(x.sum()) == pytest.approx(np.float32(value) * size * size, rel=1e-5)


@given(st.integers(1, 40), st.integers(1, 40))
@settings(max_examples=60)
def test_lenet_refuses_every_other_image_size(height: int, width: int) -> None:
    if height == width and height in (28, 32):
        return
    with pytest.raises(ValidationError, match=r"images\[0\]"):
        LenetRequest.model_validate({"images": [[[0.0] * width for _ in range(height)]]})


@pytest.fixture
def http(client: TestClient) -> TestClient:
    return client


# Through the ASGI app: the same properties, end to end.
http_settings = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@http_settings
@given(x=st.lists(finite, min_size=1, max_size=30))
def test_http_accepts_valid_linear_rows(http: TestClient, x: list[float]) -> None:
    r = http.post("/v1/linear/predict", json={"x": x})
    assert r.status_code == 200
    assert len(r.json()["y"]) == len(x)


@http_settings
@given(x=with_one_bad(st.lists(finite, min_size=1, max_size=10)))
def test_http_refuses_invalid_linear_rows_with_a_400_envelope(http: TestClient, x: list[Any]) -> None:
    r = http.post("/v1/linear/predict", content=json.dumps({"x": x}), headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"].startswith("x[")


@http_settings
@given(
    body=st.recursive(
        st.none() | st.booleans() | finite | st.text(max_size=4),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
        max_leaves=8,
    )
)
def test_http_refuses_arbitrary_json_with_a_4xx_never_a_5xx(http: TestClient, body: Any) -> None:
    for route in ("linear", "multilinear", "blobs", "lenet"):
        r = http.post(f"/v1/{route}/predict", json=body)
        assert r.status_code in (200, 400), (route, body, r.text)
        if r.status_code == 400:
            assert set(r.json()) <= {"error", "detail"}


IMAGE_WITH_A_STRING: list[list[Any]] = [[0.5] * 28 for _ in range(28)]
IMAGE_WITH_A_STRING[3][4] = "0.5"


@pytest.mark.parametrize(
    ("name", "body", "sentence"),
    [
        ("linear", {"x": ["1.5", 2]}, "x[0]: input should be a valid number, got string '1.5'"),
        ("linear", {"x": [{}]}, "x[0]: input should be a valid number, got an object"),
        ("linear", {"x": [None]}, "x[0]: input should be a valid number, got null"),
        ("multilinear", {"x": [[1, 2, "3"]]}, "x[0][2]: input should be a valid number, got string '3'"),
        (
            "lenet",
            {"images": [IMAGE_WITH_A_STRING]},
            "images[0][3][4]: input should be a valid number, got string '0.5'",
        ),
    ],
)
def test_a_number_written_as_a_string_or_an_object_is_refused_as_pydantic_words_it(
    name: str, body: dict[str, Any], sentence: str
) -> None:
    """The fast path on whole arrays never takes a number written as a string ("1.5"): Pydantic words it."""
    with pytest.raises(InvalidInput) as refused:
        CONTRACTS[name].parse(json.dumps(body).encode())
    assert str(refused.value) == sentence


@pytest.mark.parametrize(
    ("name", "body", "sentence"),
    [
        (
            "multilinear",
            b'{"x": [' + b"[]," * 1_000_000 + b"[]]}",  # 3 MB: a list each 3 bytes
            "request body has 1000002 JSON lists; a valid one has at most 4097 lists, 1 object and 1 string "
            "(the field name x)",
        ),
        (
            "lenet",
            b'{"images": [' + b"{}," * 100_000 + b"{}]}",
            "request body has 100002 JSON objects; a valid one has at most 8449 lists, 1 object and 1 string "
            "(the field name images)",
        ),
        (
            "linear",
            json.dumps({"x": ["a"] * 100_000}).encode(),
            "request body has 100001 JSON strings; a valid one has at most 1 list, 1 object and 1 string "
            "(the field name x)",
        ),
        (
            "linear",
            json.dumps({"x": [1.0]} | {f"a{i}": 1 for i in range(20)}).encode(),
            "the request has 21 fields; this endpoint takes only x (fields 'x', 'a0', 'a1', ...)",
        ),
    ],
)
def test_a_body_with_far_more_lists_strings_objects_or_fields_than_a_valid_one_is_refused_unparsed(
    name: str, body: bytes, sentence: str
) -> None:
    """Each would be a Python object to build and check: a million empty lists cost 2 s of CPU to refuse."""
    with pytest.raises(InvalidInput) as refused:
        CONTRACTS[name].parse(body)
    assert str(refused.value) == sentence


def test_a_large_refused_body_is_told_each_list_s_first_error_a_small_one_its_first_three() -> None:
    """Past 16 KiB Pydantic stops each list at its first error: an error is an object too (1-2 us each)."""
    contract = CONTRACTS["lenet"]
    small = json.dumps({"images": [[[2.0] * 32] * 32]}).encode()  # every pixel out of [0, 1]
    large = json.dumps({"images": [[[2.0] * 32] * 32] * 4}).encode()
    assert len(small) < 16 * 1024 < len(large)
    told = []
    for body in (small, large):
        with pytest.raises(InvalidInput) as refused:
            contract.parse(body)
        told.append(str(refused.value))
    over = "expected a number at most 1, got 2.0"
    assert told == [
        f"images[0][0][0]: {over}; images[0][0][1]: {over}; images[0][0][2]: {over}; and 1021 more errors",
        f"images[0][0][0]: {over}",
    ]
