"""The published OpenAPI document, made to describe what the server really answers, and its docs page.

Applied to `/docs.json` as it is served, keyed on paths (wherever a route is defined: BentoML API or
FastAPI route): every error leaves in one envelope, `{"error": str, "detail": [...]}`, so that envelope
is documented on every route in place of the frameworks' own shapes (a 422 the server never sends); the
guard adds 401, 413, 415, 429 and 503. Each route gets the README's example where Swagger UI's "Try it
out" reads it (the media type's `example`), the upload a file picker (a binary string), a tag per area,
and the bearer scheme, so that Authorize works on a server with a token. schemathesis holds the server
to this document.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from modelrepo import ModelKind
from preprocessing import UPSCALE
from service import __version__
from service.kinds import Contract, schema_of

INFO = {
    "title": "tinyserve",
    "version": __version__,
    "description": (
        "Four small PyTorch models (linear, multilinear, blobs, lenet) exported to ONNX and served with ONNX "
        "Runtime: typed JSON routes under /v1, the Open Inference Protocol (KServe V2, with Triton's binary "
        'tensors) under /v2. Every refusal is one envelope: `{"error": "<sentence>", "detail": [...]}`. '
        "When the server has an API token (TINYSERVE_API_TOKEN), press Authorize and give it."
    ),
}

# The Swagger UI page at `/`: BentoML's bundled Swagger UI files, served by this server, and nothing from
# elsewhere (BentoML's own page loads Google Tag Manager, and Swagger UI's validator badge calls out).
# The style and script below fix what axe-core finds in Swagger UI's own page: text under 4.5:1 contrast,
# selects and inputs without a name, no landmark.
DOCS_PAGE = b"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>tinyserve API</title>
  <link rel="stylesheet" href="./static_content/swagger-ui.css">
  <link rel="icon" type="image/png" href="./static_content/favicon-light-32x32.png">
  <style>
    body { margin: 0; }
    .swagger-ui, .swagger-ui .info .title, .swagger-ui .opblock-tag, .swagger-ui .opblock .opblock-summary-path,
    .swagger-ui .opblock .opblock-summary-description, .swagger-ui .response-col_status,
    .swagger-ui .parameter__name, .swagger-ui table thead tr th, .swagger-ui .tab li,
    .swagger-ui .opblock-description-wrapper p, .swagger-ui .model-title, .swagger-ui .model { color: #1b2330; }
    .swagger-ui .opblock-tag small, .swagger-ui .parameter__in, .swagger-ui .parameter__type,
    .swagger-ui .prop-format, .swagger-ui .model .property.primitive, .swagger-ui .response-col_links,
    .swagger-ui .renderedMarkdown p, .swagger-ui .info .base-url, .swagger-ui .opblock-section-header label,
    .swagger-ui .parameter__deprecated, .swagger-ui .markdown p, .swagger-ui .markdown code,
    .swagger-ui .model-toggle:after, .swagger-ui .prop-type, .swagger-ui .model span, .swagger-ui label,
    .swagger-ui .response-control-media-type__accept-message, .swagger-ui .opblock-summary-operation-id
    { color: #3d4959 !important; }
    .swagger-ui .prop-type { color: #5b3a8c !important; }
    .swagger-ui .info a, .swagger-ui a.nostyle, .swagger-ui .info .link { color: #1d4fa8; }
    .swagger-ui .response-col_status .response-undocumented, .swagger-ui .parameter__name.required:after,
    .swagger-ui .parameter__name.required span { color: #a8281b !important; }
    .swagger-ui .opblock .opblock-summary-method { color: #fff; text-shadow: none; }
    .swagger-ui .opblock.opblock-get .opblock-summary-method { background: #1d5fa8; }
    .swagger-ui .opblock.opblock-post .opblock-summary-method { background: #17693f; }
    .swagger-ui .btn.authorize { color: #17693f; border-color: #17693f; }
    .swagger-ui .btn.authorize svg { fill: #17693f; }
    .swagger-ui .btn.execute { background: #1d4fa8; border-color: #1d4fa8; }
    .swagger-ui .btn.cancel { color: #a8281b; border-color: #a8281b; }
    .swagger-ui .btn.try-out__btn { color: #1b2330; }
    .swagger-ui .opblock-body pre.microlight, .swagger-ui .highlight-code pre { background: #0b0f14 !important; }
    .swagger-ui .download-contents { background: #4f5b6c; }
    .swagger-ui .scheme-container { box-shadow: none; border-bottom: 1px solid #dde3ec; }
    .swagger-ui .loading-container .loading:after { color: #1b2330; }
    .swagger-ui .info .title small { background: #4f5b6c; }
    .swagger-ui .info .title small.version-stamp { background: #17693f; }
    .swagger-ui :focus-visible { outline: 3px solid #b85c00; outline-offset: 2px; }
    @media (max-width: 600px) {
      .swagger-ui .wrapper { padding: 0 8px; }
      .swagger-ui .opblock .opblock-summary, .swagger-ui .opblock .opblock-section-header { flex-wrap: wrap; }
      .swagger-ui .try-out { margin-left: auto; }
      .swagger-ui .opblock .opblock-summary-path { max-width: 100%; word-break: break-all; }
      .swagger-ui .info .title { font-size: 28px; }
      .swagger-ui pre, .swagger-ui .microlight { white-space: pre-wrap; word-break: break-all; }
      .swagger-ui table { table-layout: fixed; width: 100%; }
      .swagger-ui td, .swagger-ui th { word-break: break-word; }
      .swagger-ui .response-col_links { display: none; } /* "No links": an empty column a phone has no room for */
      .swagger-ui .parameters-col_description input, .swagger-ui textarea { max-width: 100%; }
    }
  </style>
</head>
<body>
  <main id="swagger-ui" aria-label="tinyserve API documentation"></main>
  <script src="./static_content/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({url: "./docs.json", dom_id: "#swagger-ui", deepLinking: false, validatorUrl: null,
      defaultModelsExpandDepth: 0, tryItOutEnabled: false, persistAuthorization: false});
    // Swagger UI renders some controls without a name: give each the words a screen reader needs.
    function nameControls() {
      for (const el of document.querySelectorAll("#swagger-ui pre:not([tabindex])")) {
        el.tabIndex = 0; // a long body scrolls: the keyboard must reach it too
      }
      for (const el of document.querySelectorAll("#swagger-ui .copy-to-clipboard button:not([aria-label])")) {
        el.setAttribute("aria-label", "Copy to the clipboard");
      }
      for (const el of document.querySelectorAll("#swagger-ui select, #swagger-ui input, #swagger-ui textarea")) {
        const labelled = [...(el.labels || [])].some((l) => l.textContent.replace(el.textContent, "").trim());
        if (labelled || el.getAttribute("aria-label") || el.getAttribute("aria-labelledby")) continue;
        const row = el.closest("tr[data-param-name]");
        const what = row ? row.getAttribute("data-param-name")
          : el.closest(".content-type-wrapper, .body-param-content-type, .response-control-media-type") ? "media type"
          : el.closest(".servers") ? "server" : el.type === "file" ? "file" : el.tagName === "TEXTAREA" ? "request body"
          : el.placeholder || el.name || el.type || "value";
        el.setAttribute("aria-label", what);
      }
    }
    nameControls();
    new MutationObserver(nameControls).observe(document.getElementById("swagger-ui"), {childList: true, subtree: true});
  </script>
</body>
</html>
"""

