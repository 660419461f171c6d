"""Triton's repository extension in process: load, unload, index, failures and policies on a real repository.

The front doors and the guard over a data plane and its controller, in this process (BentoML's service is
made once per process: the real servers, with several workers, are tests/test_control.py's).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest
from starlette.testclient import TestClient

import modelrepo
import provenance
from benchmarks.repository import keypair, publish, repository, set_policy
from service import repository_api, served_state, v2
from service.control import Controller
from service.dataplane import Batching, DataPlane
from service.lifecycle import Lifecycle
from service.machine import Shape
from service.middleware import GuardMiddleware
from service.registry import Registry
from service.runtime import Runtime, start_up
from service.settings import Settings
from tests.fast.conftest import RUNTIME

pytestmark = pytest.mark.timeout(120)
X = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return repository(tmp_path / "models", "linear", "blobs")


def serve(root: Path, token: str | None = None, runtime: Runtime = RUNTIME, **settings: object) -> TestClient:
    """V2 and the repository routes behind the guard, over a controller that loaded `root` as a worker does."""
    chosen = Settings.model_validate({"models_dir": root, "control_dir": root.parent / "control"} | settings)
    registry = Registry()
    control = Controller(chosen, runtime, Batching(), registry)
    control.start(modelrepo.discover(root))
    plane = DataPlane(registry, runtime, Lifecycle(), control)
    app = v2.create(lambda: plane)
    app.include_router(repository_api.create(lambda: plane).router)
    guarded = GuardMiddleware(app, max_body_bytes=1 << 20, max_concurrency=64, lifecycle=Lifecycle(), api_token=token)
    return TestClient(guarded)


@pytest.fixture
def explicit(root: Path) -> Iterator[TestClient]:
    with serve(root, model_control="explicit") as c:
        yield c


def _version(client: TestClient, path: str = "/v2/models/linear/infer") -> str:
    r = client.post(path, json=X)
    assert r.status_code == 200, r.text
    return str(r.json()["model_version"])


def test_load_serves_a_published_version_and_unload_rolls_back(explicit: TestClient, root: Path) -> None:
    assert publish(root, "linear") == "2"
    assert _version(explicit) == "1"  # published is not served: explicit mode waits for the call
    r = explicit.post("/v2/repository/models/linear/load", json={})
    assert r.status_code == 200, r.text
    assert r.json()["workers"][0]["served"]["linear"] == ["1", "2"]
    assert _version(explicit) == "2"  # the default route moves to the newest
    assert explicit.get("/v2/models/linear").json()["versions"] == ["1", "2"]
    r = explicit.post("/v2/repository/models/linear/unload", json={"parameters": {"version": "2"}})
    assert r.status_code == 200, r.text
    assert _version(explicit) == "1"
    r = explicit.post("/v2/models/linear/versions/2/infer", json=X)
    assert r.status_code == 404
    assert r.json()["error"] == "unknown version '2' of model 'linear': available versions are 1"


def test_index_says_what_is_served_and_what_is_not(explicit: TestClient, root: Path) -> None:
    publish(root, "linear")
    r = explicit.post("/v2/repository/index")
    assert r.status_code == 200
    assert r.json() == [
        {"name": "blobs", "version": "1", "state": "READY", "reason": ""},
        {"name": "linear", "version": "1", "state": "READY", "reason": ""},
        {"name": "linear", "version": "2", "state": "UNAVAILABLE", "reason": "unloaded"},
    ]
    assert len(explicit.post("/v2/repository/index", json={"ready": True}).json()) == 2


def test_a_corrupted_version_is_refused_and_the_served_one_keeps_serving(
    explicit: TestClient, root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    publish(root, "linear", corrupt=True)
    r = explicit.post("/v2/repository/models/linear/load", json={})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error.startswith("failed to load 'linear': version 2 was not loaded: ")
    assert "sha256 mismatch" in error and error.endswith("; serving 1")
    assert _version(explicit) == "1"
    assert explicit.get("/v2/models/linear").json()["load_failure"] == error
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [error]
    assert explicit.post("/v2/repository/index").json()[-1] == {
        "name": "linear",
        "version": "2",
        "state": "UNAVAILABLE",
        "reason": error,
    }


def test_a_policy_override_in_the_load_call_picks_the_versions(explicit: TestClient, root: Path) -> None:
    publish(root, "linear")
    config = '{"version_policy": {"latest": {"num_versions": 1}}}'
    r = explicit.post("/v2/repository/models/linear/load", json={"parameters": {"config": config}})
    assert r.status_code == 200, r.text
    metadata = explicit.get("/v2/models/linear").json()
    assert (metadata["versions"], metadata["version_policy"]) == (["2"], {"latest": {"num_versions": 1}})
    assert explicit.post("/v2/models/linear/versions/1/infer", json=X).status_code == 404


def test_the_repository_config_policy_applies_at_load(explicit: TestClient, root: Path) -> None:
    publish(root, "linear")
    publish(root, "linear")
    set_policy(root, "linear", {"specific": {"versions": [1, 3]}})
    assert explicit.post("/v2/repository/models/linear/load").status_code == 200
    assert explicit.get("/v2/models/linear").json()["versions"] == ["1", "3"]


def test_unload_of_a_whole_model_then_load_again(explicit: TestClient) -> None:
    assert explicit.post("/v2/repository/models/blobs/unload", json={}).status_code == 200
    r = explicit.get("/v2/models/blobs")
    assert r.status_code == 404
    assert r.json()["error"] == "unknown model 'blobs': expected one of linear"
    r = explicit.post("/v2/repository/models/blobs/unload", json={})
    assert (r.status_code, r.json()["error"]) == (404, "model 'blobs' is not loaded: the loaded models are linear")
    assert explicit.post("/v2/repository/models/blobs/load", json={}).status_code == 200
    assert explicit.get("/v2/models/blobs").status_code == 200


def test_load_of_an_unknown_model_names_the_repository(explicit: TestClient) -> None:
    r = explicit.post("/v2/repository/models/nope/load", json={})
    assert (r.status_code, r.json()["error"]) == (404, "unknown model 'nope': the repository has blobs, linear")


def test_load_refuses_parameters_it_does_not_take(explicit: TestClient) -> None:
    r = explicit.post("/v2/repository/models/linear/load", json={"parameters": {"file:1/model.onnx": "AAAA"}})
    assert r.status_code == 400
    assert r.json()["error"] == (
        "unsupported load parameters 'file:1/model.onnx': only 'config' (a version_policy) is taken; "
        "model files come from the repository"
    )


def test_load_is_refused_without_model_control(root: Path) -> None:
    with serve(root) as client:
        r = client.post("/v2/repository/models/linear/load", json={})
        assert r.status_code == 409
        assert r.json()["error"] == (
            "model load needs TINYSERVE_MODEL_CONTROL=explicit; this server reads its repository once (none)"
        )
        assert client.post("/v2/repository/index").status_code == 200


def test_the_repository_calls_need_the_token(root: Path) -> None:
    with serve(root, "s3cret", model_control="explicit") as client:
        assert client.post("/v2/repository/models/linear/load", json={}).status_code == 401
        headers = {"Authorization": "Bearer s3cret"}
        assert client.post("/v2/repository/models/linear/load", json={}, headers=headers).status_code == 200


def test_with_trusted_keys_only_a_version_signed_by_one_serves(root: Path, tmp_path: Path) -> None:
    (trusted, public), (stranger, _) = keypair(tmp_path, "trusted"), keypair(tmp_path, "stranger")
    provenance.sign(root / "linear" / "1", trusted)
    with serve(root, model_control="explicit", trusted_keys=str(public)) as client:
        publish(root, "linear", signing_key=trusted)
        assert client.post("/v2/repository/models/linear/load", json={}).status_code == 200
        publish(root, "linear")
        r = client.post("/v2/repository/models/linear/load", json={})
        assert r.status_code == 400
        assert r.json()["error"] == (
            f"failed to load 'linear': version 3 was not loaded: {root / 'linear' / '3'}: unsigned (model.sig is "
            "missing), and TINYSERVE_TRUSTED_KEYS asks for a signature; serving 1, 2"
        )
        shutil.rmtree(root / "linear" / "3")  # as an operator would take it away
        publish(root, "linear", signing_key=stranger)
        error = client.post("/v2/repository/models/linear/load", json={}).json()["error"]
        assert error.startswith(
            f"failed to load 'linear': version 3 was not loaded: {root / 'linear' / '3'}: not signed by a trusted "
            "key (TINYSERVE_TRUSTED_KEYS): trusted.pub: Key mismatch: "
        )
        assert _version(client) == "2"


def test_a_load_that_not_every_worker_reaches_says_so(root: Path) -> None:
    two = Runtime(RUNTIME.cores, Shape(2, 1, spinning=False), RUNTIME.provider, {})  # the second never starts
    publish(root, "linear")
    with serve(root, runtime=two, model_control="explicit", control_wait_seconds=0.2) as client:
        r = client.post("/v2/repository/models/linear/load", json={})
        assert (r.status_code, r.json()["error"]) == (
            503,
            "1 of 2 workers serve generation 2 after 0.2 s (TINYSERVE_CONTROL_WAIT_SECONDS); "
            "the others have not reported",
        )
        assert _version(client) == "2"  # this worker moved on: the answer says the fleet did not


def test_a_version_that_fails_in_the_worker_leaves_every_worker_as_it_was(explicit: TestClient, root: Path) -> None:
    version = publish(root, "linear")
    card = modelrepo.read_card(root / "linear" / version)
    renamed = dataclasses.replace(card.inputs[0], name="z")  # the file's input is x: its session refuses the card
    modelrepo.write_card(dataclasses.replace(card, inputs=(renamed,)), root / "linear" / version)
    config = '{"version_policy": {"latest": {"num_versions": 1}}}'
    r = explicit.post("/v2/repository/models/linear/load", json={"parameters": {"config": config}})
    assert r.status_code == 400
    assert r.json()["error"].startswith("failed to load 'linear': worker ")
    assert "the file's inputs [('x', 'FP32', 2)] do not match the card's [('z', 'FP32', 2)]" in r.json()["error"]
    metadata = explicit.get("/v2/models/linear").json()
    assert (metadata["versions"], metadata["version_policy"]) == (["1"], {"all": {}})
    assert _version(explicit) == "1"


def test_the_start_checks_the_versions_the_policy_serves(root: Path) -> None:
    publish(root, "linear", corrupt=True)
    settings = Settings(models_dir=root, workers=1, threads=1)
    with pytest.raises(SystemExit):  # every version serves: the corrupted one refuses the start
        start_up(settings, serving=False)
    set_policy(root, "linear", {"specific": {"versions": [1]}})
    start = start_up(settings, serving=False)  # version 2 neither serves nor is checked
    assert [(e.name, e.version) for e in start.entries] == [("blobs", "1"), ("linear", "1")]


def test_a_reader_listing_the_reports_never_opens_one_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = served_state.SharedFiles(tmp_path)
    files.report(served_state.Report(pid=os.getpid(), generation=1, served={"linear": ["1"]}, failures={}))
    seen: list[dict[str, object]] = []
    dump = json.dump

    def dump_while_a_reader_lists(data: object, f: TextIO) -> None:  # the temporary file exists, still empty
        seen.extend(json.loads(path.read_text()) for path in files.workers.glob("*.json"))
        dump(data, f)

    monkeypatch.setattr(served_state.json, "dump", dump_while_a_reader_lists)
    files.report(served_state.Report(pid=os.getpid(), generation=2, served={"linear": ["2"]}, failures={}))
    assert [report["generation"] for report in seen] == [1]  # the old report, whole; never the one being written
    assert [report.generation for report in files.reports()] == [2]
    assert sorted(path.name for path in files.workers.iterdir()) == [f"{os.getpid()}.json"]  # no temporary file left


def test_a_worker_that_starts_while_another_moves_the_state_follows_it(root: Path) -> None:
    """The state written between a worker's start and the first look of its watch never looks changed: the worker
    has to follow it at once (it served the old state until the next change, in a test of poll mode for 2 min)."""
    control = {"models_dir": root, "control_dir": root.parent / "control", "model_control": "explicit"}
    settings = Settings.model_validate(control)
    first, second = (Controller(settings, RUNTIME, Batching(), Registry()) for _ in range(2))
    first.start(modelrepo.discover(root))
    second.start(modelrepo.discover(root))  # reads generation 1
    version = publish(root, "linear")
    with first.files.lock():  # the first worker moves the state before the second one watches
        first.files.write(first.state.moved(models=first.state.models | {"linear": [version]}))

    async def watched() -> list[str]:
        second.watch()
        for _ in range(300):  # the watch looks every 0.1 s
            if second.registry.versions("linear") == [version]:
                break
            await asyncio.sleep(0.05)
        assert second._task is not None
        second._task.cancel()
        return second.registry.versions("linear")

    assert asyncio.run(watched()) == [version]
