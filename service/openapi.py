"""The published OpenAPI document, made to describe what the server really answers, and its docs page.

BentoML documents its own error shapes (`detail` as a string); every error here leaves in one
envelope, `{"error": str, "detail": [...]}`, and the guard adds 401, 413, 415, 429 and 503. Applied to
`/docs.json` as it is served, so that schemathesis can hold the server to it.
"""

from __future__ import annotations

import json
from typing import Any

from service import __version__

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


def rewrite(body: bytes) -> bytes:
    spec = describe_errors(json.loads(body))
    spec["info"] = INFO  # BentoML's says version "None" and names its own team
    return json.dumps(spec).encode()
