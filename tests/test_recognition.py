"""LeNet's "that does not look like a digit": the card's rule on its logits (service/recognition.py).

Measured on the committed model with the server's own preprocessing: held-out scans are taken for
digits (>= 99%), so is every drawn and typed digit LeNet reads right, and shapes that are no digit
(letters in faces training never saw, scribbles, a spiral) are refused at the rates the card states.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image, ImageDraw

import modelrepo
import preprocessing
from recognition import recognised
from tests.helpers import REPO, run_onnx
from training import data, handmade, lenet, recipes

pytestmark = pytest.mark.timeout(300)

CARD = modelrepo.read_card(REPO / "models" / "lenet" / "1")


def _drawn(strokes: list[list[tuple[float, float]]], pen: int = 18) -> np.ndarray:
    """A drawing on the page's 280x280 pad, as the server makes it into LeNet's input."""
    pad = Image.new("L", (handmade.PAD, handmade.PAD), 255)
    for stroke in strokes:
        ImageDraw.Draw(pad).line(stroke, fill=17, width=pen, joint="curve")
    return preprocessing.normalise(preprocessing.ink_high(np.asarray(pad) / 255.0))[None]


SPIRAL = [[(140 + r * math.cos(r / 8), 140 + r * math.sin(r / 8)) for r in range(0, 110, 2)]]
LETTER_H = [[(70, 50), (70, 230)], [(210, 50), (210, 230)], [(70, 140), (210, 140)]]


def test_the_rule_is_the_cards() -> None:
    assert CARD.extra["recognition"] == lenet.RECOGNITION == {"rule": "max_logit", "threshold": 2.0}
    logits = np.array([[2.0, 0, 0], [1.99, 1.9, 0], [-1, 9, 2]], dtype=np.float32)
    assert recognised(logits, CARD).tolist() == [True, False, True]
    without = replace(CARD, extra={})  # a card without the rule takes every answer for a digit
    assert recognised(logits, without).tolist() == [True, True, True]
    other = replace(CARD, extra={"recognition": {"rule": "entropy", "threshold": 1}})
    with pytest.raises(ValueError, match="model lenet: unknown recognition rule 'entropy': expected one of max_logit"):
        recognised(logits, other)


def test_held_out_digits_are_taken_for_digits() -> None:
    _, _, x_test, _ = data.stratified_split(*data.digits_32x32(), recipes.SPECS["lenet"].seed)
    taken = recognised(run_onnx("lenet", x_test.numpy()), CARD)
    assert taken.mean() >= 0.99
    assert CARD.metrics["test_recognised"] == pytest.approx(taken.mean(), abs=1e-6)


def test_drawn_and_typed_digits_read_right_are_still_taken() -> None:
    samples = [*handmade.drawn(21, per_style=1), *handmade.typed(handmade.matplotlib_fonts(), 21, sizes=(120,))]
    x = np.stack([preprocessing.normalise(preprocessing.ink_high(s.image / 255.0))[None] for s in samples])
    logits = run_onnx("lenet", x)
    right = logits.argmax(1) == [s.label for s in samples]
    assert recognised(logits, CARD)[right].mean() >= 0.99


def test_shapes_that_are_no_digit_are_refused() -> None:
    x = np.stack([_drawn(SPIRAL), _drawn(LETTER_H), _drawn(SPIRAL, pen=10)])
    assert recognised(run_onnx("lenet", x), CARD).tolist() == [False, False, False]


def test_letters_and_scribbles_are_refused_as_the_card_says() -> None:
    letters, kept = lenet.inputs(handmade.letters(handmade.matplotlib_fonts()))
    refused = ~recognised(run_onnx("lenet", letters), CARD)
    assert refused[[s.how in "Xx" for s in kept]].all()  # the letter X is no "8"
    plain = np.array([s.how not in handmade.DIGIT_LIKE for s in kept])
    assert plain.sum() == 12 * 2 * 29  # 12 DejaVu faces, 2 sizes, the 29 letters not written like a digit
    assert refused[plain].mean() == pytest.approx(CARD.metrics["letters_refused"], abs=1e-6)
    assert refused[plain].mean() >= 0.75
    scribbles, _ = lenet.inputs(handmade.scribbles(lenet.SCRIBBLES_SEED))
    refused = ~recognised(run_onnx("lenet", scribbles), CARD)
    assert refused.mean() == pytest.approx(CARD.metrics["scribbles_refused"], abs=1e-6)
    assert refused.mean() >= 0.75
