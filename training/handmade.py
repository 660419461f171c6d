"""Digits as people make them for the page: drawn with a pen on a 280x280 pad, or typed in a font.

For measuring only: training never fits on these (it sees scikit-learn's scans alone). A recipe reports
its accuracy on one fixed set in the card; the tests draw sets of their own, with other seeds, pens
and fonts, and upload them to a real server. Strokes are written in a unit box (x right, y down) in the
common ways of writing each digit, then slanted, rotated, squeezed, wobbled and placed at random.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PAD = 280  # the page's drawing pad, in pixels
PENS = (8, 12, 16, 22)  # pen widths on that pad: thin to bold

Stroke = list[tuple[float, float]]


def _arc(cx: float, cy: float, rx: float, ry: float, start: float, end: float, n: int = 24) -> Stroke:
    """Points on an ellipse from `start` to `end` degrees (0 = right, 90 = down: y grows downwards)."""
    return [
        (cx + rx * math.cos(math.radians(a)), cy + ry * math.sin(math.radians(a))) for a in np.linspace(start, end, n)
    ]


# Each digit: the ways people commonly write it, each a list of pen strokes.
STYLES: dict[int, list[list[Stroke]]] = {
    0: [[_arc(0.5, 0.5, 0.3, 0.45, -90, 270, 40)], [_arc(0.5, 0.5, 0.26, 0.46, -100, 265, 40)]],
    1: [
        [[(0.55, 0.05), (0.55, 0.95)]],
        [[(0.32, 0.25), (0.56, 0.05), (0.56, 0.95)]],
        [[(0.32, 0.25), (0.56, 0.05), (0.56, 0.95)], [(0.33, 0.95), (0.78, 0.95)]],
    ],
    2: [
        [[*_arc(0.5, 0.3, 0.28, 0.25, 190, 360, 20), (0.78, 0.33), (0.22, 0.95), (0.82, 0.95)]],
        [[*_arc(0.5, 0.28, 0.3, 0.23, 200, 385, 24), (0.2, 0.95), (0.85, 0.93)]],
    ],
    3: [
        [_arc(0.48, 0.27, 0.27, 0.22, 200, 450, 26) + _arc(0.48, 0.72, 0.3, 0.23, 270, 520, 26)],
        [[(0.22, 0.05), (0.78, 0.05), (0.45, 0.45), *_arc(0.47, 0.7, 0.31, 0.25, 280, 510, 24)]],
    ],
    4: [
        [[(0.6, 0.05), (0.15, 0.65), (0.88, 0.65)], [(0.66, 0.3), (0.66, 0.97)]],
        [[(0.3, 0.05), (0.22, 0.55), (0.85, 0.55)], [(0.7, 0.05), (0.7, 0.97)]],
    ],
    5: [
        [[(0.78, 0.05), (0.3, 0.05), (0.25, 0.45), *_arc(0.5, 0.68, 0.3, 0.27, 230, 505, 28)]],
        [[(0.27, 0.05), (0.25, 0.45), *_arc(0.5, 0.68, 0.3, 0.27, 230, 505, 28)], [(0.27, 0.05), (0.78, 0.05)]],
    ],
    6: [
        [_arc(0.62, 0.55, 0.4, 0.5, 245, 180, 16) + _arc(0.5, 0.72, 0.28, 0.23, 180, 540, 30)],
        [[(0.7, 0.05), (0.3, 0.55), *_arc(0.5, 0.72, 0.27, 0.23, 200, 560, 30)]],
    ],
    7: [
        [[(0.18, 0.06), (0.82, 0.06), (0.4, 0.95)]],
        [[(0.18, 0.06), (0.82, 0.06), (0.42, 0.95)], [(0.35, 0.5), (0.78, 0.5)]],
        [[(0.18, 0.14), (0.25, 0.06), (0.82, 0.06), (0.62, 0.45), (0.5, 0.95)]],
    ],
    8: [
        [_arc(0.5, 0.27, 0.22, 0.21, 90, 450, 28) + _arc(0.5, 0.72, 0.28, 0.24, 270, 630, 30)],
        [
            [
                (0.72, 0.15),
                *_arc(0.5, 0.26, 0.24, 0.21, 330, 90, 12),
                *_arc(0.5, 0.72, 0.27, 0.24, 270, -90, 24),
                *_arc(0.5, 0.26, 0.24, 0.21, 90, -20, 10),
            ]
        ],
    ],
    9: [
        [[*_arc(0.48, 0.3, 0.27, 0.24, 0, 360, 30), (0.75, 0.3), (0.72, 0.95)]],
        [_arc(0.48, 0.3, 0.27, 0.24, 10, 370, 30) + _arc(0.25, 0.3, 0.5, 0.65, 0, 80, 12)],
    ],
}


@dataclass(frozen=True)
class Sample:
    image: np.ndarray  # (PAD, PAD) uint8, dark ink on white
    label: int
    how: str  # e.g. "drawn, pen 12" or "typed, DejaVuSans-Bold.ttf"

    def png(self) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(self.image).save(buffer, "PNG")
        return buffer.getvalue()


def _place(strokes: list[Stroke], rng: np.random.Generator) -> list[np.ndarray]:
    """A random hand: slant, rotation, width, wobble, size and position on the pad."""
    slant, turn = rng.uniform(-0.3, 0.15), math.radians(rng.uniform(-10, 10))
    squeeze, height = rng.uniform(0.7, 1.15), rng.uniform(0.45, 0.85) * PAD
    cos, sin = math.cos(turn), math.sin(turn)
    centre = np.array([PAD / 2, PAD / 2]) + rng.uniform(-0.12, 0.12, 2) * PAD
    placed = []
    for stroke in strokes:
        p = np.array(stroke, dtype=np.float64) - 0.5
        p += rng.normal(0, 0.012, p.shape).cumsum(0) * 0.5  # a hand is not a ruler
        p[:, 0] = p[:, 0] * squeeze + slant * -p[:, 1]
        p = p @ np.array([[cos, sin], [-sin, cos]])
        placed.append(p * height + centre)
    return placed


def hand(label: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One way of writing `label`, by a random hand: its strokes as (N, 2) points on the pad."""
    styles = STYLES[label]
    return _place(styles[int(rng.integers(len(styles)))], rng)


