"""The typed `/v1` contract of each kind of model, made from its card: request, value rule, answer.

A model's card says what it is (modelrepo.ModelKind); this module turns that into the Pydantic models
the OpenAPI document shows and the error sentences come from, and into the fast path every request
takes: the body parsed once (orjson), checked as whole arrays (shape, finite, the card's range), never
as a Python object per number. Only a body the fast path refuses goes through Pydantic, which then says
exactly what is wrong (or, for the rare body only Pydantic accepts, builds the same array).

Pydantic checks every entry of a list and keeps every error before it says a list is too long: a 2 MB
body of a million empty lists cost 2 s of a worker's CPU to refuse, 11 MB of a million unknown fields 6 s.
And a JSON parser builds a Python object for every list and string: 16 MB of "[]," is 5 million lists,
~3 s of orjson alone. So a body's lists, strings and objects are counted on its bytes (~9 us for a LeNet
image: a body over LARGE_BODY before it is parsed, a smaller one only once the fast path refused it), and a
body with more than a valid one can hold is refused unparsed; one with more than MAX_FIELDS fields is
refused by their count; and a refused body over EVERY_ERROR_BODY is checked by the same model with each
list stopped at its first error (Pydantic's FailFast: the first error of each list, not its first three).
The data plane parses bodies over LARGE_BODY on a thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import orjson
from pydantic import AfterValidator, BaseModel, FailFast, Field, ValidationError, WithJsonSchema, create_model
from pydantic_core import PydanticCustomError

import recognition
from modelrepo import MAX_IMAGES, MAX_ROWS, ModelCard, ModelKind, softmax
from service.errors import InvalidInput, echo
from service.schemas import Reply, Request

LARGE_BODY = 64 * 1024  # bytes: past it, a body is parsed off the event loop, its lists counted before parsing
EVERY_ERROR_BODY = 16 * 1024  # bytes: up to it, a refusal names up to three errors; past it, each list's first
MAX_FIELDS = 16  # a request object's fields: each typed route takes one
SLACK = 64  # lists, strings and objects past a valid body's, left for Pydantic to name what is wrong with them


@dataclass(frozen=True)
class Contract:
    """One model's typed route: what it takes, how a body becomes its input array, what it answers."""

    kind: ModelKind
    field: str  # the request's one field: "x" (rows) or "images"
    request: type[Request]
    response: type[Reply]
    row_shape: tuple[int, ...]  # one row of the model's input, without the batch axis
    value_range: tuple[float, float]
    sizes: tuple[int, ...] = ()  # pictures: the accepted sides (square)
    max_rows: int = MAX_ROWS
    logits: bool = False  # a classifier's output is logits: the answer's probabilities are their softmax
    recognition: ModelCard | None = None  # the card, when it has a rule for "not any of my classes"
    fail_fast: type[Request] | None = None  # `request` with each list checked up to its first error

    def parse(self, body: bytes) -> np.ndarray:
        """The model's input array from a request body, or InvalidInput with Pydantic's exact sentences."""
        large = len(body) > LARGE_BODY
        if large:  # counted before orjson builds its objects; a small body only once the fast path refused it
            self._count(body)
        fast = self._fast(body)
        if fast is not None:
            return fast
        if not large:
            self._count(body)
        request = self.fail_fast if self.fail_fast is not None and len(body) > EVERY_ERROR_BODY else self.request
        try:
            parsed = request.model_validate_json(body or b"{}")  # an empty body is an empty object
        except ValidationError as e:
            raise InvalidInput(_explain(e)) from None
        rows = getattr(parsed, self.field)
        if self.kind is ModelKind.IMAGE:  # pictures of mixed sizes: each padded to the model's
            return np.concatenate([self._to_input(np.asarray([image], dtype=np.float64)) for image in rows])
        return self._to_input(np.asarray(rows, dtype=np.float64))

    def _fast(self, body: bytes) -> np.ndarray | None:
        """The happy path on whole arrays; None sends the body through Pydantic for the sentence."""
        if b"true" in body or b"false" in body:  # numpy would take a boolean as 1.0; the contract refuses it
            return None
        try:
            data = orjson.loads(body)
            if type(data) is dict and len(data) > MAX_FIELDS:
                raise InvalidInput(
                    f"the request has {len(data)} fields; this endpoint takes only {self.field} "
                    f"(fields {', '.join(echo(str(k), 20) for k in list(data)[:3])}, ...)"
                )
            if type(data) is not dict or len(data) != 1 or self.field not in data:
                return None
            values = np.asarray(data[self.field])
        except (orjson.JSONDecodeError, ValueError, TypeError, OverflowError):
            return None
        if values.dtype.kind not in "iuf" or not self._fits(values.shape):  # strings, nulls, ragged rows
            return None
        values = values.astype(np.float64, copy=False)
        low, high = self.value_range
        if not low <= values.min() <= values.max() <= high:  # NaN fails every comparison; the range is finite
            return None
        return self._to_input(values)

    @property
    def max_lists(self) -> int:
        """JSON lists a valid body holds at most: the field's, and one per row (and per row of a picture)."""
        per_row = 1 + max(self.sizes) if self.kind is ModelKind.IMAGE else int(self.row_shape != (1,))
        return 1 + self.max_rows * per_row

    def _count(self, body: bytes) -> None:
        """Refuse, before parsing, a body with far more lists, strings or objects than a valid one (each would be
        a Python object to build); bytes inside strings count too, which only refuses sooner what is refused."""
        lists, strings, objects = body.count(b"["), body.count(b'"') // 2, body.count(b"{")
        lists_ok = f"{self.max_lists} list" + ("s" if self.max_lists > 1 else "")
        valid = f"a valid one has at most {lists_ok}, 1 object and 1 string (the field name {self.field})"
        for count, what, most in ((lists, "lists", self.max_lists), (strings, "strings", 1), (objects, "objects", 1)):
            if count > most + SLACK:
                raise InvalidInput(f"request body has {count} JSON {what}; {valid}")

    def _fits(self, shape: tuple[int, ...]) -> bool:
        if not shape or not 1 <= shape[0] <= self.max_rows:
            return False
        if self.kind is ModelKind.IMAGE:
            return len(shape) == 3 and shape[1] == shape[2] and shape[1] in self.sizes
        if self.row_shape == (1,):
            return len(shape) == 1
        return shape[1:] == self.row_shape

    def _to_input(self, values: np.ndarray) -> np.ndarray:
        if self.kind is not ModelKind.IMAGE:
            return values.astype(np.float32).reshape(-1, *self.row_shape)
        side = self.row_shape[-1]
        batch = np.zeros((len(values), *self.row_shape), dtype=np.float32)
        pad = (side - values.shape[1]) // 2
        batch[:, 0, pad : side - pad, pad : side - pad] = values
        return batch

    def answer(self, model: str, version: str, out: np.ndarray) -> dict[str, Any]:
        """The response body, as the response model describes it."""
        head: dict[str, Any] = {"model": model, "version": version}
        if self.kind is ModelKind.REGRESSION:
            return head | {"y": out.ravel().tolist()}
        if self.kind is ModelKind.BINARY:
            p = out.ravel()
            return head | {"labels": (p > 0.5).astype(int).tolist(), "probabilities": p.tolist()}
        probabilities = softmax(out) if self.logits else out
        answer = head | {"labels": probabilities.argmax(axis=1).tolist(), "probabilities": probabilities.tolist()}
        if self.recognition is not None:
            answer["recognised"] = recognition.recognised(out, self.recognition).tolist()
        return answer


