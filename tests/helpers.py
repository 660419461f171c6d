"""Things several test modules need: direct ONNX Runtime runs, held-out digits (benchmarks/digits.py), metrics."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.digits import held_out_digits, render, upscale_32

REPO = Path(__file__).resolve().parents[1]
__all__ = ["REPO", "Reference", "held_out_digits", "metric", "render", "run_onnx", "session", "upscale_32"]


@cache
def session(name: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(REPO / "models" / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])


def run_onnx(name: str, x: np.ndarray) -> np.ndarray:
    out: np.ndarray = session(name).run(None, {"x": np.asarray(x, dtype=np.float32)})[0]
    return out


# Served answers against ONNX Runtime in process on the same provider and options: bit for bit on the
# CPU. On CUDA within this: the server merges requests into other batch sizes, for which cuDNN and cuBLAS
# may pick other algorithms (summation orders); with TF32 off such differences are ~1e-6 on LeNet's
# logits (measured CUDA against CPU on an H100: 2.9e-6), so 1e-5 absolute plus 1e-5 relative.
CUDA_TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}
# Each model's input features (after the batch axis) and its output's name, as the V2 metadata has them.
FEATURES = {"linear": (1,), "multilinear": (3,), "blobs": (2,), "lenet": (1, 32, 32)}
OUTPUTS = {"linear": "y", "multilinear": "y", "blobs": "probability", "lenet": "logits"}


def v2_inputs(name: str, batch: int) -> np.ndarray:
    """`batch` rows of valid input for a model, seeded by the batch size."""
    rng = np.random.default_rng(batch)
    if name == "lenet":
        return rng.random((batch, *FEATURES[name]), dtype=np.float32)
    scale = 100 if name == "multilinear" else 2
    return (rng.standard_normal((batch, *FEATURES[name])) * scale).astype(np.float32)


class Reference:
    """ONNX Runtime in process, on the provider, options, threads and spinning the server reports."""

    def __init__(self, catalog: dict[str, Any]) -> None:
        self.runtime = catalog["runtime"]
        self.provider = self.runtime["provider"]
        self.sessions: dict[str, ort.InferenceSession] = {}
        self.tolerance = {"rtol": 0.0, "atol": 0.0} if self.provider == "CPUExecutionProvider" else CUDA_TOLERANCE

    def session(self, name: str) -> ort.InferenceSession:
        if name not in self.sessions:
            if self.provider == "CUDAExecutionProvider":
                ort.preload_dlls()  # as the server does: the CUDA libraries of the nvidia-* wheels
            options = ort.SessionOptions()
            options.intra_op_num_threads = self.runtime["intra_op_threads"]
            options.add_session_config_entry(
                "session.intra_op.allow_spinning", "1" if self.runtime["spinning"] else "0"
            )
            provider = (self.provider, self.runtime["provider_options"])
            path = str(REPO / "models" / name / "1" / "model.onnx")
            self.sessions[name] = ort.InferenceSession(path, options, providers=[provider])
            assert self.sessions[name].get_providers()[0] == self.provider
        return self.sessions[name]

    def run(self, name: str, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = self.session(name).run(None, {"x": np.asarray(x, dtype=np.float32)})[0]
        return out

    def assert_matches(self, got: Any, name: str, x: np.ndarray) -> None:
        """`got` (an array or nested lists) is what ONNX Runtime gives for `x` on the server's provider."""
        expected = self.run(name, x)
        got = np.asarray(got, dtype=np.float32).reshape(expected.shape)
        np.testing.assert_allclose(got, expected, **self.tolerance)  # with 0 and 0: bit for bit


def metric(text: str, sample: str, **labels: str) -> float:
    """The sum of a /metrics sample's values over the series whose labels include `labels` (0 if none)."""
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == sample and labels.items() <= s.labels.items()
    )
