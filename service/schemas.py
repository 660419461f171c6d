"""Request and response models of the typed routes: the HTTP contract, with its limits and examples.

Numbers are strict (no "2.5" strings, no booleans) and finite (no NaN or Infinity); every limit is
declared here so that it shows in the OpenAPI document. A refused request explains itself: each
error names the field, what was expected and what came.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError


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


class ImageResponse(Reply):
    """An uploaded picture, classified (`POST /v1/{name}/predict-image`)."""

    label: int = Field(description="the predicted class's index", examples=[7])
    probabilities: list[float] = Field(
        description="softmax over the classes, in the card's label order", examples=[[0.0] * 7 + [1.0, 0.0, 0.0]]
    )
    input: list[list[float]] | None = Field(
        None, description="with ?input=true: the image the model was given, after the server's preprocessing"
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