ENVELOPE: dict[str, Any] = {
    "type": "object",
    "title": "Error",
    "description": "every error: a sentence naming the field, what was expected and what came",
    "required": ["error", "detail"],
    "properties": {
        "error": {"type": "string"},
        "detail": {"type": "array", "items": {"type": "object"}},
    },
}
ERROR_REF = {"$ref": "#/components/schemas/Error"}
BAD_INPUT = {
    "error": "x[1]: input should be a valid number, got string '2'",
    "detail": [{"loc": ["x", 1], "msg": "Input should be a valid number", "type": "float_parsing"}],
}
GUARD_ERRORS = {
    "413": "request body over TINYSERVE_MAX_BODY_BYTES",
    "415": "unsupported content type or encoding",
    "429": "too many requests in flight (TINYSERVE_MAX_CONCURRENCY); see Retry-After",
    "503": "shutting down, or a queued request waited past TINYSERVE_MAX_LATENCY_MS",
}
UNAUTHORISED = "missing or wrong API token (when TINYSERVE_API_TOKEN is set)"
# The frameworks' own error shapes: none of them ever leaves this server
FRAMEWORK_ERROR_SCHEMAS = (
    "InvalidArgument",
    "NotFound",
    "InternalServerError",
    "HTTPValidationError",
    "ValidationError",
)
# What needs no token (the guard's open paths): the probes, the metrics, the docs themselves
OPEN = ("/livez", "/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready", "/", "/docs.json")
SECURITY_SCHEMES = {
    "token": {
        "type": "http",
        "scheme": "bearer",
        "description": "TINYSERVE_API_TOKEN, when the server has one (without one, every route is open)",
    }
}

