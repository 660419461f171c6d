"""LeNet reads digits as people make them: drawn with pens of several widths and typed in the DejaVu
faces Debian ships, uploaded as PNG to a real server (the route the page's drawing pad uses).

The test draws its own sets (other seeds, pens and sizes than the card's; the system's fonts, not the
copies matplotlib ships), which training never sees; and it checks that the card's figures are true.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest

import modelrepo
import preprocessing
from tests.helpers import REPO, run_onnx
from training import handmade, lenet

BAR = 0.95
TEST_SEED = 21


def _debian_dejavu_faces() -> list[Path]:
    """Every DejaVu face fontconfig knows (fonts-dejavu-core and -extra), but the maths one."""
    try:
        listed = subprocess.run(["fc-list", ":", "file"], capture_output=True, text=True, check=True).stdout
    except FileNotFoundError:
        pytest.fail("fc-list is missing: run `make system-deps` (fonts-dejavu-core, fonts-dejavu-extra)")
    faces = sorted(Path(line.strip().rstrip(":")) for line in listed.splitlines() if "/DejaVu" in line)
    faces = [f for f in faces if "Math" not in f.name]
    if len(faces) < 6:
        pytest.fail(f"expected the DejaVu faces of fonts-dejavu-core and -extra, found {faces}")
    return faces


def _accuracy(http: httpx.Client, samples: list[handmade.Sample]) -> tuple[float, list[str]]:
    wrong = []
    for sample in samples:
        r = http.post("/v1/lenet/predict-image", files={"image": ("digit.png", sample.png(), "image/png")})
        assert r.status_code == 200, r.text
        if r.json()["label"] != sample.label:
            wrong.append(f"{sample.label} read as {r.json()['label']} ({sample.how})")
    return 1 - len(wrong) / len(samples), wrong


def test_drawn_digits_are_read(http: httpx.Client) -> None:
    samples = list(handmade.drawn(TEST_SEED, per_style=1, pens=(6, 10, 18, 30)))
    accuracy, wrong = _accuracy(http, samples)
    assert len(samples) == 4 * sum(len(styles) for styles in handmade.STYLES.values())  # 88
    assert accuracy >= BAR, wrong


def test_typed_digits_are_read(http: httpx.Client) -> None:
    samples = list(handmade.typed(_debian_dejavu_faces(), TEST_SEED, sizes=(48, 120, 220)))
    accuracy, wrong = _accuracy(http, samples)
    assert accuracy >= BAR, wrong


def test_the_cards_figures_are_what_the_model_does() -> None:
    card = modelrepo.read_card(REPO / "models" / "lenet" / "1")
    sets = {
        "drawn": list(handmade.drawn(lenet.HANDMADE_SEED)),
        "typed": list(handmade.typed(handmade.matplotlib_fonts(), lenet.HANDMADE_SEED)),
    }
    for name, samples in sets.items():
        x = np.stack([preprocessing.normalise(preprocessing.ink_high(s.image / 255.0))[None] for s in samples])
        accuracy = float(np.mean(run_onnx("lenet", x).argmax(1) == [s.label for s in samples]))
        assert card.metrics[f"{name}_rows"] == len(samples)
        assert card.metrics[f"{name}_accuracy"] == pytest.approx(accuracy, abs=1e-6)
        assert accuracy >= BAR
    assert card.metrics["test_accuracy"] >= 0.99
