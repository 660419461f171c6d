"""The Open Inference Protocol (KServe V2) over HTTP, with Triton's binary tensor extension.

A FastAPI app over the data plane, mounted at the root (its routes carry the full /v2 paths). It only
frames: the body is split into its JSON and binary parts, the data plane decodes and checks the tensors
and runs the model, and the answer is encoded back; large bodies are worked on a thread.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import ValidationError

from service import __version__, metrics, tensors
from service.dataplane import DataPlane, V2Result, front_door, on_thread_if
from service.errors import InvalidInput, PayloadTooLarge, Unavailable
from service.schemas import explain
from service.timing import Timing

SERVER_NAME = "tinyserve"
EXTENSIONS = ["binary_tensor_data", "classification", "statistics"]
# Request bodies Triton's clients compress (request_compression_algorithm): zlib's window bits for each.
ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}

# Work on a large body runs on a thread so that the event loop keeps serving other requests; smaller ones
# stay on the loop, where the hop to a thread (~0.1-0.3 ms) would cost more than the work. Measured per
# body: JSON tensors ~1.3 ms for 83 KB (256 LeNet images: 69 ms), binary tensors 0.4 ms for 1 MB; JSON
# outputs ~2 us a value (1,024 LeNet rows of logits: 18 ms).
THREAD_JSON_BYTES = 64 * 1024
THREAD_BINARY_BYTES = 1024 * 1024
THREAD_JSON_VALUES = 1024

PlaneSource = Callable[[], DataPlane]


def create(plane: PlaneSource, *, server_timing: bool = False, max_body_bytes: int = 16 * 1024 * 1024) -> FastAPI:
    app = front_door("tinyserve Open Inference Protocol (V2)")

    def get(path: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """A GET route, and HEAD on it (the same answer without its body; not a second operation in the docs)."""

        def register(route: Callable[..., Any]) -> Callable[..., Any]:
            app.head(path, include_in_schema=False)(route)
            return app.get(path, **kwargs)(route)

        return register

    @get("/v2", summary="Server metadata")
    @get("/v2/", include_in_schema=False)  # answered in place: a redirect would name this server's scheme
    def server_metadata() -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}

    @get("/v2/health/live", summary="Liveness")
    def live() -> dict[str, bool]:
        return {"live": plane().live()}

    @get("/v2/health/ready", summary="Readiness: every model loaded, verified and warmed")
    def ready() -> dict[str, bool]:
        if not plane().ready():
            raise Unavailable("not ready")
        return {"ready": True}

    @get("/v2/models/stats", summary="Inference statistics of every model (all workers)")
    def statistics() -> dict[str, Any]:
        return plane().statistics()

    @get("/v2/models/{name}/stats", summary="Inference statistics of a model's versions (all workers)")
    def model_statistics(name: str) -> dict[str, Any]:
        return plane().statistics(name)

    @get("/v2/models/{name}/versions/{version}/stats", summary="Inference statistics of a version (all workers)")
    def model_version_statistics(name: str, version: str) -> dict[str, Any]:
        return plane().statistics(name, version)

    @get("/v2/models/{name}", summary="Model metadata (latest version)")
    def model_metadata(name: str) -> dict[str, Any]:
        served = plane()
        return served.metadata(served.model(name))

    @get("/v2/models/{name}/versions/{version}", summary="Model metadata")
    def model_version_metadata(name: str, version: str) -> dict[str, Any]:
        served = plane()
        return served.metadata(served.model(name, version))

    @get("/v2/models/{name}/ready", summary="Model readiness (latest version)")
    def model_ready(name: str) -> dict[str, Any]:
        served = plane()
        served.model(name)
        return {"name": name, "ready": served.ready()}

    @get("/v2/models/{name}/versions/{version}/ready", summary="Model readiness")
    def model_version_ready(name: str, version: str) -> dict[str, Any]:
        served = plane()
        served.model(name, version)
        return {"name": name, "ready": served.ready()}

    @app.post("/v2/models/{name}/infer", summary="Inference (latest version)", openapi_extra=INFER_DOC)
    async def infer(name: str, request: Request) -> Response:
        return await _infer(plane(), name, None, request, server_timing, max_body_bytes)

    @app.post("/v2/models/{name}/versions/{version}/infer", summary="Inference", openapi_extra=INFER_DOC)
    async def infer_version(name: str, version: str, request: Request) -> Response:
        return await _infer(plane(), name, version, request, server_timing, max_body_bytes)

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


async def _infer(
    plane: DataPlane, name: str, version: str | None, request: Request, timing_on: bool, max_body_bytes: int
) -> Response:
    plane.model(name, version)  # an unknown model is refused before its body is read
    body = await request.body()
    content, headers = await answer(plane, name, version, body, request.headers, timing_on, max_body_bytes)
    return Response(content, headers=headers)


async def answer(
    plane: DataPlane,
    name: str,
    version: str | None,
    body: bytes,
    headers: Mapping[str, str],
    timing_on: bool,
    max_body_bytes: int,
) -> tuple[bytes, dict[str, str]]:
    """A V2 inference request's body and headers -> the answer's body and headers (service.fastpath serves it)."""
    with metrics.counting("http"):
        timing = Timing()
        encoding = headers.get("content-encoding", "identity").strip().lower()
        with timing.measure("parse"):
            if encoding in ENCODINGS:  # what the guard let through: gzip or deflate, bounded as it inflates
                body = await on_thread_if(len(body) > THREAD_BINARY_BYTES // 8, inflate, body, encoding, max_body_bytes)
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


def inflate(body: bytes, encoding: str, max_bytes: int) -> bytes:
    """A compressed request body, decompressed; what it grows to counts against the body limit."""
    inflater = zlib.decompressobj(ENCODINGS[encoding])
    try:
        data = inflater.decompress(body, max_bytes + 1)
    except zlib.error as e:
        raise InvalidInput(f"request body is not valid {encoding} data ({e}); send it uncompressed") from None
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"request body too large: more than {max_bytes} bytes once decompressed, the limit is {max_bytes} "
            "(TINYSERVE_MAX_BODY_BYTES)"
        )
    if not inflater.eof:
        raise InvalidInput(f"request body is truncated {encoding} data; send the whole stream")
    return data


async def decode_request(body: bytes, header_length: str | None) -> tuple[tensors.InferenceRequest, memoryview, bool]:
    """The request's JSON, validated, its binary part, and whether it is heavy (then parsed on a thread)."""
    json_part, binary = tensors.split_body(body, header_length)
    heavy = len(json_part) > THREAD_JSON_BYTES or len(binary) > THREAD_BINARY_BYTES
    return await on_thread_if(heavy, _parse, json_part), binary, heavy


def _parse(json_part: bytes) -> tensors.InferenceRequest:
    """orjson, its lists and maps counted (tensors.check_counts), then Pydantic on the objects: faster than
    Pydantic's own JSON parsing (24 against 31 us for one LeNet image, 10.9 against 13.0 ms for 256). What
    orjson refuses goes to Pydantic, which words what is wrong with it."""
    try:
        try:
            data = orjson.loads(json_part)
        except orjson.JSONDecodeError:
            return tensors.InferenceRequest.model_validate_json(json_part)
        tensors.check_counts(data)
        return tensors.InferenceRequest.model_validate(data)
    except ValidationError as e:
        raise InvalidInput(_explain(e)) from None


def validate_request(data: dict[str, Any]) -> tensors.InferenceRequest:
    """A request another transport decoded (gRPC), checked as a JSON body is, with the same sentences."""
    try:
        return tensors.InferenceRequest.model_validate(data)
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