TAGS = [
    {"name": "v1: predict", "description": "typed JSON routes, one per model, and the digit upload"},
    {"name": "v1: models", "description": "model cards, versions, provider, readiness and training pictures"},
    {"name": "v2: Open Inference Protocol", "description": "KServe V2 (JSON or Triton's binary tensors)"},
    {"name": "health", "description": "liveness, readiness and Prometheus metrics: open without a token"},
]


def _tag(path: str) -> str:
    if path.startswith("/v2/health"):
        return "health"
    if path.startswith("/v2"):
        return "v2: Open Inference Protocol"
    if path.startswith("/v1/models"):
        return "v1: models"
    if path.startswith("/v1/"):
        return "v1: predict"
    return "health"


def _seven() -> list[list[float]]:
    """A real 7 of scikit-learn's digits (its eighth, 8x8 counts of 0-16), upscaled to LeNet's 32x32 as in
    training and rounded to 2 decimals: an example LeNet reads as 7."""
    counts = [
        [0, 0, 7, 8, 13, 16, 15, 1],
        [0, 0, 7, 7, 4, 11, 12, 0],
        [0, 0, 0, 0, 8, 13, 1, 0],
        [0, 4, 8, 8, 15, 15, 6, 0],
        [0, 2, 11, 15, 15, 4, 0, 0],
        [0, 0, 0, 16, 5, 0, 0, 0],
        [0, 0, 9, 15, 1, 0, 0, 0],
        [0, 0, 13, 5, 0, 0, 0, 0],
    ]
    image = UPSCALE @ (np.array(counts) / 16.0) @ UPSCALE.T
    return [[round(float(v), 2) for v in row] for row in np.clip(image, 0, 1)]


def _examples() -> dict[str, dict[str, Any]]:
    """Request bodies by path: the README's own examples."""
    return {
        "/v1/linear/predict": {"x": [1.0, 2.0]},
        "/v1/multilinear/predict": {"x": [[73, 80, 75]]},
        "/v1/blobs/predict": {"x": [[1, 1], [-1, 1]]},
        "/v1/lenet/predict": {"images": [_seven()]},
        "/v2/models/{name}/infer": {"inputs": [{"name": "x", "shape": [2, 1], "datatype": "FP32", "data": [1.0, 2.0]}]},
        "/v2/models/{name}/versions/{version}/infer": {
            "inputs": [{"name": "x", "shape": [2, 1], "datatype": "FP32", "data": [1.0, 2.0]}]
        },
    }


PARAMETER_EXAMPLES = {"name": "linear", "version": "1", "picture": "linear.png"}
PARAMETER_EXAMPLES_BY_PATH = {"/v1/models/{name}/pictures/{picture}": {"name": "linear", "picture": "linear.png"}}


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        resolved: dict[str, Any] = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        return resolved
    return schema


def _file_picker(spec: dict[str, Any], operation: dict[str, Any]) -> None:
    """A multipart upload's file fields as binary strings: Swagger UI then shows a file picker."""
    media = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data")
    if media is None:
        return
    for field in _resolve(spec, media["schema"]).get("properties", {}).values():
        if field.get("format") in ("binary", "byte") or "contentMediaType" in field or field.get("type") == "string":
            field.pop("contentMediaType", None)
            field.update({"type": "string", "format": "binary"})


