"""A model no code knows, trained into a temporary repository, served and scored on its card alone.

Issue 19, point 4: a three-class classifier (red, green, blue blobs) gets the typed route, V2 and the
batch client (V2 binary, the typed JSON route and --local) from its card, with no change to the service
or the client. One server, one training (seconds), four runs of the CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

import modelrepo
from tests import colors
from tests.server import REPO, Server, running

pytestmark = pytest.mark.timeout(600)  # training and exporting the model, then one server start


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    colors.train(root)
    return root


@pytest.fixture(scope="module")
def served(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    with running(log, env={"TINYSERVE_MODELS_DIR": str(repository)}) as server:
        yield server


def test_the_card_makes_it_a_three_class_classifier(repository: Path) -> None:
    (entry,) = modelrepo.discover(repository)
    assert (entry.name, entry.card.kind, entry.card.labels) == (
        colors.NAME,
        modelrepo.ModelKind.MULTICLASS,
        colors.LABELS,
    )
    assert entry.card.metrics["train_accuracy"] == 1.0


def test_typed_route_and_v2_answer_the_blobs(served: Server) -> None:
    with httpx.Client(base_url=served.url, timeout=30) as http:
        info = http.get(f"/v1/models/{colors.NAME}").json()
        assert info["card"]["labels"] == list(colors.LABELS)
        typed = http.post(f"/v1/{colors.NAME}/predict", json={"x": colors.CENTRES.tolist()})
        assert typed.status_code == 200, typed.text
        answer = typed.json()
        assert (answer["model"], answer["version"], answer["labels"]) == (colors.NAME, "1", [0, 1, 2])
        probabilities = np.array(answer["probabilities"])
        assert probabilities.shape == (3, 3) and np.allclose(probabilities.sum(axis=1), 1.0)
        assert probabilities.max(axis=1).min() > 0.9  # each centre sure of its own blob

        request = {
            "inputs": [{"name": "x", "shape": [3, 2], "datatype": "FP32", "data": colors.CENTRES.ravel().tolist()}]
        }
        v2 = http.post(f"/v2/models/{colors.NAME}/infer", json=request)
        assert v2.status_code == 200, v2.text
        (output,) = v2.json()["outputs"]
        assert (output["name"], output["shape"], output["datatype"]) == ("logits", [3, 3], "FP32")
        logits = np.array(output["data"], dtype=np.float32).reshape(3, 3)
        assert logits.argmax(axis=1).tolist() == [0, 1, 2]
        assert modelrepo.softmax(logits).tolist() == answer["probabilities"]  # one softmax, server and client

        refused = http.post(f"/v1/{colors.NAME}/predict", json={"x": [[1.0, 2.0, 3.0]]})
        assert refused.status_code == 400
        assert refused.json()["error"] == "x[0]: list should have at most 2 items after validation, not 3"


def _score(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "client", colors.NAME, *args, "--chunk-size", "64", "-q"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_client_scores_a_file_the_same_three_ways(served: Server, repository: Path, tmp_path: Path) -> None:
    x, truth = colors.points(100, seed=7)  # 300 points the model never saw, shuffled
    source = tmp_path / "points.csv"
    source.write_text("a,b\n" + "".join(f"{a!r},{b!r}\n" for a, b in x.tolist()) + "1,nan\n")
    runs = {
        "v2": ("--url", served.url),
        "json": ("--url", served.url, "--protocol", "json"),
        "local": ("--local", "--models", str(repository)),
    }
    outputs = {}
    for name, how in runs.items():
        result = _score(str(source), str(tmp_path / f"{name}.jsonl"), *how)
        assert result.returncode == 1, result.stderr  # the last row is refused, the others scored
        assert result.stderr.startswith("rows ok: 300, rows failed: 1, "), result.stderr
        outputs[name] = (tmp_path / f"{name}.jsonl").read_bytes()
    assert outputs["json"] == outputs["v2"] == outputs["local"]  # the same answers to the bit
    records = [json.loads(line) for line in outputs["v2"].splitlines()]
    assert [r["row"] for r in records] == list(range(301))  # every row once, in order
    assert [r["label"] for r in records[:300]] == truth.tolist()
    assert all(len(r["probabilities"]) == 3 and r["error"] is None for r in records[:300])
    assert records[300] == {"row": 300, "error": "row 300: NaN or Infinity; expected finite numbers"}

    result = _score(str(source), str(tmp_path / "local.csv"), *runs["local"])
    lines = (tmp_path / "local.csv").read_text().splitlines()
    assert lines[0] == "row,label,p0,p1,p2,error"  # a probability column per label
    assert [int(line.split(",")[1]) for line in lines[1:301]] == truth.tolist()
