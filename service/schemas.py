"""Request and response models of the typed routes: the HTTP contract, with its limits and examples.

Numbers are strict (no "2.5" strings, no booleans) and finite (no NaN or Infinity); every limit is
declared here so that it shows in the OpenAPI document. A refused request explains itself: each
error names the field, what was expected and what came.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from modelrepo import MAX_MAGNITUDE  # the one rule on values, shared with V2 and the client

MAX_ROWS = 4096  # rows per request on the tabular routes
MAX_IMAGES = 256  # images per request on /v1/lenet/predict (a 32x32 image is ~8 KB of JSON)
IMAGE_SIZES = (32, 28)  # 28x28 (MNIST-sized) images are zero-padded to 32x32

Finite = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-MAX_MAGNITUDE, le=MAX_MAGNITUDE)]
Pixel = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0.0, le=1.0)]


def _square_image(image: list[list[float]]) -> list[list[float]]:
    height, widths = len(image), {len(row) for row in image}
    if height not in IMAGE_SIZES or widths != {height}:
        got = f"{height}x{'/'.join(map(str, sorted(widths)))}"
        raise PydanticCustomError(
            "image_size", "expected a 32x32 or 28x28 image (rows x columns), got {got}", {"got": got}
        )
    return image


def _square_schema(side: int) -> dict[str, Any]:
    pixel = {"type": "number", "minimum": 0, "maximum": 1}
    row = {"type": "array", "items": pixel, "minItems": side, "maxItems": side}
    return {"type": "array", "items": row, "minItems": side, "maxItems": side, "title": f"{side}x{side} image"}


Image = Annotated[
    list[Annotated[list[Pixel], Field(min_length=28, max_length=32)]],
    Field(min_length=28, max_length=32),
    AfterValidator(_square_image),
    WithJsonSchema({"anyOf": [_square_schema(side) for side in IMAGE_SIZES]}),  # what the validator enforces
]


def _loc(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _got(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"string {value[:40]!r}"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, float | int):
        return repr(value)
    if value is None:
        return "null"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def explain(error: dict[str, Any], fields: tuple[str, ...]) -> str:
    """One pydantic error as a sentence: field, expectation, what came."""
    where = _loc(tuple(error["loc"]))
    kind = error["type"]
    if kind == "missing":
        return f"{where}: required field is missing (this endpoint takes {', '.join(fields)})"
    if kind == "extra_forbidden":
        return f"{where}: unknown field (this endpoint takes only {', '.join(fields)})"
    if kind == "model_type":
        return f"request body must be a JSON object with {', '.join(fields)}, got {_got(error['input'])}"
    limit = {"less_than_equal": ("at most", "le"), "greater_than_equal": ("at least", "ge")}.get(kind)
    if limit is not None and "ctx" in error:
        return f"{where}: expected a number {limit[0]} {error['ctx'][limit[1]]:g}, got {_got(error['input'])}"
    message = error["msg"][0].lower() + error["msg"][1:]
    if kind.startswith(("too_short", "too_long", "image_size")):
        return f"{where}: {message}"
    return f"{where}: {message}, got {_got(error['input'])}"


class Request(BaseModel):
    """Base of every request: unknown fields are refused, and every error is explained."""

    model_config = ConfigDict(extra="forbid")
    max_explained: ClassVar[int] = 3

    @model_validator(mode="wrap")
    @classmethod
    def _explain_errors(cls, data: Any, handler: ModelWrapValidatorHandler[Request]) -> Request:
        try:
            return handler(data)
        except ValidationError as e:
            errors = e.errors(include_url=False)
            sentences = [explain(dict(err), tuple(cls.model_fields)) for err in errors[: cls.max_explained]]
            if len(errors) > cls.max_explained:
                sentences.append(f"and {len(errors) - cls.max_explained} more errors")
            raise PydanticCustomError("invalid_request", "; ".join(sentences)) from None


class Reply(BaseModel):
    model: str = Field(description="name of the model that answered", examples=["linear"])
    version: str = Field(description="version of the model that answered", examples=["1"])


class LinearRequest(Request):
    x: list[Finite] = Field(
        min_length=1,
        max_length=MAX_ROWS,
        description=f"one value per row, 1 to {MAX_ROWS} rows; the model fits y = b + w*x",
        examples=[[1.0, 2.0]],
    )


class MultilinearRequest(Request):
    x: list[Annotated[list[Finite], Field(min_length=3, max_length=3)]] = Field(
        min_length=1,
        max_length=MAX_ROWS,
        description=f"rows of three raw exam scores (about 0-100), 1 to {MAX_ROWS} rows",
        examples=[[[73, 80, 75], [93, 88, 93]]],
    )


class RegressionResponse(Reply):
    y: list[float] = Field(description="one prediction per input row, in input order", examples=[[12.0, 19.0]])


class BlobsRequest(Request):
    x: list[Annotated[list[Finite], Field(min_length=2, max_length=2)]] = Field(
        min_length=1,
        max_length=MAX_ROWS,
        description=f"2-D points, 1 to {MAX_ROWS} rows; the clusters sit near (+-1, +-1)",
        examples=[[[1, 1], [-1, 1]]],
    )


class BlobsResponse(Reply):
    labels: list[int] = Field(description="predicted label (0 or 1) per row", examples=[[0, 1]])
    probabilities: list[float] = Field(description="P(label 1) per row", examples=[[0.01, 0.99]])


class LenetRequest(Request):
    images: list[Image] = Field(
        min_length=1,
        max_length=MAX_IMAGES,
        description=(
            f"1 to {MAX_IMAGES} grayscale images, each 32x32 or 28x28 (MNIST-sized, zero-padded to 32x32) "
            "rows of pixels in [0, 1], ink high (a white digit on black)"
        ),
        examples=[[[[0.0] * 32 for _ in range(32)]]],
    )


class LenetResponse(Reply):
    labels: list[int] = Field(description="predicted digit per image", examples=[[7]])
    probabilities: list[list[float]] = Field(
        description="softmax over the digits 0-9, one list of 10 per image",
        examples=[[[0.0] * 7 + [1.0, 0.0, 0.0]]],
    )


class LenetImageResponse(Reply):
    label: int = Field(description="predicted digit", examples=[7])
    probabilities: list[float] = Field(
        description="softmax over the digits 0-9", examples=[[0.0] * 7 + [1.0, 0.0, 0.0]]
    )
    input: list[list[float]] | None = Field(
        None, description="with ?input=true: the 32x32 image LeNet was given, after the server's preprocessing"
    )


class TensorInfo(BaseModel):
    name: str
    dtype: str
    shape: list[int] = Field(description="-1 marks the batch axis")


class ModelInfo(BaseModel):
    name: str
    version: str
    versions: list[str] = Field(description="every version loaded; requests without a version get the latest")
    provider: str = Field(description="the ONNX Runtime execution provider actually in use")
    provider_options: dict[str, str] = Field(
        description="the provider's chosen options as ONNX Runtime reports them for this model's session "
        "(CUDA: device_id, use_tf32, cudnn_conv_algo_search; none on the CPU)",
        examples=[{"device_id": "0", "use_tf32": "0", "cudnn_conv_algo_search": "HEURISTIC"}],
    )
    ready: bool
    card: dict[str, Any] = Field(description="the model card (card.json)")
    pictures: list[str] = Field(
        default_factory=list, description="training pictures, each at GET /v1/models/{name}/pictures/{picture}"
    )


class RuntimeInfo(BaseModel):
    """How this server spends the machine, decided once at start-up (TINYSERVE_* settings override it)."""

    cores: int = Field(description="CPU cores available to the server: its CPU affinity, capped by a cgroup quota")
    cpu_affinity: int = Field(description="CPUs the process may run on")
    cgroup_cpu_quota: float | None = Field(description="the cgroup CPU limit in cores; null when unlimited")
    workers: int = Field(description="server worker processes")
    intra_op_threads: int = Field(description="ONNX Runtime intra-op threads per worker")
    spinning: bool = Field(description="whether idle ONNX Runtime threads spin")
    provider: str = Field(description="the execution provider every model runs on")
    provider_options: dict[str, str] = Field(description="the provider options asked for")
    cuda_fallback: str | None = Field(
        description="with TINYSERVE_PROVIDERS=auto on a CUDA build: why CUDA could not run (null otherwise)"
    )


class ModelList(BaseModel):
    models: list[ModelInfo]
    runtime: RuntimeInfo
