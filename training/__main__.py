"""`python -m training [names...]`: train, export and verify the served models.

Examples: `python -m training` (all four, into the repository's models/); `python -m training lenet
--quick` (a smoke run: LeNet trains 2 epochs, into a new temporary directory unless --out names one);
`python -m training lenet --data mnist:DIR --out /tmp/models`; `python -m training lenet --publish
--repository /srv/models` (the next version, into a repository a server follows: see TINYSERVE_MODEL_CONTROL).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import modelrepo
import provenance
from training import recipes
from training.common import export, seed_everything

SERVED_REPOSITORY = Path(__file__).resolve().parents[1] / "models"  # what `make serve` serves


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train the tinyserve models, export them to ONNX and write their cards.",
    )
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"models to train, any of {', '.join(recipes.NAMES)} (default: all)",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: each model's pinned seed)")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs (default: the recipe's)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="model repository to write into (default: the served models/; with --quick, a new temporary directory)",
    )
    parser.add_argument("--version", default="1", help="version directory to write (default: 1)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: LeNet trains 2 epochs, bars are not checked, models/ is left alone unless --out names it",
    )
    parser.add_argument(
        "--data",
        default="digits",
        help="LeNet training data: 'digits' (scikit-learn) or 'mnist:DIR' (IDX files) (default: digits)",
    )
    parser.add_argument(
        "--publish",
        action="store_true",
        help="write the next version (highest + 1) into --repository, whole or not at all (a temporary "
        "directory there, then one rename), for a server that follows the repository",
    )
    parser.add_argument(
        "--repository",
        type=Path,
        default=SERVED_REPOSITORY,
        help="with --publish: the model repository to publish into (default: the served models/)",
    )
    parser.add_argument(
        "--signing-key",
        type=Path,
        default=None,
        help="with --publish: sign each published version with this elliptic-curve private key (PEM), OpenSSF "
        "model signing into <version>/model.sig, for servers with TINYSERVE_TRUSTED_KEYS (default: unsigned)",
    )
    args = parser.parse_args(argv)
    if args.signing_key is not None and not args.publish:
        parser.error("--signing-key signs what --publish publishes: add --publish")
    if args.publish and (args.out is not None or args.version != "1"):
        parser.error("--publish picks the version and the directory itself: drop --out and --version")
    unknown = [n for n in args.names if n not in recipes.SPECS]
    if unknown:
        parser.error(f"unknown model {', '.join(unknown)}: expected any of {', '.join(recipes.NAMES)}")
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="tinyserve-quick-")) if args.quick else SERVED_REPOSITORY
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    failures = 0
    for name in args.names or recipes.NAMES:
        spec = recipes.SPECS[name]
        recipe = spec.quick() if args.quick else spec.recipe()
        if args.epochs is not None:
            recipe = dataclasses.replace(recipe, epochs=args.epochs)
        if name == "lenet":
            recipe = dataclasses.replace(recipe, data=args.data)
        seed = spec.seed if args.seed is None else args.seed
        started = time.perf_counter()
        seed_everything(seed)
        out, version = args.out, args.version
        if args.publish:
            out, version = _staging(args.repository), modelrepo.next_version(args.repository, name)
        trained = spec.train(seed, recipe, out / name / version)
        seconds = time.perf_counter() - started
        entry = export(trained, out, version)
        missed = [] if args.quick else spec.missed_bars(entry.card.metrics)
        failures += bool(missed)
        verdict = (
            "quick run, bars not checked"
            if args.quick
            else ("MISSED " + "; ".join(missed) if missed else "meets its bar")
        )
        if args.publish and not missed and args.signing_key is not None:
            provenance.sign(entry.directory, args.signing_key)  # before the rename: published means signed
        if args.publish and not missed:
            published = modelrepo.publish(entry.directory, args.repository, name, version)
            entry = modelrepo.ModelEntry(entry.card, published)
        if args.publish:
            shutil.rmtree(out)  # the staging directory: empty once published, the rejected version if it missed
        metrics = ", ".join(f"{k}={v:g}" for k, v in entry.card.metrics.items())
        print(f"{name:12s} {seconds:6.1f}s  {verdict}\n{'':12s} {metrics}\n{'':12s} -> {entry.model_path}")
    if args.quick and not args.publish and args.out.resolve() != SERVED_REPOSITORY:
        print(f"quick run: models written to {args.out} (the served {SERVED_REPOSITORY.name}/ is untouched)")
    return 1 if failures else 0


def _staging(repository: Path) -> Path:
    """A temporary directory inside the repository (one file system, so that publishing is one rename)."""
    repository.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=modelrepo.STAGING_PREFIX, dir=repository))


if __name__ == "__main__":
    sys.exit(main())
