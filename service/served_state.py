"""The served state the workers share, on files: what is served, each worker's report, the repository as found.

`state.json` (which versions of each model serve, the policy that chose them, the last failed load) is
replaced whole under a file lock; `workers/<pid>.json` is each worker's word on the generation it serves.
Every write is a temporary file and one rename: a reader sees the old file or the new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import modelrepo
import provenance
from modelrepo import ModelEntry, ModelRepositoryError
from service import cuda
from service.runtime import CUDA, Runtime, StartRefused

STATE_FILE = "state.json"


@dataclass(frozen=True)
class State:
    """What every worker serves: generation n, the versions per model, how they were chosen, the last failure."""

    generation: int = 0
    models: dict[str, list[str]] = field(default_factory=dict)
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def wanted(self) -> set[tuple[str, str]]:
        return {(name, version) for name, versions in self.models.items() for version in versions}

    def moved(self, **changes: Any) -> State:
        return State(**(asdict(self) | changes | {"generation": self.generation + 1}))


@dataclass(frozen=True)
class Report:
    """One worker's word: the generation it has applied and what it serves."""

    pid: int
    generation: int
    served: dict[str, list[str]]
    failures: dict[str, str]


class SharedFiles:
    """The control directory: state.json (the state), lock, workers/<pid>.json (each worker's report)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.workers = directory / "workers"
        self.workers.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        with (self.directory / "lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the handle closes
            yield

    def read(self) -> State | None:
        try:
            return State(**json.loads((self.directory / STATE_FILE).read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None

    def stamp(self) -> tuple[int, int]:
        """Changes whenever the state is replaced (a new inode each time)."""
        try:
            stat = (self.directory / STATE_FILE).stat()
        except FileNotFoundError:
            return (0, 0)
        return (stat.st_ino, stat.st_mtime_ns)

    def write(self, state: State) -> None:
        _replace(self.directory / STATE_FILE, asdict(state))

    def report(self, report: Report) -> None:
        _replace(self.workers / f"{report.pid}.json", asdict(report))

    def reports(self) -> list[Report]:
        """The reports of the workers alive now; a dead worker's report is removed."""
        found = []
        for path in sorted(self.workers.glob("*.json")):
            with contextlib.suppress(FileNotFoundError, ValueError):
                report = Report(**json.loads(path.read_text(encoding="utf-8")))
                if _alive(report.pid):
                    found.append(report)
                else:
                    path.unlink(missing_ok=True)
        return found


def _replace(path: Path, data: dict[str, Any]) -> None:
    """Write whole or not at all: a temporary file beside it, then one rename. The temporary file's name does
    not end in `.json`, so a reader listing `*.json` (pathlib's glob matches dot files) never opens it half
    written."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as f:
        try:
            json.dump(data, f)
        except BaseException:
            f.close()
            os.unlink(f.name)
            raise
    os.replace(f.name, path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def scan(root: Path) -> dict[str, dict[str, ModelEntry | str]]:
    """Every version in the repository, by name: its entry, or the sentence saying why its card is unusable."""
    found: dict[str, dict[str, ModelEntry | str]] = {}
    for directory in sorted(p for p in root.glob("*/*") if p.is_dir() and not p.parent.name.startswith(".")):
        name, version = directory.parent.name, directory.name
        try:
            card = modelrepo.read_card(directory)
            if (card.name, card.version) != (name, version):
                raise ModelRepositoryError(f"{directory}: its card names {card.name}/{card.version}")
            found.setdefault(name, {})[version] = ModelEntry(card, directory)
        except ModelRepositoryError as e:
            found.setdefault(name, {})[version] = str(e)
    return found


def check(entry: ModelEntry | str, runtime: Runtime, keys: list[Path]) -> None:
    """The start-up preflight for one version: sha256 against its card, signed by a trusted key (when keys are
    set), a kind of model, CUDA proven by a probe."""
    if isinstance(entry, str):
        raise ModelRepositoryError(entry)
    modelrepo.verify(entry)
    provenance.verify(entry, keys)
    _ = entry.card.kind
    if runtime.provider == CUDA:
        result = cuda.probe([entry.model_path], runtime.provider_options)
        if not result.ok:
            raise StartRefused(f"{entry.model_path}: CUDA cannot run it: {result.reason}")


def initial(root: Path, entries: list[ModelEntry]) -> State:
    """A fresh server's state: each model's start-up versions as its policy picks them."""
    models: dict[str, list[str]] = {}
    policies: dict[str, dict[str, Any]] = {}
    for name in sorted({e.name for e in entries}):
        policy = modelrepo.read_policy(root, name)
        models[name] = policy.select([e.version for e in entries if e.name == name])
        policies[name] = policy.to_dict()
    return State(1, {k: v for k, v in models.items() if v}, policies)


def identity(entry: ModelEntry | str) -> tuple[str, str, str]:
    if isinstance(entry, str):
        return (entry, "", "")
    with contextlib.suppress(FileNotFoundError):
        return (str(entry.directory), entry.card.sha256, str(entry.model_path.stat().st_mtime_ns))
    return (str(entry.directory), entry.card.sha256, "missing")
