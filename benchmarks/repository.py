"""Model repositories for the tests that change them while a server runs: real files, published as training does."""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

import modelrepo
import provenance

SHIPPED = Path(__file__).resolve().parents[1] / "models"


def repository(root: Path, *names: str) -> Path:
    """A repository at `root` holding version 1 of each shipped model named."""
    for name in names:
        shutil.copytree(SHIPPED / name / "1", root / name / "1")
        (root / name / "1" / provenance.SIGNATURE_FILE).unlink(missing_ok=True)
    return root


def keypair(directory: Path, name: str) -> tuple[Path, Path]:
    """An elliptic-curve (P-256) key pair as PEM files: (private, public)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private, public = directory / f"{name}.key", directory / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


def publish(root: Path, name: str, *, corrupt: bool = False, signing_key: Path | None = None) -> str:
    """The next version of `name`: version 1's file under a new card, staged (and signed) and renamed in as
    training does."""
    version = modelrepo.next_version(root, name)
    staging = Path(tempfile.mkdtemp(prefix=modelrepo.STAGING_PREFIX, dir=root))
    directory = staging / name / version
    shutil.copytree(root / name / "1", directory)
    (directory / provenance.SIGNATURE_FILE).unlink(missing_ok=True)  # version 1's signature is not this one's
    card = dataclasses.replace(modelrepo.read_card(directory), version=version)
    modelrepo.write_card(card, directory)
    if corrupt:  # the file is not the one its card names
        with (directory / modelrepo.MODEL_FILE).open("ab") as f:
            f.write(b"\0")
    if signing_key is not None:
        provenance.sign(directory, signing_key)
    modelrepo.publish(directory, root, name, version)
    shutil.rmtree(staging)
    return version


def set_policy(root: Path, name: str, policy: dict[str, object]) -> None:
    (root / name / modelrepo.POLICY_FILE).write_text(json.dumps({"version_policy": policy}), encoding="utf-8")
