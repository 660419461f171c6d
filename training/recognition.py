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

import modelrepo
from recognition import recognised
from training import data, handmade, recipes
from training.lenet import SCRIBBLES_SEED, inputs

LENET = Path(__file__).resolve().parents[1] / "models" / "lenet" / "1"  # the served model


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
        x, kept = inputs(samples)
        digits[name] = (x, np.array([s.label for s in kept]))
    for name, (x, y) in digits.items():
        z = logits(x)
        taken, right = recognised(z, card), z.argmax(1) == y
        both = (taken & right).mean()
        print(f"{name:22s} {len(y):5d}  taken {taken.mean():7.2%}  read right {right.mean():7.2%}  both {both:7.2%}")
    x, kept = inputs(handmade.letters(handmade.matplotlib_fonts()))
    refused = ~recognised(logits(x), card)
    plain = np.array([s.how not in handmade.DIGIT_LIKE for s in kept])
    shaped = f"not shaped like a digit: {refused[plain].mean():.2%} of {plain.sum()}"
    print(f"{'letters':22s} {len(kept):5d}  refused {refused.mean():7.2%}  ({shaped})")
    x, kept = inputs(handmade.scribbles(SCRIBBLES_SEED))
    print(f"{'scribbles':22s} {len(kept):5d}  refused {(~recognised(logits(x), card)).mean():7.2%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
