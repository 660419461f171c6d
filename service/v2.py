"""The Open Inference Protocol (KServe V2) over HTTP, with Triton's binary tensor extension.

A FastAPI app mounted into the BentoML service at the root (its routes carry the full /v2 paths, so
`GET /v2` itself is served). Inference runs through the same batchers, sessions and metrics as the
typed /v1 routes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import bentoml
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import ValidationError

from service import __version__, tensors
from service.errors import ApiError, error_response, unknown_model
from service.schemas import explain

SERVER_NAME = "tinyserve"
PLATFORM = "onnxruntime_onnx"

# Work on a large body runs on a thread so that the event loop keeps serving other requests; smaller ones
# stay on the loop, where the hop to a thread (~0.1-0.3 ms) would cost more than the work. Measured per
# body: JSON tensors ~1.3 ms for 83 KB (256 LeNet images: 69 ms), binary tensors 0.4 ms for 1 MB; JSON
# outputs ~2 us a value (1,024 LeNet rows of logits: 18 ms).
THREAD_JSON_BYTES = 64 * 1024
THREAD_BINARY_BYTES = 1024 * 1024
THREAD_JSON_VALUES = 1024
T = TypeVar("T")

app = FastAPI(title="tinyserve Open Inference Protocol (V2)")


def _service() -> Any:
    return bentoml.get_current_service()


def _resolve(name: str, version: str | None) -> Any:
    """The model, or a 404 response naming what exists."""
    service = _service()
    names = service.model_names()
    if name not in names:
        return unknown_model(name, names)
    if version is None:
        return service.models[name]
    model = service.models.get(f"{name}/{version}")
    if model is None:
        versions = ", ".join(service.versions(name))
        return error_response(404, f"unknown version '{version}' of model '{name}': available versions are {versions}")
    return model


def _metadata(model: Any) -> dict[str, Any]:
    return {
        "name": model.name,
        "versions": _service().versions(model.name),
        "platform": PLATFORM,
        "inputs": [s.metadata() for s in model.inputs],
        "outputs": [s.metadata() for s in model.outputs],
    }


@app.get("/v2", summary="Server metadata")
def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": __version__, "extensions": ["binary_tensor_data"]}


@app.get("/v2/health/live", summary="Liveness")
def live() -> dict[str, bool]:
    return {"live": True}


@app.get("/v2/health/ready", summary="Readiness: every model loaded, verified and warmed")
def ready() -> Any:
    if not _service().is_ready():
        return error_response(503, "not ready")
    return {"ready": True}


@app.get("/v2/models/{name}", summary="Model metadata (latest version)")
def model_metadata(name: str) -> Any:
    model = _resolve(name, None)
    return model if isinstance(model, Response) else _metadata(model)


@app.get("/v2/models/{name}/versions/{version}", summary="Model metadata")
def model_version_metadata(name: str, version: str) -> Any:
    model = _resolve(name, version)
    return model if isinstance(model, Response) else _metadata(model)


@app.get("/v2/models/{name}/ready", summary="Model readiness (latest version)")
def model_ready(name: str) -> Any:
    model = _resolve(name, None)
    return model if isinstance(model, Response) else {"name": name, "ready": _service().is_ready()}


@app.get("/v2/models/{name}/versions/{version}/ready", summary="Model readiness")
def model_version_ready(name: str, version: str) -> Any:
    model = _resolve(name, version)
    return model if isinstance(model, Response) else {"name": name, "ready": _service().is_ready()}


_INFER_DOC: dict[str, Any] = {
    "requestBody": {
        "content": {
            "application/json": {"schema": tensors.InferenceRequest.model_json_schema()},
            "application/octet-stream": {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": "the JSON request (its length in the Inference-Header-Content-Length header) "
                    "followed by the raw little-endian bytes of each input with parameters.binary_data_size",
                }
            },
        },
        "required": True,
    }
}


@app.post("/v2/models/{name}/infer", summary="Inference (latest version)", openapi_extra=_INFER_DOC)
async def infer(name: str, request: Request) -> Response:
    return await _infer(name, None, request)


@app.post("/v2/models/{name}/versions/{version}/infer", summary="Inference", openapi_extra=_INFER_DOC)
async def infer_version(name: str, version: str, request: Request) -> Response:
    return await _infer(name, version, request)


async def _infer(name: str, version: str | None, request: Request) -> Response:
    model = _resolve(name, version)
    if isinstance(model, Response):
        return model
    body = await request.body()
    try:
        parsed, x, wanted = await decode_request(body, request.headers.get(tensors.HEADER), model)
    except tensors.TensorError as e:
        return error_response(400, str(e))
    try:
        result = await _service().infer(model, x)
    except ApiError as e:
        return error_response(int(e.error_code), e.message)
    header: dict[str, Any] = {"model_name": model.name, "model_version": model.version}
    if parsed.id is not None:
        header["id"] = parsed.id
    outputs = [(spec, binary, result) for spec, binary in wanted]
    as_json = sum(result.size for _, binary in wanted if not binary)
    content, json_length = await _on_thread_if(as_json > THREAD_JSON_VALUES, tensors.encode_response, header, outputs)
    if json_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(json_length)},
    )


Decoded = tuple[tensors.InferenceRequest, np.ndarray, list[tuple[tensors.TensorSpec, bool]]]


async def decode_request(body: bytes, header_length: str | None, model: Any) -> Decoded:
    """The request, the model's input array and the wanted outputs; a large body is decoded on a thread."""
    json_part, binary = tensors.split_body(body, header_length)
    heavy = len(json_part) > THREAD_JSON_BYTES or len(binary) > THREAD_BINARY_BYTES
    return await _on_thread_if(heavy, _decode, json_part, binary, model)


def _decode(json_part: bytes, binary: memoryview, model: Any) -> Decoded:
    try:
        parsed = tensors.InferenceRequest.model_validate_json(json_part)
    except ValidationError as e:
        raise tensors.TensorError(_explain(e)) from None
    inputs = tensors.decode_inputs(parsed, binary, model.inputs, model.entry.card.input_range)
    return parsed, inputs[model.input_name], tensors.wanted_outputs(parsed, model.outputs)


async def _on_thread_if(heavy: bool, function: Callable[..., T], *args: Any) -> T:
    if not heavy:
        return function(*args)
    return await anyio.to_thread.run_sync(function, *args)


def _explain(error: ValidationError) -> str:
    errors = error.errors(include_url=False)
    if errors[0]["type"] == "json_invalid":
        return f"request JSON is not valid: {errors[0]['msg'].removeprefix('Invalid JSON: ')}"
    fields = tuple(tensors.InferenceRequest.model_fields)
    return "; ".join(explain(dict(e), fields) for e in errors[:3])
