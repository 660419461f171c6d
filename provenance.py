"""Provenance beyond the sha256: OpenSSF model signing (the `model-signing` package), key-based and offline.

A version directory is signed whole (model file, card, pictures) into `<version>/model.sig`. With
TINYSERVE_TRUSTED_KEYS set (public keys, PEM, elliptic curve), a version serves only if a trusted key
signed it: at start and at every load. `model_signing` is imported only then (it brings sigstore).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modelrepo import ModelEntry, ModelRepositoryError

SIGNATURE_FILE = "model.sig"


def trusted_keys(setting: str | None) -> list[Path]:
    """TINYSERVE_TRUSTED_KEYS: public key files, separated by commas; each must exist."""
    keys = [Path(part.strip()) for part in (setting or "").split(",") if part.strip()]
    missing = [str(key) for key in keys if not key.is_file()]
    if missing:
        raise ModelRepositoryError(f"TINYSERVE_TRUSTED_KEYS: no such public key file: {', '.join(missing)}")
    return keys


def _package(module: str) -> Any:
    """model_signing's `module`, or one sentence on how to install it."""
    try:
        return importlib.import_module(f"model_signing.{module}")
    except ImportError as e:
        raise ModelRepositoryError(
            f"model signing needs the model-signing package ({e}): pip install 'tinyserve[signing]'"
        ) from None


def _hashing(directory: Path) -> Any:
    return _package("hashing").Config().set_ignored_paths(paths=[directory / SIGNATURE_FILE])


def sign(directory: Path, private_key: Path) -> Path:
    """Sign a version directory with an elliptic-curve private key (PEM): `<directory>/model.sig`."""
    signing = _package("signing")
    signature = directory / SIGNATURE_FILE
    config = signing.Config().use_elliptic_key_signer(private_key=private_key)
    config.set_hashing_config(_hashing(directory)).sign(directory, signature)
    return signature


def verify(entry: ModelEntry, keys: Sequence[Path]) -> None:
    """Nothing when no key is trusted; else ModelRepositoryError, in one sentence, unless a trusted key signed it."""
    if not keys:
        return
    signature = entry.directory / SIGNATURE_FILE
    if not signature.is_file():
        raise ModelRepositoryError(
            f"{entry.directory}: unsigned ({SIGNATURE_FILE} is missing), "
            "and TINYSERVE_TRUSTED_KEYS asks for a signature"
        )
    verifying = _package("verifying")
    reasons = []
    for key in keys:
        try:
            config = verifying.Config().use_elliptic_key_verifier(public_key=key)
            config.set_hashing_config(_hashing(entry.directory)).verify(entry.directory, signature)
            return
        except Exception as e:  # the package raises ValueError and others: any is "not by this key"
            reasons.append(f"{key.name}: {_reason(e)}")
    raise ModelRepositoryError(
        f"{entry.directory}: not signed by a trusted key (TINYSERVE_TRUSTED_KEYS): {'; '.join(reasons)}"
    )


def _reason(error: Exception) -> str:
    """model_signing's message, in a line: a hash mismatch names the file, not the two digests' bytes."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return _HASH_MISMATCH.sub(r"\1 differs from the signed file", text)


_HASH_MISMATCH = re.compile(r"""\["Hash mismatch for '([^']+)'.*""")
