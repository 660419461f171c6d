"""The tinyserve prediction service (BentoML + ONNX Runtime)."""

__version__ = "0.2.0"  # the project's one version: pyproject.toml reads it, /v2 and /docs.json report it
