"""Digits as LeNet's training digits were made: shared by training (which draws its extra digits with it) and the
service (every upload and drawing), so that both are the same code. numpy and Pillow only: no torch, no service.

scikit-learn's digits are NIST scans normalised into 32x32 bitmaps and counted in 4x4 blocks to 8x8;
training scaled them to [0, 1] and upscaled them bilinearly to 32x32. Measured on all 1797 of them, a
digit always fills the height of its grid, sits centred by its mass, and carries about the same amount
of ink whatever it is (median 19.6 of 64 cells, 5-95%: 16.3-23.0): a "1" is drawn as thick as an "8" is
long. A drawing comes out of a pen of any width and a font of any weight, so an upload goes the same
way: grayscale, ink made high whatever the polarity, cropped to the ink, scaled to the grid's height,
its stroke thickened or thinned to the training digits' ink when it carries far more or far less than
they do (a scan or photo of a written digit usually carries as much, and is kept as it is), centred by
mass, counted into 8x8 cells and upscaled to 32x32 exactly as in training. The page's drawing pad uses
this route too. Gray levels are kept throughout: a scanned digit's soft edges are part of what LeNet reads.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

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


UPSCALE = _bilinear_matrix(8, 32)


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


WORK = 32  # pixels of the digit's height while its stroke is evened out: NIST's 32x32 bitmap
MARGIN = 10  # room around it for the stroke to grow
TARGET_INK = 19.6  # cells of ink in an 8x8 training digit (the median; see the module's docstring)
# A stroke whose ink falls in this band is left as drawn. Measured on the held-out scans re-photographed at
# other sizes and aspects, and on drawn and typed digits: evening out every stroke to the median read drawn
# digits best but cost the scans 6 points (93% against 99%); this band keeps both (99%, 99%, 98% typed).
INK_BAND = (12.0, 28.0)
THIN, GROW = 4, 8  # how far a stroke may be thinned or grown, in pixels of WORK on each side
# What the 8x8 cells frame: every pixel of at least this much ink, so that no stroke leaves LeNet's input.
# Framed at 0.5, a thinned stroke's gray rim fell outside (up to 46% of a bold italic 6's ink was lost);
# at 0.1 at most 2% is (its faintest rim), and the drawn, typed and held-out figures are unchanged.
# (The stroke is still chosen by its ink within 0.5: within 0.1, a stroke thinned to a faint remnant
# would pass for a digit.)
FRAME = 0.1
# Training's redrawn digits are framed at 0.5 (training/lenet.py): LeNet trained on them framed at 0.1 read
# fewer drawn and typed digits (94.3% and 98.3%, against 95.5% and 99.6%) and refused fewer letters.
TRAINED_FRAME = 0.5
# A stroke is evened out only to a thickness that still spans the digit: at least this share of its extent as
# drawn. Thinned further, a stroke breaks into a remnant whose few pixels, scaled back up to the grid's height,
# carry about the training digits' ink and were chosen: a thin drawn 7 came out as four gray blocks, a typed
# DejaVu Sans Bold Oblique 6 as a blank. Measured on LeNet's card sets with the same weights: drawn 169 of 176
# read right (168 before), typed digits taken 99.6% (98.75%), letters refused 78.6% (76.9%).
WHOLE = 0.9


def normalise(ink: np.ndarray, frame: float = FRAME) -> np.ndarray:
    """Ink-high grayscale (H, W) of one digit -> LeNet's (32, 32), as its training digits were made."""
    options = _thicknesses(_fitted_stroke(ink))
    stroke = options[len(options) - 1 - GROW]  # as drawn
    low, high = INK_BAND
    if not low <= _ink(stroke) <= high:
        whole = [s for s in options if _extent(s) >= WHOLE * _extent(stroke)]
        stroke = min(whole, key=lambda s: abs(_ink(s) - TARGET_INK))
    upscaled: np.ndarray = (UPSCALE @ _cells(stroke, frame) @ UPSCALE.T).astype(np.float32)
    return upscaled


