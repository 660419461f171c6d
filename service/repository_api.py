"""Triton's model repository extension over HTTP: the index, load and unload (service.control does the work).

`tritonclient.http`'s `get_model_repository_index`, `load_model` and `unload_model` work unchanged. A load
may carry Triton's `parameters.config` with a `version_policy` (e.g. `{"specific": {"versions": [1]}}`);
an unload may name one version in `parameters.version` (tinyserve's, for rolling one version back).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request

from service.control import Controller, parse_policy
from service.dataplane import DataPlane, front_door
from service.errors import InvalidInput, Unavailable

PlaneSource = Callable[[], DataPlane]
PATH = "/v2/repository"


def create(plane: PlaneSource) -> FastAPI:
    app = front_door("tinyserve model repository (Triton's extension)")

    @app.post(f"{PATH}/index", summary="Every model version in the repository: READY or UNAVAILABLE, and why")
    async def index(request: Request) -> list[dict[str, str]]:
        body = await _body(request)
        return repository_index(plane(), ready=body.get("ready") is True)

    @app.post(f"{PATH}/models/{{name}}/load", summary="Serve a model's versions (its version policy) on every worker")
    async def load(name: str, request: Request) -> dict[str, Any]:
        return await load_model(plane(), name, await _parameters(request))

    @app.post(f"{PATH}/models/{{name}}/unload", summary="Stop serving a model (or one version) on every worker")
    async def unload(name: str, request: Request) -> dict[str, Any]:
        return await unload_model(plane(), name, await _parameters(request))

    return app


# The three calls as every front door makes them (HTTP here, gRPC in service.grpc_server): one set of sentences.
def repository_index(plane: DataPlane, *, ready: bool) -> list[dict[str, str]]:
    return control_of(plane).index(ready=ready)


async def load_model(plane: DataPlane, name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(parameters) - {"config"})
    if unknown:
        raise InvalidInput(
            f"unsupported load parameters {', '.join(map(repr, unknown))}: only 'config' "
            "(a version_policy) is taken; model files come from the repository"
        )
    return await control_of(plane).load(name, parse_policy(parameters.get("config")))


async def unload_model(plane: DataPlane, name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    version = parameters.get("version")
    if version is not None and not isinstance(version, (str, int)):
        raise InvalidInput(f"parameters.version must be a version string, got {json.dumps(version)}")
    return await control_of(plane).unload(name, None if version is None else str(version))


def control_of(plane: DataPlane) -> Controller:
    control = plane.control
    if control is None:
        raise Unavailable("the model repository calls are not available in this server")
    return control


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as e:
        raise InvalidInput(f"request JSON is not valid: {e}") from None
    if not isinstance(body, dict):
        raise InvalidInput(f"expected a JSON object, got {type(body).__name__}")
    return body


async def _parameters(request: Request) -> dict[str, Any]:
    parameters = (await _body(request)).get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInput("parameters must be a JSON object")
    return parameters
