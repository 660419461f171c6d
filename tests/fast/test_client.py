"""The batch client against the real ASGI app in this process: V2 binary, the typed JSON routes and --local
give the same bytes for every kind of model (tests/test_client.py does it over a socket, with failures)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from client import Scorer
from tests.fast.conftest import REPO

EXAMPLES = REPO / "examples"


def _score(source: Path, output: Path, model: str, **how: object) -> bytes:
    scorer = Scorer(model=model, models_dir=REPO / "models", chunk_size=7, quiet=True, **how)  # type: ignore[arg-type]
    try:
        summary = scorer.score_file(source, output)
    finally:
        scorer.close()
    assert summary.rows_failed == 0
    return output.read_bytes()


@pytest.mark.parametrize(
    ("model", "source"),
    [("lenet", "digits.npy"), ("multilinear", "exams.csv"), ("blobs", "points.jsonl")],
)
@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".npy"])
def test_v2_json_and_local_give_the_same_bytes(
    client: TestClient, tmp_path: Path, model: str, source: str, suffix: str
) -> None:
    outputs = {
        protocol: _score(
            EXAMPLES / source,
            tmp_path / f"{protocol}{suffix}",
            model,
            protocol=protocol,
            url=str(client.base_url),
            http=client,
        )
        for protocol in ("v2", "json")
    }
    outputs["local"] = _score(EXAMPLES / source, tmp_path / f"local{suffix}", model, local=True)
    assert outputs["v2"] == outputs["json"] == outputs["local"]


def test_csv_has_a_probability_column_per_label(client: TestClient, tmp_path: Path) -> None:
    _score(EXAMPLES / "digits.npy", tmp_path / "out.csv", "lenet", url=str(client.base_url), http=client)
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines[0] == "row,label," + ",".join(f"p{d}" for d in range(10)) + ",error"
    assert len(lines) == 1 + len(np.load(EXAMPLES / "digits.npy"))
