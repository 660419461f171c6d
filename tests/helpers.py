"""Things several test modules need: direct ONNX Runtime runs and held-out digits."""

from __future__ import annotations

import io
from functools import cache
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

REPO = Path(__file__).resolve().parents[1]
LENET_SEED = 2  # training/recipes.py pins it: the held-out split is the one the card measured


@cache
def session(name: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(REPO / "models" / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])


def run_onnx(name: str, x: np.ndarray) -> np.ndarray:
    out: np.ndarray = session(name).run(None, {"x": np.asarray(x, dtype=np.float32)})[0]
    return out


@cache
def held_out_digits() -> tuple[np.ndarray, np.ndarray]:
    """The held-out 8x8 digits (0..1) and labels of LeNet's card."""
    digits = load_digits()
    _, test = train_test_split(
        np.arange(len(digits.target)), test_size=0.2, stratify=digits.target, random_state=LENET_SEED
    )
    return digits.images[test] / 16.0, digits.target[test]


def upscale_32(image8: np.ndarray) -> np.ndarray:
    """The training preprocessing, without torch: bilinear 8x8 -> 32x32 (align_corners=False)."""
    from service.images import _UPSCALE

    return (_UPSCALE @ image8 @ _UPSCALE.T).astype(np.float32)


def render(image8: np.ndarray, size: tuple[int, int], *, dark_on_light: bool, fmt: str = "PNG") -> bytes:
    """A digit as a person would photograph it: big, smooth, any aspect, dark pen on white paper."""
    big = np.kron(image8, np.ones((40, 40)))
    pixels = (1 - big) if dark_on_light else big
    image = Image.fromarray((255 * pixels).astype(np.uint8)).resize(size, Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def metric(text: str, sample: str, **labels: str) -> float:
    """The sum of a /metrics sample's values over the series whose labels include `labels` (0 if none)."""
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == sample and labels.items() <= s.labels.items()
    )
