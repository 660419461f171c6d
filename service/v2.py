"""The Open Inference Protocol (KServe V2) over HTTP, with Triton's binary tensor extension.

A FastAPI app over the data plane, mounted at the root (its routes carry the full /v2 paths). It only
frames: the body is split into its JSON and binary parts, the data plane decodes and checks the tensors
and runs the model, and the answer is encoded back; large bodies are worked on a thread.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import ValidationError

from service import __version__, tensors
from service.dataplane import DataPlane, V2Result, front_door, on_thread_if
from service.errors import InvalidInput, Unavailable
from service.schemas import explain
from service.timing import Timing

SERVER_NAME = "tinyserve"
EXTENSIONS = ["binary_tensor_data"]

# Work on a large body runs on a thread so that the event loop keeps serving other requests; smaller ones
# stay on the loop, where the hop to a thread (~0.1-0.3 ms) would cost more than the work. Measured per
# body: JSON tensors ~1.3 ms for 83 KB (256 LeNet images: 69 ms), binary tensors 0.4 ms for 1 MB; JSON
# outputs ~2 us a value (1,024 LeNet rows of logits: 18 ms).
THREAD_JSON_BYTES = 64 * 1024
THREAD_BINARY_BYTES = 1024 * 1024
THREAD_JSON_VALUES = 1024

PlaneSource = Callable[[], DataPlane]


def create(plane: PlaneSource, *, server_timing: bool = False) -> FastAPI:
    app = front_door("tinyserve Open Inference Protocol (V2)")

    @app.get("/v2", summary="Server metadata")
    def server_metadata() -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}

    @app.get("/v2/health/live", summary="Liveness")
    def live() -> dict[str, bool]:
        return {"live": plane().live()}

    @app.get("/v2/health/ready", summary="Readiness: every model loaded, verified and warmed")
    def ready() -> dict[str, bool]:
        if not plane().ready():
            raise Unavailable("not ready")
        return {"ready": True}

    @app.get("/v2/models/{name}", summary="Model metadata (latest version)")
    def model_metadata(name: str) -> dict[str, Any]:
        served = plane()
        return served.metadata(served.model(name))

    @app.get("/v2/models/{name}/versions/{version}", summary="Model metadata")
    def model_version_metadata(name: str, version: str) -> dict[str, Any]:
        served = plane()
        return served.metadata(served.model(name, version))

    @app.get("/v2/models/{name}/ready", summary="Model readiness (latest version)")
    def model_ready(name: str) -> dict[str, Any]:
        served = plane()
        served.model(name)
        return {"name": name, "ready": served.ready()}

    @app.get("/v2/models/{name}/versions/{version}/ready", summary="Model readiness")
    def model_version_ready(name: str, version: str) -> dict[str, Any]:
        served = plane()
        served.model(name, version)
        return {"name": name, "ready": served.ready()}

    @app.post("/v2/models/{name}/infer", summary="Inference (latest version)", openapi_extra=INFER_DOC)
    async def infer(name: str, request: Request) -> Response:
        return await _infer(plane(), name, None, request, server_timing)

    @app.post("/v2/models/{name}/versions/{version}/infer", summary="Inference", openapi_extra=INFER_DOC)
    async def infer_version(name: str, version: str, request: Request) -> Response:
        return await _infer(plane(), name, version, request, server_timing)

    return app


INFER_DOC: dict[str, Any] = {
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


async def _infer(plane: DataPlane, name: str, version: str | None, request: Request, timing_on: bool) -> Response:
    plane.model(name, version)  # an unknown model is refused before its body is read
    content, headers = await answer(plane, name, version, await request.body(), request.headers, timing_on)
    return Response(content, headers=headers)


async def answer(
    plane: DataPlane, name: str, version: str | None, body: bytes, headers: Mapping[str, str], timing_on: bool
) -> tuple[bytes, dict[str, str]]:
    """A V2 inference request's body and headers -> the answer's body and headers (service.fastpath serves it)."""
    timing = Timing()
    with timing.measure("parse"):
        parsed, binary, heavy = await decode_request(body, headers.get(tensors.HEADER))
    result = await plane.infer(name, version, parsed, binary, timing, offload=heavy)
    with timing.measure("encode"):
        content, json_length = await encode(result)
    out = {"server-timing": timing.header()} if timing_on else {}
    if json_length is None:
        return content, out | {"content-type": "application/json"}
    return content, out | {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(json_length),
    }


async def decode_request(body: bytes, header_length: str | None) -> tuple[tensors.InferenceRequest, memoryview, bool]:
    """The request's JSON, validated, its binary part, and whether it is heavy (then parsed on a thread)."""
    json_part, binary = tensors.split_body(body, header_length)
    heavy = len(json_part) > THREAD_JSON_BYTES or len(binary) > THREAD_BINARY_BYTES
    return await on_thread_if(heavy, _parse, json_part), binary, heavy


def _parse(json_part: bytes) -> tensors.InferenceRequest:
    try:
        return tensors.InferenceRequest.model_validate_json(json_part)
    except ValidationError as e:
        raise InvalidInput(_explain(e)) from None


async def encode(result: V2Result) -> tuple[bytes, int | None]:
    header: dict[str, Any] = {"model_name": result.model.name, "model_version": result.model.version}
    if result.id is not None:
        header["id"] = result.id
    as_json = sum(array.size for _, binary, array in result.outputs if not binary)
    return await on_thread_if(as_json > THREAD_JSON_VALUES, tensors.encode_response, header, result.outputs)


def _explain(error: ValidationError) -> str:
    errors = error.errors(include_url=False)
    if errors[0]["type"] == "json_invalid":
        return f"request JSON is not valid: {errors[0]['msg'].removeprefix('Invalid JSON: ')}"
    fields = tuple(tensors.InferenceRequest.model_fields)
    return "; ".join(explain(dict(e), fields) for e in errors[:3])
