"""The data plane's typed errors, and the one envelope every error leaves the server in.

Each error carries its HTTP status; the gRPC front door maps the same classes to its status codes. A
front door never decides what is valid or what an error says: it translates these.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any, ClassVar

from starlette.responses import Response

MAX_ECHO = 80  # characters of a client's input an error sentence may quote


class ServingError(Exception):
    """A refusal with its sentence; `status` is the HTTP status a front door answers with."""

    status: ClassVar[int] = 500

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidInput(ServingError):
    """The request is malformed or its values break the model's rule."""

    status = 400


class ModelNotFound(ServingError):
    """No such model, or no such version of it."""

    status = 404


class PayloadTooLarge(ServingError):
    status = 413


class UnsupportedMedia(ServingError):
    status = 415


class Overloaded(ServingError):
    """More work than the server takes at once: retry later (HTTP 429, gRPC RESOURCE_EXHAUSTED)."""

    status = 429


class Unavailable(ServingError):
    """Shutting down, not ready, or a queued request waited past its deadline."""

    status = 503


class Unimplemented(ServingError):
    status = 501


class DeadlineExceeded(ServingError):
    """No answer within the request's time (TINYSERVE_REQUEST_TIMEOUT, or a gRPC client's deadline)."""

    status = 504


def clip(text: str, limit: int = MAX_ECHO) -> str:
    """A client's string as an error sentence may show it: cut to `limit` characters."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def echo(text: str, limit: int = MAX_ECHO) -> str:
    """A client's string quoted (repr) in an error sentence, cut to `limit` characters."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def envelope(error: str, detail: list[Any] | None = None) -> bytes:
    """`{"error": <sentence>, "detail": [...]}`: every refusal, every route; `detail` is [] when there is none."""
    return json.dumps({"error": error, "detail": detail or []}).encode()


def error_response(status: int, message: str, detail: list[Any] | None = None) -> Response:
    """The envelope as a response."""
    return Response(envelope(message, detail), status_code=status, media_type="application/json")


def refusal(error: ServingError, detail: list[Any] | None = None) -> Response:
    response = error_response(error.status, error.message, detail)
    response.headers.update(error.headers)
    return response


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
        return envelope(data["error"], detail if isinstance(detail, list) else None)
    if status == 404:
        return envelope(f"no such route: {method} {clip(path)}")
    if status == 405:
        return envelope(f"method {method} is not allowed on {clip(path)}")
    if isinstance(data, dict) and isinstance(data.get("detail"), str):  # FastAPI's HTTPException
        return envelope(data["detail"])
    try:
        return envelope(HTTPStatus(status).phrase)
    except ValueError:
        return envelope("error")
