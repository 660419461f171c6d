"""The /v1 routes that are not JSON-in/JSON-out: the model catalog and the image upload.

A FastAPI app mounted into the BentoML service: FastAPI gives GET routes with path parameters and a
strict multipart parser (BentoML's would json-decode binary form fields into a 500, and fetch a URL
given in place of a file).
"""

from __future__ import annotations

from typing import Annotated, Any

import bentoml
from fastapi import FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

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


@app.post(
    "/lenet/predict-image",
    response_model=LenetImageResponse,
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
) -> Any:
    """Grayscale, ink made high whatever the polarity, fitted into the frame, classified by LeNet-5."""
    try:
        return await _service().predict_image(await image.read())
    except ImageRejected as e:
        return error_response(e.status, str(e))


@app.post("/{name}/predict", include_in_schema=False)
def unknown_model_predict(name: str) -> Response:
    return _unknown_model(name)
