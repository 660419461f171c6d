"""How well the card's "not a digit" rule tells digits from letters and scribbles (a measurement, no training).

    python -m training.recognition [--threshold T]

Runs the served model (models/lenet/1) through ONNX Runtime on the server's own preprocessing and prints,
for the card's rule (or another threshold): the share of held-out scans, drawn and typed digits taken for
digits (and of those read right, the share still taken), and the share of letters and scribbles refused.
Letters: A-Z and a-z in matplotlib's 12 DejaVu faces at two sizes, also without the letters commonly
written like a digit (O, l, S, Z, B, g, ...); scribbles: 1-4 random polylines with pens of 6-30 pixels.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageDraw, ImageFont

import modelrepo
import preprocessing
from recognition import recognised
from training import data, handmade, recipes

LENET = Path(__file__).resolve().parents[1] / "models" / "lenet" / "1"  # the served model
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
DIGIT_LIKE = set("OoDQlIiJjSsZzBbGgqTtAyY")  # 0 1 2 5 6 8 9 7 4 in many hands and faces
SEED = 5


def _input(pad: Image.Image) -> np.ndarray:
    return preprocessing.normalise(preprocessing.ink_high(np.asarray(pad) / 255.0))[None]


def letters() -> tuple[np.ndarray, list[str]]:
    x, names = [], []
    for face in handmade.matplotlib_fonts():
        for size in (96, 160):
            font = ImageFont.truetype(str(face), size)
            for letter in LETTERS:
                pad = Image.new("L", (handmade.PAD, handmade.PAD), 255)
                draw = ImageDraw.Draw(pad)
                left, top, right, bottom = draw.textbbox((0, 0), letter, font=font)
                at = ((handmade.PAD - (right - left)) / 2 - left, (handmade.PAD - (bottom - top)) / 2 - top)
                draw.text(at, letter, fill=0, font=font)
                x.append(_input(pad))
                names.append(letter)
    return np.stack(x), names


def scribbles(n: int = 600) -> np.ndarray:
    rng = np.random.default_rng(SEED)
    x = []
    for _ in range(n):
        pad = Image.new("L", (handmade.PAD, handmade.PAD), 255)
        pen = int(rng.choice([6, 10, 18, 30]))
        for _ in range(int(rng.integers(1, 5))):
            points = rng.uniform(30, 250, (int(rng.integers(2, 8)), 2))
            ImageDraw.Draw(pad).line([tuple(p) for p in points], fill=0, width=pen, joint="curve")
        x.append(_input(pad))
    return np.stack(x)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threshold", type=float, default=None, help="another max-logit threshold to try")
    args = parser.parse_args(argv)
    card = modelrepo.read_card(LENET)
    if args.threshold is not None:
        card = replace(card, extra={"recognition": {"rule": "max_logit", "threshold": args.threshold}})
    session = ort.InferenceSession(str(LENET / modelrepo.MODEL_FILE), providers=["CPUExecutionProvider"])

    def logits(x: np.ndarray) -> np.ndarray:
        out: np.ndarray = session.run(None, {"x": x.astype(np.float32)})[0]
        return out

    print(f"rule: {card.extra['recognition']}")
    _, _, x_test, y_test = data.stratified_split(*data.digits_32x32(), recipes.SPECS["lenet"].seed)
    digits = {"held-out scans": (x_test.numpy(), y_test.numpy())}
    sets = {
        "drawn (card's set)": list(handmade.drawn(0)),
        "typed (card's set)": list(handmade.typed(handmade.matplotlib_fonts(), 0)),
    }
    for name, samples in sets.items():
        digits[name] = (
            np.stack([_input(Image.fromarray(s.image)) for s in samples]),
            np.array([s.label for s in samples]),
        )
    for name, (x, y) in digits.items():
        z = logits(x)
        taken, right = recognised(z, card), z.argmax(1) == y
        both = (taken & right).mean()
        print(f"{name:22s} {len(y):5d}  taken {taken.mean():7.2%}  read right {right.mean():7.2%}  both {both:7.2%}")
    x, names = letters()
    refused = ~recognised(logits(x), card)
    plain = np.array([n not in DIGIT_LIKE for n in names])
    shaped = f"not shaped like a digit: {refused[plain].mean():.2%} of {plain.sum()}"
    print(f"{'letters':22s} {len(names):5d}  refused {refused.mean():7.2%}  ({shaped})")
    x = scribbles()
    print(f"{'scribbles':22s} {len(x):5d}  refused {(~recognised(logits(x), card)).mean():7.2%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
