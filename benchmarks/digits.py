"""Held-out LeNet digits as the tests and the benchmarks send them (the card's split, the training preprocessing)."""

from __future__ import annotations

import io
from functools import cache

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

LENET_SEED = 2  # training/recipes.py pins it: the held-out split is the one the card measured


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
    from preprocessing import UPSCALE

    return (UPSCALE @ image8 @ UPSCALE.T).astype(np.float32)


def render(image8: np.ndarray, size: tuple[int, int], *, dark_on_light: bool, fmt: str = "PNG") -> bytes:
    """A digit as a person would photograph it: big, smooth, any aspect, dark pen on white paper."""
    big = np.kron(image8, np.ones((40, 40)))
    pixels = (1 - big) if dark_on_light else big
    image = Image.fromarray((255 * pixels).astype(np.uint8)).resize(size, Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()