def _explain(error: ValidationError) -> str:
    errors = error.errors(include_url=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        return f"request body is not valid JSON: {first['msg'].removeprefix('Invalid JSON: ')}"
    return "; ".join(str(e["msg"]) for e in errors[:3])  # Request already made each a sentence


def _square_image(sizes: tuple[int, ...]) -> Callable[[list[list[float]]], list[list[float]]]:
    accepted = " or ".join(f"{s}x{s}" for s in sizes)

    def check(image: list[list[float]]) -> list[list[float]]:
        height, widths = len(image), {len(row) for row in image}
        if height not in sizes or widths != {height}:
            got = f"{height}x{'/'.join(map(str, sorted(widths)))}"
            raise PydanticCustomError(
                "image_size",
                "expected a {accepted} image (rows x columns), got {got}",
                {"accepted": accepted, "got": got},
            )
        return image

    return check


def _square_schema(side: int, low: float, high: float) -> dict[str, Any]:
    pixel = {"type": "number", "minimum": low, "maximum": high}
    row = {"type": "array", "items": pixel, "minItems": side, "maxItems": side}
    return {"type": "array", "items": row, "minItems": side, "maxItems": side, "title": f"{side}x{side} image"}


def _title(name: str) -> str:
    return "".join(part.capitalize() for part in name.replace("-", "_").split("_"))


def contract(card: ModelCard) -> Contract:
    """The typed route of the model the card describes (ModelRepositoryError if the card fits no kind)."""
    kind = card.kind
    row_shape = tuple(card.inputs[0].shape[1:])
    sizes = (row_shape[-1], card.padded_side) if card.padded_side else (row_shape[-1],)
    labels = ", ".join(card.labels or ())
    return Contract(
        kind=kind,
        field="images" if kind is ModelKind.IMAGE else "x",
        request=_request(card, sizes),
        response=_response(kind, _title(card.name), labels, recognises="recognition" in card.extra),
        row_shape=row_shape,
        value_range=card.inputs[0].value_range,
        sizes=sizes if kind is ModelKind.IMAGE else (),
        max_rows=kind.max_rows,
        logits=card.logits,
        recognition=recognition.checked(card),
        fail_fast=_request(card, sizes, fail_fast=True),
    )


def _request(card: ModelCard, sizes: tuple[int, ...], *, fail_fast: bool = False) -> type[Request]:
    """The typed request of the card's model; with `fail_fast`, each list checked up to its first error only."""
    spec = card.inputs[0]
    low, high = spec.value_range
    number = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=low, le=high)]
    row_shape = tuple(spec.shape[1:])
    title = _title(card.name)
    stop = (FailFast(),) if fail_fast else ()

    def listed(item: Any, *metadata: Any) -> Any:
        return Annotated[(list[item], *stop, *metadata)] if metadata or stop else list[item]

    if card.kind is ModelKind.IMAGE:
        image = listed(
            listed(number, Field(min_length=min(sizes), max_length=max(sizes))),
            Field(min_length=min(sizes), max_length=max(sizes)),
            AfterValidator(_square_image(sizes)),
            WithJsonSchema({"anyOf": [_square_schema(s, low, high) for s in sizes]}),
        )
        shown = " or ".join(f"{s}x{s}" for s in sizes)
        example = card.extra.get("examples") or [_stroke(row_shape[-1], low, high)]
        field: tuple[Any, Any] = (
            listed(image),
            Field(
                min_length=1,
                max_length=MAX_IMAGES,
                description=f"1 to {MAX_IMAGES} grayscale images, each {shown} rows of pixels in [{low:g}, {high:g}]; "
                f"{card.preprocessing.get('x', '')}",
                examples=[example],
            ),
        )
        request: type[Request] = create_model(f"{title}Request", __base__=Request, images=field)
    else:
        features = row_shape[0]
        row: Any = number if features == 1 else listed(number, Field(min_length=features, max_length=features))
        what = "one value per row" if features == 1 else f"rows of {features} features"
        field = (
            listed(row),
            Field(
                min_length=1,
                max_length=MAX_ROWS,
                description=f"{what}, 1 to {MAX_ROWS} rows; {card.preprocessing.get('x', '')}",
                examples=[_example(card, features)],
            ),
        )
        request = create_model(f"{title}Request", __base__=Request, x=field)  # type: ignore[arg-type,misc]
    request.__doc__ = card.description
    return request