def _responses(operation: dict[str, Any], path: str, method: str) -> None:
    """The envelope on every error status, the 400 of bad input in place of a 422, the guard's statuses."""
    responses = operation.setdefault("responses", {})
    reference = {"application/json": {"schema": ERROR_REF}}
    if "422" in responses:
        del responses["422"]
        responses.setdefault("400", {"description": "the request is not what the route expects"})
    if method == "post":
        responses.setdefault("400", {"description": "the request is not what the route expects"})
    for status, response in responses.items():
        if status.startswith(("4", "5")):
            response["content"] = copy.deepcopy(reference)
            if response.get("description") in (None, "", "Bad Request", "Validation Error"):
                response["description"] = "the request is not what the route expects"
    if "400" in responses and method == "post":
        responses["400"]["content"]["application/json"]["example"] = BAD_INPUT
    if "{name}" in path:
        responses.setdefault("404", {"description": "unknown model or version", "content": copy.deepcopy(reference)})
    if path not in OPEN:
        responses.setdefault("401", {"description": UNAUTHORISED, "content": copy.deepcopy(reference)})
    if method == "post":
        for status, description in GUARD_ERRORS.items():
            responses.setdefault(status, {"description": description, "content": copy.deepcopy(reference)})


def describe(spec: dict[str, Any]) -> dict[str, Any]:
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = ENVELOPE
    spec["components"]["securitySchemes"] = SECURITY_SCHEMES
    spec["tags"] = TAGS
    examples = _examples()
    for path, item in spec.get("paths", {}).items():
        for method, operation in item.items():
            if method not in ("get", "post", "put", "delete", "patch", "head"):
                continue
            operation["tags"] = [_tag(path)]
            # the token, or nothing: a server without TINYSERVE_API_TOKEN takes every request without one
            operation["security"] = [] if path in OPEN else [{"token": []}, {}]
            _responses(operation, path, method)
            _file_picker(spec, operation)
            for parameter in operation.get("parameters", []):
                value = PARAMETER_EXAMPLES_BY_PATH.get(path, PARAMETER_EXAMPLES).get(parameter.get("name"))
                if parameter.get("in") == "path" and value is not None:
                    parameter["example"] = value
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body is not None and path in examples:
                body["example"] = examples[path]  # the media type's example: what "Try it out" fills in
    for name in FRAMEWORK_ERROR_SCHEMAS:
        schemas.pop(name, None)
    return spec


def add_models(spec: dict[str, Any], contracts: Mapping[str, Contract]) -> dict[str, Any]:
    """Each served model's typed route, with its request and response models (made from its card)."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    paths = spec.setdefault("paths", {})
    for name, contract in sorted(contracts.items()):
        shown: dict[type[Any], dict[str, Any]] = {}
        for model in (contract.request, contract.response):
            schema = schema_of(model)
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = shown[model] = schema
        generic = paths.get("/v1/{name}/predict-image", {}).get("post")
        if contract.kind is ModelKind.IMAGE and generic is not None:
            upload = json.loads(json.dumps(generic))
            upload["parameters"] = [p for p in upload.get("parameters", []) if p.get("name") != "name"]
            upload["operationId"] = f"predict_image_{name}"
            paths[f"/v1/{name}/predict-image"] = {"post": upload}
        paths[f"/v1/{name}/predict"] = {
            "post": {
                "summary": f"{name}: {contract.request.__doc__ or ''}",
                "description": f"{contract.request.__doc__ or name} Typed JSON in, typed JSON out; every refusal "
                "names the field, what was expected and what came.",
                "operationId": f"predict_{name}",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": f"#/components/schemas/{contract.request.__name__}"}}
                    },
                },
                "responses": {
                    "200": {
                        "description": "the model's answer",
                        "content": {"application/json": {"schema": shown[contract.response]}},
                    },
                    "400": {"description": "a value, shape or field that breaks the contract"},
                    "404": {"description": "unknown model"},
                },
            }
        }
    return spec


def rewrite(body: bytes, contracts: Mapping[str, Contract] | None = None) -> bytes:
    spec = describe(add_models(json.loads(body), contracts or {}))
    spec["info"] = INFO  # BentoML's says version "None" and names its own team
    return json.dumps(spec).encode()
