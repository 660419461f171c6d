"""The refusal table: every bad request, the status it gets and its exact sentence (tests/fast and over HTTP)."""

from __future__ import annotations

import io
import json
from typing import Any

import httpx
from PIL import Image

IMAGE_32 = [[0.0] * 32 for _ in range(32)]
LINEAR = "/v1/linear/predict"
MULTI = "/v1/multilinear/predict"
BLOBS = "/v1/blobs/predict"
LENET = "/v1/lenet/predict"
UPLOAD = "/v1/lenet/predict-image"
MODELS = "blobs, lenet, linear, multilinear"


def _png(size: tuple[int, int], color: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def _gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (8, 8), 0).save(buffer, "GIF")
    return buffer.getvalue()


JSON = "application/json"
# (id, method, path, body as bytes or JSON-able, content type, status, exact error message)
CASES: list[tuple[str, str, str, Any, str | None, int, str]] = [
    (
        "string element",
        "POST",
        LINEAR,
        {"x": [1, "2.5"]},
        JSON,
        400,
        "x[1]: input should be a valid number, got string '2.5'",
    ),
    (
        "boolean element",
        "POST",
        LINEAR,
        {"x": [True]},
        JSON,
        400,
        "x[0]: input should be a valid number, got boolean true",
    ),
    (
        "null element",
        "POST",
        LINEAR,
        {"x": [1.0, None]},
        JSON,
        400,
        "x[1]: input should be a valid number, got null",
    ),
    (
        "NaN",
        "POST",
        LINEAR,
        b'{"x": [1.0, NaN]}',
        JSON,
        400,
        "x[1]: input should be a finite number, got NaN",
    ),
    (
        "Infinity",
        "POST",
        LINEAR,
        b'{"x": [Infinity]}',
        JSON,
        400,
        "x[0]: input should be a finite number, got Infinity",
    ),
    (
        "-Infinity",
        "POST",
        BLOBS,
        b'{"x": [[1, -Infinity]]}',
        JSON,
        400,
        "x[0][1]: input should be a finite number, got -Infinity",
    ),
    (
        "empty list",
        "POST",
        LINEAR,
        {"x": []},
        JSON,
        400,
        "x: list should have at least 1 item after validation, not 0",
    ),
    (
        "too many rows",
        "POST",
        LINEAR,
        {"x": [1.0] * 4097},
        JSON,
        400,
        "x: list should have at most 4096 items after validation, not 4097",
    ),
    (
        "nested where flat expected",
        "POST",
        LINEAR,
        {"x": [[1.0]]},
        JSON,
        400,
        "x[0]: input should be a valid number, got a list of 1",
    ),
    ("x not a list", "POST", LINEAR, {"x": 3.0}, JSON, 400, "x: input should be a valid list, got 3.0"),
    ("missing field", "POST", LINEAR, {}, JSON, 400, "x: required field is missing (this endpoint takes x)"),
    (
        "unknown field",
        "POST",
        LINEAR,
        {"x": [1.0], "mode": "fast"},
        JSON,
        400,
        "mode: unknown field (this endpoint takes only x)",
    ),
    (
        "misspelt field",
        "POST",
        LENET,
        {"image": [IMAGE_32]},
        JSON,
        400,
        "images: required field is missing (this endpoint takes images); "
        "image: unknown field (this endpoint takes only images)",
    ),
    (
        "body is a list",
        "POST",
        LINEAR,
        [1, 2],
        JSON,
        400,
        "request body must be a JSON object with x, got a list of 2",
    ),
    (
        "body is not JSON",
        "POST",
        LINEAR,
        b"x=1",
        JSON,
        400,
        "request body is not valid JSON: expected value at line 1 column 1",
    ),
    (
        "truncated JSON",
        "POST",
        LINEAR,
        b'{"x": [1.0,',
        JSON,
        400,
        "request body is not valid JSON: EOF while parsing a value at line 1 column 11",
    ),
    ("empty body", "POST", LINEAR, b"", JSON, 400, "x: required field is missing (this endpoint takes x)"),
    (
        "ragged rows",
        "POST",
        MULTI,
        {"x": [[73, 80, 75], [93, 88]]},
        JSON,
        400,
        "x[1]: list should have at least 3 items after validation, not 2",
    ),
    (
        "too many features",
        "POST",
        MULTI,
        {"x": [[73, 80, 75, 1]]},
        JSON,
        400,
        "x[0]: list should have at most 3 items after validation, not 4",
    ),
    (
        "flat where rows expected",
        "POST",
        MULTI,
        {"x": [73, 80, 75]},
        JSON,
        400,
        "x[0]: input should be a valid list, got 73; x[1]: input should be a valid list, got 80; "
        "x[2]: input should be a valid list, got 75",
    ),
    (
        "blobs 3 features",
        "POST",
        BLOBS,
        {"x": [[1, 1, 1]]},
        JSON,
        400,
        "x[0]: list should have at most 2 items after validation, not 3",
    ),
    (
        "image 32x30",
        "POST",
        LENET,
        {"images": [[[0.0] * 30 for _ in range(32)]]},
        JSON,
        400,
        "images[0]: expected a 32x32 or 28x28 image (rows x columns), got 32x30",
    ),
    (
        "image 30x30",
        "POST",
        LENET,
        {"images": [[[0.0] * 30 for _ in range(30)]]},
        JSON,
        400,
        "images[0]: expected a 32x32 or 28x28 image (rows x columns), got 30x30",
    ),
    (
        "image 8x8",
        "POST",
        LENET,
        {"images": [[[0.0] * 8 for _ in range(8)]]},
        JSON,
        400,
        "images[0][0]: list should have at least 28 items after validation, not 8; images[0][1]: list should "
        "have at least 28 items after validation, not 8; images[0][2]: list should have at least 28 items after "
        "validation, not 8; and 5 more errors",
    ),
    (
        "flat 1024 pixels",
        "POST",
        LENET,
        {"images": [[0.0] * 1024]},
        JSON,
        400,
        "images[0]: list should have at most 32 items after validation, not 1024",
    ),
    (
        "pixel above 1",
        "POST",
        LENET,
        {"images": [[[0.0] * 31 + [255.0], *IMAGE_32[1:]]]},
        JSON,
        400,
        "images[0][0][31]: expected a number at most 1, got 255.0",
    ),
    (
        "negative pixel",
        "POST",
        LENET,
        {"images": [[*IMAGE_32[:5], [-0.5] + [0.0] * 31, *IMAGE_32[6:]]]},
        JSON,
        400,
        "images[0][5][0]: expected a number at least 0, got -0.5",
    ),
    (
        "too many images",
        "POST",
        LENET,
        {"images": [IMAGE_32] * 257},
        JSON,
        400,
        "images: list should have at most 256 items after validation, not 257",
    ),
    (
        "no images",
        "POST",
        LENET,
        {"images": []},
        JSON,
        400,
        "images: list should have at least 1 item after validation, not 0",
    ),
    (
        "unknown model",
        "POST",
        "/v1/resnet/predict",
        {"x": [1.0]},
        JSON,
        404,
        f"unknown model 'resnet': expected one of {MODELS}",
    ),
    (
        "unknown model card",
        "GET",
        "/v1/models/resnet",
        None,
        None,
        404,
        f"unknown model 'resnet': expected one of {MODELS}",
    ),
    ("unknown route", "GET", "/v1/nothing/here", None, None, 404, "no such route: GET /v1/nothing/here"),
    ("wrong method", "GET", LINEAR, None, None, 405, "method GET is not allowed on /v1/linear/predict"),
    (
        "text/plain body",
        "POST",
        LINEAR,
        b'{"x": [1.0]}',
        "text/plain",
        415,
        "unsupported content type 'text/plain': expected application/json",
    ),
    (
        "form body",
        "POST",
        LINEAR,
        b"x=1",
        "application/x-www-form-urlencoded",
        415,
        "unsupported content type 'application/x-www-form-urlencoded': expected application/json",
    ),
    (
        "pickle body",
        "POST",
        LINEAR,
        b"\x80\x04N.",
        "application/vnd.bentoml+pickle",
        415,
        "unsupported content type 'application/vnd.bentoml+pickle': expected application/json",
    ),
    (
        "JSON to the upload route",
        "POST",
        UPLOAD,
        {"image": "http://example.com/x.png"},
        JSON,
        415,
        "unsupported content type 'application/json': expected multipart/form-data",
    ),
    (
        "upload not an image",
        "POST",
        UPLOAD,
        {"image": ("x.png", b"hello, not an image", "image/png")},
        None,
        415,
        "image: expected a PNG or JPEG image, got data that is not an image",
    ),
    (
        "upload a GIF",
        "POST",
        UPLOAD,
        {"image": ("x.gif", _gif(), "image/gif")},
        None,
        415,
        "image: expected a PNG or JPEG image, got GIF",
    ),
    (
        "upload empty file",
        "POST",
        UPLOAD,
        {"image": ("x.png", b"", "image/png")},
        None,
        400,
        "image: the uploaded file is empty; expected a PNG or JPEG image",
    ),
    (
        "upload blank image",
        "POST",
        UPLOAD,
        {"image": ("x.png", _png((64, 64), 255), "image/png")},
        None,
        400,
        "image: no digit found (the image is blank or has almost no contrast)",
    ),
    (
        "upload truncated PNG",
        "POST",
        UPLOAD,
        {"image": ("x.png", _png((64, 64), 0)[:60], "image/png")},
        None,
        400,
        "image: the file is damaged or truncated (image file is truncated)",
    ),
    (
        "upload wrong field",
        "POST",
        UPLOAD,
        {"picture": ("x.png", _png((64, 64), 0), "image/png")},
        None,
        400,
        "image: required field is missing (this endpoint takes image)",
    ),
    (
        "upload a text field",
        "POST",
        UPLOAD,
        {"image": (None, "http://169.254.169.254/x.png")},
        None,
        400,
        "image: expected a file upload, got a text field",
    ),
]


def send(http: httpx.Client, method: str, path: str, body: Any, content_type: str | None) -> httpx.Response:
    if path == UPLOAD and content_type is None:
        return http.post(path, files=body)
    if method == "GET":
        return http.get(path)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.post(path, content=data, headers={"content-type": content_type or JSON})
