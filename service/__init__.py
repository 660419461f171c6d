"""The tinyserve prediction service (BentoML + ONNX Runtime)."""
