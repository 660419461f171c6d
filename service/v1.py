"""The typed `/v1` routes: each model's predict route (its contract from its card), the catalog, uploads.

A FastAPI app over the data plane. The predict route reads the body itself and hands it to the model's
contract (service.kinds): one parse, checks on whole arrays, Pydantic only to word a refusal. Its
request and response models are published per model in the OpenAPI document (service.openapi).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response

from service.dataplane import DataPlane, front_door
from service.errors import ModelNotFound, echo, error_response
from service.schemas import ImageResponse, ModelInfo, ModelList, explain

PlaneSource = Callable[[], DataPlane]


def create(plane: PlaneSource) -> FastAPI:
    """The /v1 app over the data plane that `plane()` returns (bound once the worker has loaded it)."""
    app = front_door("tinyserve /v1")

    @app.exception_handler(RequestValidationError)
    async def _refuse(request: Request, exc: RequestValidationError) -> Response:
        errors = [dict(e) | {"loc": tuple(e["loc"][1:])} for e in exc.errors()]  # drop "body"/"path"
        message = "; ".join(
            f"{e['loc'][0]}: expected a file upload, got a text field"
            if "Expected UploadFile" in e["msg"]
            else explain(e, ("image",))
            for e in errors[:3]
        )
        detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors]
        return error_response(400, message, detail)

    @app.get(
        "/models",
        response_model=ModelList,
        summary="Every served model (card, provider in use, readiness) and the runtime: cores, workers, threads",
    )
    def list_models() -> ModelList:
        served = plane()
        return ModelList(models=[served.model_info(n) for n in served.registry.names()], runtime=served.runtime_info())

    @app.get(
        "/models/{name}",
        response_model=ModelInfo,
        summary="One model: its card, versions, provider in use and readiness",
        responses={404: {"description": "unknown model"}},
    )
    def get_model(name: str) -> ModelInfo:
        return plane().model_info(name)

    @app.get(
        "/models/{name}/pictures/{picture}",
        summary="A training picture of the served version (loss curve, confusion matrix, decision boundary)",
        response_class=FileResponse,
        responses={404: {"description": "unknown model or picture"}},
    )
    def get_picture(name: str, picture: str) -> FileResponse:
        pictures = {p.name: p for p in plane().model(name).pictures}  # only these names ever reach the disk
        if picture not in pictures:
            known = ", ".join(pictures) or "none"
            raise ModelNotFound(f"unknown picture {echo(picture)} of model {name!r}: expected one of {known}")
        return FileResponse(pictures[picture], media_type="image/png")

    @app.post(
        "/{name}/predict-image",
        response_model=ImageResponse,
        response_model_exclude_none=True,
        summary="Classify an uploaded photo or scan (an image classifier, e.g. lenet)",
        responses={
            400: {"description": "a damaged file, or no digit in it"},
            404: {"description": "unknown model"},
            413: {"description": "larger than the pixel limit, or than the body limit"},
            415: {"description": "not a PNG or JPEG"},
        },
    )
    async def predict_image(
        name: str,
        image: Annotated[
            UploadFile,
            File(description="a PNG or JPEG of one digit: any size, dark ink on light paper or light on dark"),
        ],
        input: Annotated[
            bool, Query(description="also answer the 32x32 image the model was given, after the preprocessing")
        ] = False,
    ) -> ImageResponse:
        """Grayscale, ink made high whatever the polarity, scaled, stroke evened out, centred, classified."""
        return await plane().predict_image(name, await image.read(), with_input=input)

    return app
