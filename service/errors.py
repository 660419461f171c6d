"""Errors with their HTTP status, and the one envelope every error leaves the server in."""

from __future__ import annotations

import json
import logging
import re
from http import HTTPStatus
from typing import Any

from bentoml.exceptions import BentoMLException
from pydantic import ValidationError
from starlette.responses import Response

BENTOML_VALIDATION = re.compile(r"^\d+ validation errors? for ")


class ApiError(BentoMLException):
    """A client's mistake, answered with `status` and `message` (never a 500)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message, error_code=HTTPStatus(status))


def envelope(error: str, detail: list[Any] | None = None) -> bytes:
    """`{"error": <sentence>, "detail": [...]}`: every refusal, every route; `detail` is [] when there is none."""
    return json.dumps({"error": error, "detail": detail or []}).encode()


def error_response(status: int, message: str, detail: list[Any] | None = None) -> Response:
    """The envelope as a response, for the FastAPI-mounted routes (service.v1, service.v2)."""
    return Response(envelope(message, detail), status_code=status, media_type="application/json")


def unknown_model(name: str, known: list[str]) -> Response:
    return error_response(404, f"unknown model {name!r}: expected one of {', '.join(known)}")


def normalise(status: int, body: bytes, method: str, path: str) -> bytes:
    """Any error body BentoML, Starlette or FastAPI produced -> {"error": ..., "detail": [...]}."""
    try:
        data: Any = json.loads(body) if body else None
    except ValueError:
        data = None
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict):
        data = data[0]  # BentoML answers a raised BentoMLException with a one-element list
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        detail = data.get("detail")
        if BENTOML_VALIDATION.match(data["error"]) and isinstance(detail, list) and detail:
            return envelope(_validation_message(detail), detail)  # "1 validation error for X" says little
        return envelope(data["error"], detail if isinstance(detail, list) else None)
    if status == 404:
        return envelope(f"no such route: {method} {path}")
    if status == 405:
        return envelope(f"method {method} is not allowed on {path}")
    if isinstance(data, dict) and isinstance(data.get("detail"), str):  # FastAPI's HTTPException
        return envelope(data["detail"])
    return envelope(HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "error")


def _validation_message(detail: list[dict[str, Any]]) -> str:
    first = detail[0]
    if first.get("type") == "invalid_request":  # already explained by schemas.Request
        return str(first["msg"])
    if first.get("type") == "json_invalid":
        return f"request body is not valid JSON: {first.get('msg', '').removeprefix('Invalid JSON: ')}"
    return "; ".join(f"{'.'.join(map(str, d.get('loc', ())))}: {d.get('msg')}" for d in detail[:3])


class ClientErrorFilter(logging.Filter):
    """BentoML logs every refused request at ERROR with a traceback; a client's mistake is not ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ValidationError):
            return False
        return not (isinstance(exc, BentoMLException) and exc.error_code < 500)


def install_log_filter() -> None:
    logging.getLogger("bentoml._internal.server.http_app").addFilter(ClientErrorFilter())