def _example(card: ModelCard, features: int) -> list[Any]:
    """The card's own example rows when it has them, else a row of zeros."""
    rows = card.extra.get("examples")
    if isinstance(rows, list) and rows:
        return rows
    return [0.0] if features == 1 else [[0.0] * features]


def _stroke(side: int, low: float, high: float) -> list[list[float]]:
    """A picture of one upright stroke (a "1"), for the documentation's example request."""
    image = np.full((side, side), low)
    image[side // 5 : side - side // 5, side // 2 - 1 : side // 2 + 2] = high
    rows: list[list[float]] = image.tolist()
    return rows


def _response(kind: ModelKind, title: str, labels: str, *, recognises: bool = False) -> type[Reply]:
    if kind is ModelKind.REGRESSION:
        fields: dict[str, Any] = {
            "y": (list[float], Field(description="one prediction per input row, in input order")),
        }
    elif kind is ModelKind.BINARY:
        fields = {
            "labels": (list[int], Field(description="predicted label (0 or 1) per row")),
            "probabilities": (list[float], Field(description="P(label 1) per row")),
        }
    else:
        fields = {
            "labels": (list[int], Field(description=f"the predicted class's index per row (classes: {labels})")),
            "probabilities": (
                list[list[float]],
                Field(description="softmax over the classes, one list per row, in the card's label order"),
            ),
        }
    if recognises:
        fields["recognised"] = (
            list[bool],
            Field(
                description="per row: false when the input does not look like any of the classes (a letter, a "
                "scribble); the label is then only the nearest class"
            ),
        )
    model: type[Reply] = create_model(f"{title}Response", __base__=Reply, **fields)
    return model


def schema_of(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema(ref_template="#/components/schemas/{model}")