def drawn(seed: int, per_style: int = 2, pens: Sequence[int] = PENS) -> Iterator[Sample]:
    """Every style of every digit, `per_style` random hands per pen width."""
    rng = np.random.default_rng(seed)
    for label, styles in STYLES.items():
        for strokes in styles:
            for pen in pens:
                for _ in range(per_style):
                    image = Image.new("L", (PAD, PAD), 255)
                    draw = ImageDraw.Draw(image)
                    for points in _place(strokes, rng):
                        xy = [tuple(p) for p in points]
                        draw.line(xy, fill=0, width=pen, joint="curve")
                        for x, y in (xy[0], xy[-1]):  # round pen ends
                            draw.ellipse((x - pen / 2, y - pen / 2, x + pen / 2, y + pen / 2), fill=0)
                    yield Sample(np.asarray(image), label, f"drawn, pen {pen}")


def typed(fonts: Sequence[Path], seed: int, sizes: Sequence[int] = (96, 160)) -> Iterator[Sample]:
    """Each digit in each font and size, somewhere on the pad."""
    rng = np.random.default_rng(seed)
    for font_path in fonts:
        for size in sizes:
            font = ImageFont.truetype(str(font_path), size)
            for label in range(10):
                image = Image.new("L", (PAD, PAD), 255)
                draw = ImageDraw.Draw(image)
                left, top, right, bottom = draw.textbbox((0, 0), str(label), font=font)
                x = (PAD - (right - left)) / 2 - left + rng.uniform(-0.1, 0.1) * PAD
                y = (PAD - (bottom - top)) / 2 - top + rng.uniform(-0.1, 0.1) * PAD
                draw.text((x, y), str(label), fill=0, font=font)
                yield Sample(np.asarray(image), label, f"typed, {font_path.name} {size}px")


def matplotlib_fonts() -> list[Path]:
    """The DejaVu fonts matplotlib ships: the same files wherever training runs (not the system's)."""
    import matplotlib

    fonts = (Path(matplotlib.get_data_path()) / "fonts" / "ttf").glob("DejaVu*.ttf")
    return sorted(f for f in fonts if "Display" not in f.name)  # the Display faces have no digits


# What is no digit, for measuring LeNet's "that does not look like a digit" (training.recognition, the card's
# metrics, tests/test_recognition.py). Training refuses other shapes: letters in other faces and other scribbles.
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
DIGIT_LIKE = frozenset("OoDQlIiJjSsZzBbGgqTtAyY")  # 0 1 2 5 6 8 9 7 4 in many hands and faces


def letters(fonts: Sequence[Path], sizes: Sequence[int] = (96, 160)) -> Iterator[Sample]:
    """A-Z and a-z in each font and size, centred on the pad (label -1: no digit)."""
    for font_path in fonts:
        for size in sizes:
            font = ImageFont.truetype(str(font_path), size)
            for letter in LETTERS:
                image = Image.new("L", (PAD, PAD), 255)
                draw = ImageDraw.Draw(image)
                left, top, right, bottom = draw.textbbox((0, 0), letter, font=font)
                at = ((PAD - (right - left)) / 2 - left, (PAD - (bottom - top)) / 2 - top)
                draw.text(at, letter, fill=0, font=font)
                yield Sample(np.asarray(image), -1, letter)


def scribbles(seed: int, n: int = 600) -> Iterator[Sample]:
    """1-4 random polylines with pens of 6-30 pixels (label -1: no digit)."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        image = Image.new("L", (PAD, PAD), 255)
        pen = int(rng.choice([6, 10, 18, 30]))
        for _ in range(int(rng.integers(1, 5))):
            points = rng.uniform(30, 250, (int(rng.integers(2, 8)), 2))
            ImageDraw.Draw(image).line([tuple(p) for p in points], fill=0, width=pen, joint="curve")
        yield Sample(np.asarray(image), -1, f"scribble, pen {pen}")