def _extent(stroke: np.ndarray) -> int:
    """The longer side, in pixels, of what is ink in `stroke` (at least 0.5)."""
    mask = stroke >= 0.5
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return int(max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1))


def _ink(stroke: np.ndarray) -> float:
    """About the ink `_cells(stroke)` will carry, in cells, without making them: ink / pixels per cell."""
    scale = WORK / float(_extent(stroke))
    return float(stroke.sum()) * scale**2 / (WORK // 8) ** 2


def _crop(image: np.ndarray, threshold: float) -> np.ndarray:
    rows, cols = np.flatnonzero((image >= threshold).any(1)), np.flatnonzero((image >= threshold).any(0))
    return image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area-weighted resize of a float image (PIL's box filter: no aliasing when shrinking)."""
    resized = Image.fromarray(image.astype(np.float32), mode="F").resize((width, height), Image.Resampling.BOX)
    return np.asarray(resized, dtype=np.float32)


def _fit(image: np.ndarray, side: int) -> np.ndarray:
    """Scale the cropped digit so that its longer side (for a digit, its height) is `side`."""
    h, w = image.shape
    scale = side / max(h, w)
    return _resize(image, max(1, round(h * scale)), max(1, round(w * scale)))


def _fitted_stroke(ink: np.ndarray) -> np.ndarray:
    """The digit in gray, WORK pixels high, with room around it to grow."""
    digit = np.clip(_fit(_crop(ink, INK_THRESHOLD), WORK), 0.0, 1.0)
    if digit.max() < 0.5:  # a hairline that faded when shrunk: keep what the threshold saw
        digit = digit / max(float(digit.max()), 1e-6)
    canvas = np.zeros((WORK + 2 * MARGIN, WORK + 2 * MARGIN), dtype=np.float32)
    top, left = MARGIN + (WORK - digit.shape[0]) // 2, MARGIN + (WORK - digit.shape[1]) // 2
    canvas[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return canvas


def _grow(image: np.ndarray, step: int) -> np.ndarray:
    """One pixel more ink on every side (a gray dilation); the cross and the square alternate, so a pen
    stays round."""
    grown = image.copy()
    shifts = [(1, 0), (-1, 0), (0, 1), (0, -1)] + ([(1, 1), (1, -1), (-1, 1), (-1, -1)] if step % 2 else [])
    h, w = image.shape
    for dy, dx in shifts:
        target = grown[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)]
        np.maximum(target, image[max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)], out=target)
    return grown


def _thicknesses(stroke: np.ndarray) -> list[np.ndarray]:
    """The stroke thinned by up to THIN pixels a side (while any ink is left) and grown by up to GROW."""
    thinner, gap = [], 1.0 - stroke
    for step in range(THIN):
        gap = _grow(gap, step)
        if (gap > 0.5).all():
            break
        thinner.append(1.0 - gap)
    thicker, grown = [stroke], stroke
    for step in range(GROW):
        grown = _grow(grown, step)
        thicker.append(grown)
    return thinner[::-1] + thicker


def _cells(stroke: np.ndarray, frame: float) -> np.ndarray:
    """A stroke -> 8x8 cells in [0, 1]: full height, centred by mass, like a NIST bitmap's 4x4 counts."""
    digit = np.clip(_fit(_crop(stroke, frame), WORK), 0.0, 1.0)
    grid = np.zeros((WORK, WORK), dtype=np.float32)
    h, w = digit.shape
    columns = digit.sum(0)
    centre = float((columns * np.arange(w)).sum() / max(columns.sum(), 1e-6))
    left = int(np.clip(round((WORK - 1) / 2 - centre), 0, WORK - w))
    rows = digit.sum(1)
    middle = float((rows * np.arange(h)).sum() / max(rows.sum(), 1e-6))
    top = int(np.clip(round((WORK - 1) / 2 - middle), 0, WORK - h))
    grid[top : top + h, left : left + w] = digit
    cells: np.ndarray = grid.reshape(8, WORK // 8, 8, WORK // 8).mean(axis=(1, 3))
    return cells
