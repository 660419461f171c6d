"""The /v1 routes that are not JSON-in/JSON-out: the model catalog and the image upload.

A FastAPI app mounted into the BentoML service: FastAPI gives GET routes with path parameters and a
strict multipart parser (BentoML's would json-decode binary form fields into a 500, and fetch a URL
given in place of a file).
"""

from __future__ import annotations

from typing import Annotated, Any

import bentoml
from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response

from service.errors import error_response, unknown_model
from service.images import ImageRejected
from service.schemas import LenetImageResponse, ModelInfo, ModelList, explain

app = FastAPI(title="tinyserve /v1 catalog and uploads")


def _service() -> Any:
    return bentoml.get_current_service()


def _unknown_model(name: str) -> Response:
    return unknown_model(name, _service().model_names())


@app.exception_handler(RequestValidationError)
async def _refuse(request: Request, exc: RequestValidationError) -> Response:
    errors = [dict(e) | {"loc": tuple(e["loc"][1:])} for e in exc.errors()]  # drop "body"/"path"
    message = "; ".join(
        f"{e['loc'][0]}: expected a file upload, got a text field"
        if "Expected UploadFile" in e["msg"]
        else explain(e, ("image",))
        for e in errors[:3]
    )
    return error_response(400, message, [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors])


@app.get(
    "/models",
    response_model=ModelList,
    summary="Every served model (card, provider in use, readiness) and the runtime: cores, workers, threads",
)
def list_models() -> ModelList:
    service = _service()
    return ModelList(models=[service.model_info(n) for n in service.model_names()], runtime=service.runtime_info())


@app.get(
    "/models/{name}",
    response_model=ModelInfo,
    summary="One model: its card, versions, provider in use and readiness",
    responses={404: {"description": "unknown model"}},
)
def get_model(name: str) -> Any:
    if name not in _service().model_names():
        return _unknown_model(name)
    return _service().model_info(name)


@app.get(
    "/models/{name}/pictures/{picture}",
    summary="A training picture of the served version (loss curve, confusion matrix, decision boundary)",
    response_class=FileResponse,
    responses={404: {"description": "unknown model or picture"}},
)
def get_picture(name: str, picture: str) -> Any:
    if name not in _service().model_names():
        return _unknown_model(name)
    pictures = {p.name: p for p in _service().pictures(name)}  # only these names: no path ever reaches the disk
    if picture not in pictures:
        known = ", ".join(pictures) or "none"
        return error_response(404, f"unknown picture {picture!r} of model {name!r}: expected one of {known}")
    return FileResponse(pictures[picture], media_type="image/png")


@app.post(
    "/lenet/predict-image",
    response_model=LenetImageResponse,
    response_model_exclude_none=True,
    summary="Classify an uploaded photo or scan of one digit",
    responses={
        400: {"description": "a damaged file, or no digit in it"},
        413: {"description": "larger than 8192 pixels a side, or than the body limit"},
        415: {"description": "not a PNG or JPEG"},
    },
)
async def predict_lenet_image(
    image: Annotated[
        UploadFile,
        File(description="a PNG or JPEG of one digit: any size, dark ink on light paper or light on dark"),
    ],
    input: Annotated[
        bool, Query(description="also answer the 32x32 image LeNet was given, after the preprocessing")
    ] = False,
) -> Any:
    """Grayscale, ink made high whatever the polarity, scaled, stroke evened out, centred, classified by LeNet-5."""
    try:
        return await _service().predict_image(await image.read(), with_input=input)
    except ImageRejected as e:
        return error_response(e.status, str(e))


@app.post("/{name}/predict", include_in_schema=False)
def unknown_model_predict(name: str) -> Response:
    return _unknown_model(name)
