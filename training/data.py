"""Digit images for LeNet-5: scikit-learn's bundled digits (default) or real MNIST IDX files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

Split = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # x_train, y_train, x_test, y_test


def digits_32x32() -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn's 1797 handwritten 8x8 digits (0..16), scaled to [0, 1] and upscaled to (N, 1, 32, 32)."""
    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)  # (N, 1, 8, 8)
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    return x.clamp(0, 1), torch.tensor(digits.target, dtype=torch.int64)


def stratified_split(x: torch.Tensor, y: torch.Tensor, seed: int, test_size: float = 0.2) -> Split:
    idx_train, idx_test = train_test_split(
        np.arange(len(y)), test_size=test_size, stratify=y.numpy(), random_state=seed
    )
    return x[idx_train], y[idx_train], x[idx_test], y[idx_test]


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (optionally gzipped): big-endian header, then uint8 data."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} ({int(np.prod(dims))} bytes), file has {data.size}")
    return data.reshape(dims)


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem, f"{stem}.gz", stem.replace("-idx", ".idx")):
        if (directory / name).is_file():
            return directory / name
    return None


def _mnist_part(directory: Path, prefix: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    images, labels = (
        _find(directory, f"{prefix}-images-idx3-ubyte"),
        _find(directory, f"{prefix}-labels-idx1-ubyte"),
    )
    if images is None or labels is None:
        return None
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or x.shape[1:] != (28, 28) or y.shape != (len(x),):
        raise ValueError(f"{directory}: expected N x 28 x 28 images and N labels, got {x.shape} and {y.shape}")
    # 28x28 padded to 32x32, as LeNet-5 was originally trained on MNIST
    padded = np.pad(x.astype(np.float32) / 255.0, ((0, 0), (2, 2), (2, 2)))
    return torch.from_numpy(padded).unsqueeze(1), torch.from_numpy(y.astype(np.int64))


def mnist(directory: Path, seed: int) -> Split:
    """MNIST IDX files in `directory`: train-* (required) and t10k-* (the test set, or a 20% split)."""
    train = _mnist_part(directory, "train")
    if train is None:
        raise FileNotFoundError(f"{directory}: no train-images-idx3-ubyte / train-labels-idx1-ubyte (.gz)")
    test = _mnist_part(directory, "t10k")
    if test is None:
        return stratified_split(*train, seed)
    return train[0], train[1], test[0], test[1]
