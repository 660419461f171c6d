"""Models that change while real servers run: a roll under load, every worker converging, poll mode, publishing.

Two workers each; the repository and the shared control directory are real files under the test's tmp_path.
Waits are for events (a count of answers, a worker's report), each bounded by a count, never a timing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

import modelrepo
import provenance
from benchmarks.repository import keypair, publish, repository, set_policy
from modelrepo import ModelEntry
from tests.server import REPO, Server, refused_start, running

TWO_WORKERS = {"TINYSERVE_WORKERS": "2", "TINYSERVE_THREADS": "1"}
X = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}
CONCURRENCY = 32
PER_PHASE = 300  # answers that start in each phase of the roll
RSS_BOUND = 64 * 1024 * 1024  # the workers' RSS after a roll and its unload, over that before the roll


@pytest.fixture(scope="module")
def explicit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path, Path]]:
    base = tmp_path_factory.mktemp("explicit")
    root, control = repository(base / "models", "linear"), base / "control"
    env = TWO_WORKERS | {
        "TINYSERVE_MODELS_DIR": str(root),
        "TINYSERVE_MODEL_CONTROL": "explicit",
        "TINYSERVE_CONTROL_DIR": str(control),
    }
    with running(base / "server.log", env) as server:
        _reports(control, until=lambda reports: len(reports) == 2)
        yield server, root, control


def _reports(control: Path, until: object, attempts: int = 600) -> dict[int, dict[str, object]]:
    """The live workers' reports, once `until(reports)` holds (checked at most `attempts` times)."""
    for _ in range(attempts):
        reports = {}
        for path in (control / "workers").glob("*.json"):
            try:
                report = json.loads(path.read_text())
            except FileNotFoundError:  # a dead worker's report, removed by a live one since the listing
                continue
            if psutil.pid_exists(report["pid"]):
                reports[report["pid"]] = report
        if until(reports):  # type: ignore[operator]
            return reports
        time.sleep(0.2)
    raise AssertionError(f"the workers' reports never got there: {reports}")


