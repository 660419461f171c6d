"""The published OpenAPI document, made to describe what the server really answers, and its docs page.

BentoML documents its own error shapes (`detail` as a string); every error here leaves in one
envelope, `{"error": str, "detail": [...]}`, and the guard adds 401, 413, 415, 429 and 503. Applied to
`/docs.json` as it is served, so that schemathesis can hold the server to it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from modelrepo import ModelKind
from service import __version__
from service.kinds import Contract, schema_of

INFO = {
    "title": "tinyserve",
    "version": __version__,
    "description": (
        "Four small PyTorch models (linear, multilinear, blobs, lenet) exported to ONNX and served with ONNX "
        "Runtime: typed JSON routes under /v1, the Open Inference Protocol (KServe V2, with Triton's binary "
        'tensors) under /v2. Every refusal is one envelope: `{"error": "<sentence>", "detail": [...]}`.'
    ),
}

# The Swagger UI page at `/`: BentoML's bundled Swagger UI files, served by this server, and nothing from
# elsewhere (BentoML's own page loads Google Tag Manager, and Swagger UI's validator badge calls out).
DOCS_PAGE = b"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>tinyserve API</title>
  <link rel="stylesheet" href="./static_content/swagger-ui.css">
  <link rel="icon" type="image/png" href="./static_content/favicon-light-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="./static_content/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({url: "./docs.json", dom_id: "#swagger-ui", deepLinking: true, validatorUrl: null});
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
GUARD_ERRORS = {
    "401": "missing or wrong API token (when TINYSERVE_API_TOKEN is set)",
    "413": "request body over TINYSERVE_MAX_BODY_BYTES",
    "415": "unsupported content type or encoding",
    "429": "too many requests in flight (TINYSERVE_MAX_CONCURRENCY); see Retry-After",
    "503": "shutting down, or a queued request waited past TINYSERVE_MAX_LATENCY_MS",
}
BENTOML_ERROR_SCHEMAS = ("InvalidArgument", "NotFound", "InternalServerError")


def describe_errors(spec: dict[str, Any]) -> dict[str, Any]:
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = ENVELOPE
    for name in BENTOML_ERROR_SCHEMAS:
        if name in schemas:
            schemas[name] = ENVELOPE | {"title": name}
    reference = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, item in spec.get("paths", {}).items():
        post = item.get("post")
        if post is None or not path.startswith(("/v1/", "/v2/models/")):
            continue
        responses = post.setdefault("responses", {})
        for status, description in GUARD_ERRORS.items():
            responses.setdefault(status, {"description": description, "content": reference})
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
    spec = describe_errors(add_models(json.loads(body), contracts or {}))
    spec["info"] = INFO  # BentoML's says version "None" and names its own team
    return json.dumps(spec).encode()
