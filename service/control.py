"""Models that change while the server runs: the served state every worker follows, and the calls that move it.

The state (which versions of each model are served, the policy that chose them, the last failed load) is one
small JSON file in a directory the workers share (TINYSERVE_CONTROL_DIR; service.served_state). A writer
holds a file lock and replaces the file whole. Every worker watches it: it loads what is new (verified
against its card, warmed) beside what it serves, swaps its registry (copy on write: a request in flight
keeps the version it took), drops what left, and reports the generation it serves in `workers/<pid>.json`.
A load or unload call writes the state and answers once every worker reports it, or names the workers
that do not. A worker that starts later (a restart) loads the state as it is then. Transport-neutral: the
HTTP routes (service.repository_api) and any other front door call `Controller` and map its typed errors.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

import modelrepo
import provenance
from modelrepo import ModelEntry, ModelRepositoryError, VersionPolicy, version_key
from service import metrics
from service.dataplane import Batching, load_model
from service.errors import InvalidInput, ModelNotFound, ServingError, echo
from service.registry import Registry
from service.runtime import Runtime, StartRefused
from service.served_state import Report, SharedFiles, State, check, identity, initial, scan
from service.settings import Settings

logger = logging.getLogger("bentoml.tinyserve")
WATCH_S = 0.1  # how often a worker looks at the state file: one stat of a small file
CONVERGE_POLL_S = 0.05


class ControlRefused(ServingError):
    """The call is not allowed in this mode (model control none, or poll for unload)."""

    status = 409


class LoadFailed(ServingError):
    """The version(s) asked for cannot serve: the sentence says why; what was served keeps serving."""

    status = 400


class NotConverged(ServingError):
    """Not every worker serves the new state within TINYSERVE_CONTROL_WAIT_SECONDS."""

    status = 503


class Controller:
    """One worker's side: its registry follows the shared state; the calls that move the state run here too."""

    def __init__(self, settings: Settings, runtime: Runtime, batching: Batching, registry: Registry) -> None:
        self.mode = settings.model_control
        self.root = settings.models_dir
        self.poll_seconds = settings.poll_seconds
        self.wait_seconds = settings.control_wait_seconds
        self.runtime, self.batching, self.registry = runtime, batching, registry
        self.workers = runtime.shape.workers
        self.keys = provenance.trusted_keys(settings.trusted_keys)
        self._directory = settings.control_dir
        self._files: SharedFiles | None = None
        self.state = State()
        self.pid = os.getpid()
        self._following = asyncio.Lock()
        self._checked: dict[tuple[str, str, str], str] = {}  # (directory, sha256, mtime) -> "" or why it failed
        self._task: asyncio.Task[None] | None = None

    @property
    def files(self) -> SharedFiles:
        """The shared directory, made on first use (never with model control none)."""
        if self._files is None:
            self._files = SharedFiles(self._directory or Path(tempfile.mkdtemp(prefix="tinyserve-control-")))
        return self._files

    # -- start-up
    def start(self, entries: list[ModelEntry]) -> None:
        """Load the current state (a fresh server: the start-up entries, as each model's policy picks them)."""
        by_key = {(e.name, e.version): e for e in entries}
        if self.mode == "none":  # as always: what the start-up checked, and a worker that cannot load it fails
            self.state = initial(self.root, entries)
            for key in sorted(self.state.wanted()):
                self.registry.put(load_model(by_key[key], self.runtime, self.batching))
            return
        with self.files.lock():
            state = self.files.read()
            if state is None:
                state = initial(self.root, entries)
                self.files.write(state)
        current = scan(self.root)
        failures: dict[str, str] = {}
        for name, version in sorted(state.wanted()):
            entry = by_key.get((name, version)) or current.get(name, {}).get(version)
            try:
                if not isinstance(entry, ModelEntry):
                    raise ModelRepositoryError(entry or f"{self.root / name / version}: not in the repository")
                self.registry.put(load_model(entry, self.runtime, self.batching))  # verified, warmed
            except (ModelRepositoryError, StartRefused) as e:
                failures[f"{name}/{version}"] = str(e)
                logger.error("not serving %s/%s: %s", name, version, e)
        self.state = state
        self._report(failures)

    def watch(self) -> None:
        """Follow the state from now on (on the worker's event loop), when the repository may change."""
        if self.mode != "none":
            self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        stamp = self.files.stamp()
        # Followed once before any change: a state written between start()'s read and this stamp never looks
        # changed, and the worker (started with the server, or restarted) served the old one until the next.
        changed = True
        next_scan = time.monotonic() + self.poll_seconds
        while True:
            try:
                if self.mode == "poll" and time.monotonic() >= next_scan:
                    await anyio.to_thread.run_sync(self._rescan)
                    next_scan = time.monotonic() + self.poll_seconds
                if (now := self.files.stamp()) != stamp:
                    stamp, changed = now, True
                if changed:
                    changed = False
                    await self.follow()
            except Exception:  # a bad moment on the shared directory must not stop the worker following
                logger.exception("following the model repository state")
            await asyncio.sleep(WATCH_S)

    # -- applying the state
    async def follow(self) -> None:
        """Serve what the state file says, if it is newer than what this worker serves."""
        async with self._following:
            state = self.files.read()
            if state is None or state.generation <= self.state.generation:
                return
            current = await anyio.to_thread.run_sync(scan, self.root)
            failures: dict[str, str] = {}
            for name, version in sorted(state.wanted() - self._served()):
                entry = current.get(name, {}).get(version, f"{self.root / name / version}: not in the repository")
                try:
                    if isinstance(entry, str):
                        raise ModelRepositoryError(entry)
                    model = await anyio.to_thread.run_sync(load_model, entry, self.runtime, self.batching)
                except Exception as e:  # any failure of one version: the served ones keep serving
                    failures[f"{name}/{version}"] = str(e)
                    logger.error("not serving %s/%s: %s", name, version, e)
                    continue
                self.registry.put(model)  # the new version takes traffic from the next request on
            failed = {key.split("/")[0] for key in failures}  # such a model keeps what it serves, all of it
            for name, version in sorted(self._served() - state.wanted()):
                if name in failed:
                    continue
                # Dropped, not closed: a request that took this version before the swap still finishes on it,
                # and the session is freed with the last reference to it.
                self.registry.remove(name, version)
                metrics.forget(name, version)
                logger.info("unloaded %s/%s", name, version)
            self.state = state
            self._report(failures)

    def _served(self) -> set[tuple[str, str]]:
        return {(m.name, m.version) for m in self.registry.models()}

    def _report(self, failures: dict[str, str]) -> None:
        served = {name: self.registry.versions(name) for name in self.registry.names()}
        self.files.report(Report(self.pid, self.state.generation, served, failures))

    # -- deciding a new state (under the file lock, on a thread)
    def _rescan(self) -> None:
        """Poll mode: the repository decides; a new version serves once it passes the preflight."""
        with self.files.lock():
            state = self.files.read() or State()
            found = scan(self.root)
            if not found:  # an unmounted or unreadable volume looks empty: never unload everything for it
                logger.error("%s: the repository is empty or unreadable; serving what serves", self.root)
                return
            models: dict[str, list[str]] = {}
            policies: dict[str, dict[str, Any]] = {}
            failures: dict[str, str] = {}  # each scan says afresh what fails
            for name in sorted(found):
                try:
                    policy = modelrepo.read_policy(self.root, name)
                    versions = self._passing(found[name], policy.select(list(found[name])), name, failures)
                except ModelRepositoryError as e:
                    failures[name] = str(e)
                if name in failures:  # as a failed load: what serves keeps serving, as it was chosen
                    versions = state.models.get(name, [])
                    policy = VersionPolicy.from_dict(state.policies.get(name, {"all": {}}), name)
                if versions:
                    models[name], policies[name] = versions, policy.to_dict()
            if (models, policies, failures) != (state.models, state.policies, state.failures):
                self.files.write(state.moved(models=models, policies=policies, failures=failures))

    def _passing(
        self, found: dict[str, ModelEntry | str], chosen: list[str], name: str, failures: dict[str, str]
    ) -> list[str]:
        """The chosen versions that pass the preflight (each file checked once); a failure noted per model."""
        passing = []
        for version in chosen:
            entry = found[version]
            key = identity(entry)
            if key not in self._checked:
                try:
                    check(entry, self.runtime, self.keys)
                    self._checked[key] = ""
                except (ModelRepositoryError, StartRefused) as e:
                    self._checked[key] = f"version {version} of '{name}' was not loaded: {e}"
                    logger.error("%s", self._checked[key])
            if self._checked[key]:
                failures[name] = self._checked[key]
            else:
                passing.append(version)
        return passing

    def _decide_load(self, name: str, override: VersionPolicy | None) -> int:
        with self.files.lock():
            state = self.files.read() or State()
            found = scan(self.root).get(name)
            if not found:
                known = ", ".join(sorted(scan(self.root))) or "none"
                raise ModelNotFound(f"unknown model {echo(name)}: the repository has {known}")
            try:
                policy = override or modelrepo.read_policy(self.root, name)
            except ModelRepositoryError as e:
                return self._fail(state, name, str(e))
            chosen = policy.select(list(found))
            if not chosen:
                have = ", ".join(sorted(found, key=version_key))
                return self._fail(state, name, f"the version policy {policy.to_dict()} selects none of {have}")
            for version in chosen:
                try:
                    check(found[version], self.runtime, self.keys)
                except (ModelRepositoryError, StartRefused) as e:
                    served = ", ".join(state.models.get(name, [])) or "none"
                    return self._fail(state, name, f"version {version} was not loaded: {e}; serving {served}")
            failures = {k: v for k, v in state.failures.items() if k != name}
            moved = state.moved(
                models=state.models | {name: chosen},
                policies=state.policies | {name: policy.to_dict()},
                failures=failures,
            )
            self.files.write(moved)
            return moved.generation

    def _fail(self, state: State, name: str, reason: str) -> int:
        sentence = f"failed to load '{name}': {reason}"
        logger.error("%s", sentence)
        moved = state.moved(failures=state.failures | {name: sentence})
        self.files.write(moved)
        return -moved.generation  # negative: the generation that records a failure

    def _decide_unload(self, name: str, version: str | None) -> int:
        with self.files.lock():
            state = self.files.read() or State()
            served = state.models.get(name)
            if not served:
                known = ", ".join(sorted(state.models)) or "none"
                raise ModelNotFound(f"model {echo(name)} is not loaded: the loaded models are {known}")
            if version is not None and version not in served:
                raise ModelNotFound(
                    f"version {echo(version)} of '{name}' is not loaded: the loaded versions are {', '.join(served)}"
                )
            remaining = [v for v in served if v != version] if version is not None else []
            models = {k: v for k, v in state.models.items() if k != name} | ({name: remaining} if remaining else {})
            moved = state.moved(models=models)
            self.files.write(moved)
            return moved.generation

    # -- the calls
    async def load(self, name: str, override: VersionPolicy | None = None) -> dict[str, Any]:
        """Serve `name` as its version policy (or `override`) says, on every worker; LoadFailed says why not."""
        if self.mode != "explicit":
            raise ControlRefused(_refusal(self.mode, "load"))
        before = self.files.read() or State()
        generation = await anyio.to_thread.run_sync(self._decide_load, name, override)
        reports = await self._converge(abs(generation))
        if generation < 0:
            raise LoadFailed(self.state.failures[name])
        failed = [
            f"worker {r.pid}: {why}" for r in reports for key, why in r.failures.items() if key.startswith(f"{name}/")
        ]
        if failed:  # passed the preflight, failed in a worker (its session): every worker back to what it served
            sentence = f"failed to load '{name}': {'; '.join(failed)}"
            await self._converge(await anyio.to_thread.run_sync(self._restore, before, name, sentence))
            raise LoadFailed(sentence)
        return _answer(abs(generation), reports)

    def _restore(self, before: State, name: str, sentence: str) -> int:
        """The model's versions and policy as they were before a load, and the load's failure."""
        logger.error("%s", sentence)
        with self.files.lock():
            state = self.files.read() or State()
            models = {k: v for k, v in state.models.items() if k != name}
            if name in before.models:
                models[name] = before.models[name]
            policies = state.policies | ({name: before.policies[name]} if name in before.policies else {})
            moved = state.moved(models=models, policies=policies, failures=state.failures | {name: sentence})
            self.files.write(moved)
            return moved.generation

    async def unload(self, name: str, version: str | None = None) -> dict[str, Any]:
        """Stop serving `name` (or one version of it) on every worker."""
        if self.mode != "explicit":
            raise ControlRefused(_refusal(self.mode, "unload"))
        generation = await anyio.to_thread.run_sync(self._decide_unload, name, version)
        return _answer(generation, await self._converge(generation))

    async def _converge(self, generation: int) -> list[Report]:
        """Wait until every worker reports `generation` (this one first), or say which do not."""
        await self.follow()
        deadline = time.monotonic() + self.wait_seconds
        while True:
            reports = self.files.reports()
            done = [r for r in reports if r.generation >= generation]
            if len(done) >= self.workers:
                return done
            if time.monotonic() > deadline:
                behind = ", ".join(f"worker {r.pid} serves generation {r.generation}" for r in reports if r not in done)
                behind = behind or "the others have not reported"
                raise NotConverged(
                    f"{len(done)} of {self.workers} workers serve generation {generation} after "
                    f"{self.wait_seconds:g} s (TINYSERVE_CONTROL_WAIT_SECONDS); {behind}"
                )
            await asyncio.sleep(CONVERGE_POLL_S)

    def index(self, ready: bool = False) -> list[dict[str, str]]:
        """Triton's repository index: every version in the repository or served, READY or UNAVAILABLE, and why."""
        found = scan(self.root)
        served = self._served()
        keys = {(n, v) for n, versions in found.items() for v in versions} | served
        rows = []
        for name, version in sorted(keys, key=lambda k: (k[0], version_key(k[1]))):
            state = "READY" if (name, version) in served else "UNAVAILABLE"
            entry = found.get(name, {}).get(version)
            failure = self.state.failures.get(name, "")
            reason = entry if isinstance(entry, str) else "" if state == "READY" else "unloaded"
            if state != "READY" and f"version {version} " in failure:  # the sentence of its failed load
                reason = failure
            if not ready or state == "READY":
                rows.append({"name": name, "version": version, "state": state, "reason": reason})
        return rows

    def describe(self, name: str) -> dict[str, Any]:
        """What the model metadata adds: the version policy in force, and the last failed load, if any."""
        described: dict[str, Any] = {"version_policy": self.state.policies.get(name, VersionPolicy().to_dict())}
        if name in self.state.failures:
            described["load_failure"] = self.state.failures[name]
        return described


def _refusal(mode: str, call: str) -> str:
    if mode == "poll":
        return f"model {call} is not allowed with TINYSERVE_MODEL_CONTROL=poll: the repository decides what is served"
    return f"model {call} needs TINYSERVE_MODEL_CONTROL=explicit; this server reads its repository once (none)"


def _answer(generation: int, reports: list[Report]) -> dict[str, Any]:
    return {"generation": generation, "workers": [{"pid": r.pid, "served": r.served} for r in reports]}


def parse_policy(config: Any) -> VersionPolicy | None:
    """A load call's `parameters.config` (Triton's: a JSON string of the model config): only version_policy."""
    if config is None:
        return None
    try:
        data = json.loads(config) if isinstance(config, str) else config
    except json.JSONDecodeError as e:
        raise InvalidInput(f"parameters.config is not valid JSON: {e}") from None
    if not isinstance(data, dict) or set(data) - {"version_policy", "name"}:
        raise InvalidInput(
            'parameters.config may set only "version_policy", e.g. {"version_policy": {"latest": {"num_versions": 1}}}'
        )
    try:
        return VersionPolicy.from_dict(data.get("version_policy", {"all": {}}), "parameters.config")
    except ModelRepositoryError as e:
        raise InvalidInput(str(e)) from None