class Hammer:
    """CONCURRENCY clients on the default route; each answer is kept with its client and its phase: even phases are
    steady (no call in progress), odd ones run from a call's start to its answer; a request that spans a change of
    phase counts for the odd phase it overlapped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.phase = 0
        self.answers: list[tuple[int, int, int, str]] = []  # (client, phase, status, version or error)
        self.changed = threading.Condition()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(i,)) for i in range(CONCURRENCY)]

    def _client(self, index: int) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:  # one connection: one worker
            while not self.stop.is_set():
                started = self.phase
                r = client.post("/v2/models/linear/infer", json=X)
                # A request counts for a steady (even) phase only if that phase held from before it was sent until
                # after it was answered: a thread that read the phase, then waited its turn through a whole load
                # call, sends its request in another phase than the one it read.
                phase = started if self.phase == started else started | 1
                answer = r.json()["model_version"] if r.status_code == 200 else r.text
                with self.changed:
                    self.answers.append((index, phase, r.status_code, answer))
                    self.changed.notify_all()

    def versions(self, *phases: int) -> set[str]:
        return {version for _, phase, _, version in self.answers if phase in phases}

    def wait_for(self, count: int) -> None:
        """Until `count` answers have come back that started in the current phase."""
        with self.changed:
            self.changed.wait_for(lambda: sum(1 for _, p, _, _ in self.answers if p == self.phase) >= count)

    def __enter__(self) -> Hammer:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


def _rss(control: Path) -> int:
    return sum(psutil.Process(pid).memory_info().rss for pid in _reports(control, until=lambda r: len(r) == 2))


def _tinyserve_series(url: str, version: str) -> list[str]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return [line for line in text.splitlines() if line.startswith("tinyserve_") and f'version="{version}"' in line]


@pytest.mark.timeout(600)
def test_a_roll_from_1_to_2_and_back_under_load_fails_no_request(explicit: tuple[Server, Path, Path]) -> None:
    server, root, control = explicit
    version = publish(root, "linear")
    with Hammer(server.url) as hammer, httpx.Client(base_url=server.url, timeout=120) as http:
        hammer.wait_for(PER_PHASE)
        before = _rss(control)
        hammer.phase = 1
        load = http.post("/v2/repository/models/linear/load", json={})
        assert load.status_code == 200, load.text
        assert sorted(w["served"]["linear"] for w in load.json()["workers"]) == [["1", version]] * 2
        hammer.phase = 2  # every worker serves both versions now: the default route is the new one
        hammer.wait_for(PER_PHASE)
        assert _tinyserve_series(server.url, version)  # the new version's metrics are there while it serves
        hammer.phase = 3
        unload = http.post("/v2/repository/models/linear/unload", json={"parameters": {"version": version}})
        assert unload.status_code == 200, unload.text
        hammer.phase = 4
        hammer.wait_for(PER_PHASE)
        gone = http.post(f"/v2/models/linear/versions/{version}/infer", json=X)
    after = _rss(control)
    failed = [answer for answer in hammer.answers if answer[2] != 200]
    assert (len(failed), len(hammer.answers) >= 3 * PER_PHASE) == (0, True), failed[:3]
    assert (hammer.versions(0), hammer.versions(2), hammer.versions(4)) == ({"1"}, {version}, {"1"})
    assert hammer.versions(1, 3) <= {"1", version}
    for client in range(CONCURRENCY):  # each client's worker moves to the new version once, and not back
        seen = [v for c, phase, _, v in hammer.answers if c == client and phase <= 2]
        assert seen == sorted(seen, key=int), seen
    assert (gone.status_code, gone.json()["error"]) == (
        404,
        f"unknown version '{version}' of model 'linear': available versions are 1",
    )
    assert _tinyserve_series(server.url, version) == []
    assert after - before < RSS_BOUND, f"RSS grew by {(after - before) / 2**20:.1f} MiB over the roll"


@pytest.mark.timeout(600)
def test_tritonclient_loads_and_a_restarted_worker_serves_the_current_state(
    explicit: tuple[Server, Path, Path],
) -> None:
    server, root, control = explicit
    set_policy(root, "linear", {"latest": {"num_versions": 1}})
    version = publish(root, "linear")
    client = triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=120)
    try:
        client.load_model("linear")
        assert client.get_model_metadata("linear")["versions"] == [version]
        v1 = httpx.get(f"{server.url}/v1/models/linear", timeout=30).json()
        assert (v1["version"], v1["versions"]) == (version, [version])  # the typed catalog says the same
        victim = next(iter(_reports(control, until=lambda r: len(r) == 2)))
        os.kill(victim, signal.SIGKILL)  # BentoML starts another worker in its place
        reports = _reports(control, until=lambda r: len(r) == 2 and victim not in r)
        assert [r["served"] for r in reports.values()] == [{"linear": [version]}] * 2
        client.unload_model("linear")
        assert client.get_model_repository_index()[-1] == {
            "name": "linear",
            "version": version,
            "state": "UNAVAILABLE",
            "reason": "unloaded",
        }
        with pytest.raises(InferenceServerException, match="unknown model 'linear': expected one of none"):
            client.get_model_metadata("linear")
        client.load_model("linear", config=json.dumps({"version_policy": {"specific": {"versions": [1]}}}))
        assert client.get_model_metadata("linear")["versions"] == ["1"]
    finally:
        client.close()


@pytest.mark.timeout(300)
def test_tritonclient_grpc_drives_the_same_repository_calls(explicit: tuple[Server, Path, Path]) -> None:
    server, _, _ = explicit
    client = triton_grpc.InferenceServerClient(server.grpc)
    try:
        client.unload_model("linear")
        index = client.get_model_repository_index(as_json=True)["models"]
        assert {"name": "linear", "state": "UNAVAILABLE", "reason": "unloaded"}.items() <= index[-1].items()
        with pytest.raises(InferenceServerException, match="unknown model 'linear': expected one of none"):
            client.get_model_metadata("linear")
        client.load_model("linear", config=json.dumps({"version_policy": {"specific": {"versions": [1]}}}))
        assert client.get_model_metadata("linear", as_json=True)["versions"] == ["1"]
        with pytest.raises(InferenceServerException, match=r"unsupported load parameters 'file:1/model\.onnx'"):
            client.load_model("linear", files={"file:1/model.onnx": b"not a model"})
    finally:
        client.close()


@pytest.mark.timeout(600)
def test_poll_mode_serves_a_published_signed_version_on_every_worker(tmp_path: Path) -> None:
    root, control = repository(tmp_path / "models", "linear"), tmp_path / "control"
    set_policy(root, "linear", {"latest": {"num_versions": 1}})
    private, public = keypair(tmp_path, "release")
    provenance.sign(root / "linear" / "1", private)
    env = TWO_WORKERS | {
        "TINYSERVE_TRUSTED_KEYS": str(public),
        "TINYSERVE_MODELS_DIR": str(root),
        "TINYSERVE_MODEL_CONTROL": "poll",
        "TINYSERVE_POLL_SECONDS": "0.5",
        "TINYSERVE_CONTROL_DIR": str(control),
    }
    with running(tmp_path / "server.log", env) as server:
        version = publish(root, "linear", signing_key=private)
        _reports(control, until=lambda r: len(r) == 2 and all(w["served"] == {"linear": [version]} for w in r.values()))
        metadata = httpx.get(f"{server.url}/v2/models/linear", timeout=30).json()
        assert (metadata["versions"], metadata["version_policy"]) == ([version], {"latest": {"num_versions": 1}})
        corrupt = publish(root, "linear", corrupt=True, signing_key=private)

        def failure_applied(r: dict[int, dict[str, object]]) -> bool:  # by every worker: any may answer the GET
            state = json.loads((control / "state.json").read_text())
            return (
                bool(state["failures"])
                and len(r) == 2
                and all(w["generation"] == state["generation"] for w in r.values())
            )

        reports = _reports(control, until=failure_applied)
        assert all(w["served"] == {"linear": [version]} for w in reports.values())  # the bad one never served
        failure = httpx.get(f"{server.url}/v2/models/linear", timeout=30).json()["load_failure"]
        assert failure.startswith(f"version {corrupt} of 'linear' was not loaded: ") and "sha256 mismatch" in failure
        assert failure in server.output()  # and the log says it, in the same sentence
        r = httpx.post(f"{server.url}/v2/repository/models/linear/unload", json={}, timeout=30)
        assert (r.status_code, r.json()["error"]) == (
            409,
            "model unload is not allowed with TINYSERVE_MODEL_CONTROL=poll: the repository decides what is served",
        )
        root.rename(tmp_path / "unmounted")  # the volume goes away: what serves keeps serving
        _reports(control, until=lambda r: f"{root}: the repository is empty or unreadable" in server.output())
        r = httpx.post(f"{server.url}/v2/models/linear/infer", json=X, timeout=30)
        assert (r.status_code, r.json()["model_version"]) == (200, version)


@pytest.mark.timeout(180)
def test_with_trusted_keys_an_unsigned_repository_is_a_refused_start(tmp_path: Path) -> None:
    root = repository(tmp_path / "models", "linear")
    _, public = keypair(tmp_path, "release")
    line = refused_start(
        tmp_path / "server.log", {"TINYSERVE_MODELS_DIR": str(root), "TINYSERVE_TRUSTED_KEYS": str(public)}
    )
    assert line == (
        f"tinyserve: refusing to start: {root / 'linear' / '1'}: unsigned (model.sig is missing), "
        "and TINYSERVE_TRUSTED_KEYS asks for a signature"
    )


@pytest.mark.timeout(120)
def test_the_repository_api_can_be_turned_off(tmp_path: Path) -> None:
    env = {"TINYSERVE_REPOSITORY_API": "false", "TINYSERVE_WORKERS": "1"}
    with running(tmp_path / "server.log", env) as server:
        r = httpx.post(f"{server.url}/v2/repository/index", timeout=30)
        assert (r.status_code, r.json()["error"]) == (404, "no such route: POST /v2/repository/index")


@pytest.mark.timeout(300)
def test_training_publishes_the_next_version_whole_and_signed(tmp_path: Path) -> None:
    root = repository(tmp_path / "models", "linear")
    private, public = keypair(tmp_path, "release")
    command = [sys.executable, "-m", "training", "linear", "--quick", "--publish", "--repository", str(root)]
    command += ["--signing-key", str(private)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=280, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in root.iterdir()) == ["linear"]  # no staging directory left behind
    assert sorted(p.name for p in (root / "linear").iterdir()) == ["1", "2"]
    assert json.loads((root / "linear" / "2" / "card.json").read_text())["version"] == "2"
    assert f"-> {root / 'linear' / '2' / 'model.onnx'}" in done.stdout
    provenance.verify(ModelEntry(modelrepo.read_card(root / "linear" / "2"), root / "linear" / "2"), [public])
