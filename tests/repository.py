"""Model repositories for the tests that change them while a server runs: real files, published as training does."""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

import modelrepo

SHIPPED = Path(__file__).resolve().parents[1] / "models"


def repository(root: Path, *names: str) -> Path:
    """A repository at `root` holding version 1 of each shipped model named."""
    for name in names:
        shutil.copytree(SHIPPED / name / "1", root / name / "1")
    return root


def publish(root: Path, name: str, *, corrupt: bool = False) -> str:
    """The next version of `name`: version 1's file under a new card, staged and renamed in as training does."""
    version = modelrepo.next_version(root, name)
    staging = Path(tempfile.mkdtemp(prefix=modelrepo.STAGING_PREFIX, dir=root))
    directory = staging / name / version
    shutil.copytree(root / name / "1", directory)
    card = dataclasses.replace(modelrepo.read_card(directory), version=version)
    modelrepo.write_card(card, directory)
    if corrupt:  # the file is not the one its card names
        with (directory / modelrepo.MODEL_FILE).open("ab") as f:
            f.write(b"\0")
    modelrepo.publish(directory, root, name, version)
    shutil.rmtree(staging)
    return version


def set_policy(root: Path, name: str, policy: dict[str, object]) -> None:
    (root / name / modelrepo.POLICY_FILE).write_text(json.dumps({"version_policy": policy}), encoding="utf-8")
