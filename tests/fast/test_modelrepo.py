"""The model repository contract: cards round-trip, files are verified, layout is enforced."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import modelrepo

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    shutil.copytree(MODELS, tmp_path / "models")
    return tmp_path / "models"


def test_discover_finds_the_four_shipped_models() -> None:
    entries = modelrepo.discover(MODELS)
    assert [(e.name, e.version) for e in entries] == [
        ("blobs", "1"),
        ("lenet", "1"),
        ("linear", "1"),
        ("multilinear", "1"),
    ]


def test_card_round_trips_through_json_unchanged() -> None:
    for entry in modelrepo.discover(MODELS):
        text = (entry.directory / modelrepo.CARD_FILE).read_text()
        card = modelrepo.ModelCard.from_dict(json.loads(text))
        assert card == entry.card
        assert card.to_json() == text


def test_verify_accepts_every_shipped_model() -> None:
    for entry in modelrepo.discover(MODELS):
        modelrepo.verify(entry)  # raises on mismatch


def test_verify_names_the_file_when_one_byte_is_tampered(repo_copy: Path) -> None:
    entry = modelrepo.latest(modelrepo.discover(repo_copy))["linear"]
    data = bytearray(entry.model_path.read_bytes())
    data[len(data) // 2] ^= 0x01
    entry.model_path.write_bytes(bytes(data))
    with pytest.raises(modelrepo.ModelRepositoryError, match=r"linear/1/model\.onnx: sha256 mismatch"):
        modelrepo.verify(entry)


def test_verify_names_a_missing_file(repo_copy: Path) -> None:
    entry = modelrepo.latest(modelrepo.discover(repo_copy))["blobs"]
    entry.model_path.unlink()
    with pytest.raises(modelrepo.ModelRepositoryError, match=r"blobs/1/model\.onnx: model file is missing"):
        modelrepo.verify(entry)


def test_discover_refuses_a_card_in_the_wrong_directory(repo_copy: Path) -> None:
    (repo_copy / "blobs" / "1").rename(repo_copy / "blobs" / "2")
    with pytest.raises(modelrepo.ModelRepositoryError, match=r"card names blobs/1 but lives in blobs/2"):
        modelrepo.discover(repo_copy)


def test_discover_refuses_malformed_cards(repo_copy: Path) -> None:
    (repo_copy / "linear" / "1" / "card.json").write_text("{not json")
    with pytest.raises(modelrepo.ModelRepositoryError, match=r"linear/1/card\.json: not valid JSON"):
        modelrepo.discover(repo_copy)
    (repo_copy / "linear" / "1" / "card.json").write_text('{"name": "linear"}')
    with pytest.raises(modelrepo.ModelRepositoryError, match=r"malformed card: KeyError"):
        modelrepo.discover(repo_copy)


def test_discover_refuses_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(modelrepo.ModelRepositoryError, match="model repository directory not found"):
        modelrepo.discover(tmp_path / "nowhere")


def test_latest_prefers_the_highest_numeric_version(repo_copy: Path) -> None:
    for version in ("2", "10"):
        target = repo_copy / "linear" / version
        shutil.copytree(repo_copy / "linear" / "1", target)
        card = json.loads((target / "card.json").read_text())
        (target / "card.json").write_text(json.dumps(card | {"version": version}))
    entries = modelrepo.discover(repo_copy)
    assert [e.version for e in entries if e.name == "linear"] == ["1", "2", "10"]
    assert modelrepo.latest(entries)["linear"].version == "10"


def test_modelrepo_imports_without_torch_or_bentoml() -> None:
    heavy = "{'torch', 'bentoml', 'onnxruntime', 'numpy'}"
    code = f"import sys, modelrepo; print({heavy} & set(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "set()"


def _edit_card(repo: Path, name: str, **changes: object) -> None:
    path = repo / name / "1" / modelrepo.CARD_FILE
    card = json.loads(path.read_text())
    path.write_text(json.dumps(card | changes))


@pytest.mark.parametrize(
    ("name", "changes", "message"),
    [
        (
            "blobs",
            {"outputs": [{"name": "probability", "dtype": "float32", "shape": [-1, 1]}] * 2},
            "blobs/1: expected one input and one output, the card has 1 and 2",
        ),
        (
            "linear",
            {"task": "segmentation"},
            "linear/1: unknown task 'segmentation'; expected regression, binary-classification, "
            "multiclass-classification",
        ),
        ("blobs", {"labels": None}, "blobs/1: a classifier's card needs its labels"),
        (
            "lenet",
            {"labels": ["a", "b", "c"]},
            "lenet/1: output 'logits' has shape [-1, 10]; expected [-1, 3] for multiclass-classification",
        ),
    ],
)
def test_a_card_that_fits_no_kind_refuses_the_start_before_any_worker(
    repo_copy: Path, name: str, changes: dict[str, object], message: str
) -> None:
    """Before: a card with two outputs raised inside every worker's __init__, a restart loop."""
    from service.runtime import preflight
    from service.settings import Settings

    _edit_card(repo_copy, name, **changes)
    with pytest.raises(modelrepo.ModelRepositoryError) as refused:
        preflight(Settings(models_dir=repo_copy))
    assert str(refused.value) == message
