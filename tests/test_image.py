"""The CPU image, built as `make image` builds it and run by a real engine: lean, pinned, non-root, and
serving as the host does (the README's calls, metrics, SIGTERM, a changed model file)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests import containers
from tests.server import REPO, Server

pytestmark = pytest.mark.timeout(1800)  # builds an image: minutes, ten on a machine without caches

LOCK = REPO / "requirements" / "serve.lock.txt"
USER = "10034:10034"  # numeric (runAsNonRoot can check it), >= 10000: no user of the node's
MAX_MB = 560  # with gRPC (grpcio, its health and reflection packages: ~45 MB installed) since issue 22


@pytest.fixture(scope="module")
def built() -> containers.Built:
    built = containers.build("cpu")
    print(built.output.splitlines()[-1])  # the image's name, size and build time, for CI's log
    return built


@pytest.fixture(scope="module")
def container(built: containers.Built) -> Iterator[containers.Container]:
    with containers.serving(built.image) as served:
        yield served


def locked_versions(lock: Path) -> set[str]:
    """`name==version` of every package in a lock made by `make lock`, names normalised (PEP 503)."""
    pins = re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", lock.read_text(), flags=re.MULTILINE)
    return {f"{re.sub(r'[-_.]+', '-', name).lower()}=={version}" for name, version in pins}


def installed_versions(image: str) -> set[str]:
    script = (
        "import importlib.metadata as m, re\n"
        "for d in m.distributions(): print(re.sub(r'[-_.]+', '-', d.metadata['Name']).lower() + '==' + d.version)"
    )
    done = containers.run(image, "-c", script, flags=("--entrypoint", "python"))
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_build_prints_the_image_name_and_a_size_within_the_budget(built: containers.Built) -> None:
    last = built.output.strip().splitlines()[-1]
    match = re.fullmatch(
        rf"image {re.escape(built.tag)}: (\d+) MB, built with \w+ in \d+ s \(bento tinyserve:\w+\)", last
    )
    assert match, last
    size_mb = int(containers.inspect(built.image, "{{.Size}}")) // 1_000_000
    assert int(match[1]) == size_mb <= MAX_MB


def test_image_runs_as_a_numeric_non_root_user_without_build_tools(built: containers.Built) -> None:
    assert containers.inspect(built.image, "{{.Config.User}}") == USER
    assert containers.run(built.image, "-u", flags=("--entrypoint", "id")).stdout.strip() == USER.split(":")[0]
    # As root, to see every file: no compiler or git, no wheel of the wheelhouse left, no installer in the venv.
    probe = "for t in gcc cc c++ make git; do command -v $t; done; "
    probe += "find /app /home /tmp -name '*.whl'; ls /app/.venv/bin"
    done = containers.run(built.image, "-c", probe, flags=("--entrypoint", "sh", "--user", "0"))
    assert done.returncode == 0, done.stderr
    assert "pip" not in done.stdout.split() and "bentoml" in done.stdout.split()
    assert [line for line in done.stdout.splitlines() if "/" in line] == []


def test_every_python_package_is_the_locked_version(built: containers.Built) -> None:
    assert installed_versions(built.image) == locked_versions(LOCK)


def _readme_calls() -> list[str]:
    """The curl commands of the README's "Call it" section, in order."""
    section = REPO.joinpath("README.md").read_text().split("## Call it", 1)[1].split("\n## ", 1)[0]
    return [line.split("  #")[0].strip() for line in section.splitlines() if line.startswith("curl ")]


def _call(command: str, url: str, cwd: Path) -> str:
    args = shlex.split(command.replace("http://127.0.0.1:3000", url))
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=True).stdout


def test_readme_calls_answer_as_on_the_host(container: containers.Container, server: Server) -> None:
    calls = _readme_calls()  # run from the repo root, as the README's reader does: examples/ is there
    assert len(calls) >= 6 and any("predict-image" in call for call in calls)
    for call in calls:
        assert _call(call, container.url, REPO) == _call(call, server.url, REPO), call
    documented = '{"model":"linear","version":"1","y":[12.080533981323242,18.84218978881836]}'
    assert _call(calls[0], container.url, REPO) == documented
    upload = next(call for call in calls if "seven.png" in call)
    assert json.loads(_call(upload, container.url, REPO))["label"] == 7


def test_grpc_answers_in_the_container_as_on_the_host(container: containers.Container, server: Server) -> None:
    x = np.random.default_rng(3).random((4, 1, 32, 32), dtype=np.float32)
    answers = []
    for address in (container.grpc, server.grpc):
        client = triton_grpc.InferenceServerClient(address)
        assert client.is_server_ready()
        tensor = triton_grpc.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        answers.append(client.infer("lenet", [tensor]).as_numpy("logits").tobytes())
        client.close()
    assert answers[0] == answers[1]


def test_models_report_the_cpu_provider_and_readiness(container: containers.Container) -> None:
    models = httpx.get(f"{container.url}/v1/models").json()["models"]
    assert {m["name"]: (m["provider"], m["ready"]) for m in models} == {
        name: ("CPUExecutionProvider", True) for name in ("blobs", "lenet", "linear", "multilinear")
    }


def test_metrics_count_the_rows_the_container_scored(container: containers.Container) -> None:
    def rows() -> float:
        text = httpx.get(f"{container.url}/metrics").text
        found = re.search(r'^tinyserve_rows_inferred_total\{[^}]*model="blobs"[^}]*\} (\S+)$', text, re.MULTILINE)
        return float(found[1]) if found else 0.0

    before = rows()
    r = httpx.post(f"{container.url}/v1/blobs/predict", json={"x": [[1, 1], [-1, 1], [1, -1]]})
    assert r.status_code == 200
    assert rows() == before + 3


def test_sigterm_to_pid_1_drains_and_exits_zero_within_10_seconds(built: containers.Built) -> None:
    with containers.serving(built.image) as served:
        # `stop -t 10`: SIGTERM, then SIGKILL after 10 s, which would make the exit code 137
        assert served.stop(grace_seconds=10) == 0
        assert "SIGTERM: not ready any more; draining for 2.0 s" in served.logs()


def test_a_changed_model_file_stops_the_container_with_one_line(built: containers.Built, tmp_path: Path) -> None:
    changed = tmp_path / "model.onnx"
    changed.write_bytes((REPO / "models" / "linear" / "1" / "model.onnx").read_bytes() + b"\0")
    changed.chmod(0o644)
    target = "/home/bentoml/bento/src/models/linear/1/model.onnx"
    done = containers.run(built.image, flags=("--volume", f"{changed}:{target}:ro"))
    assert done.returncode != 0
    message = re.compile(
        rf"{re.escape(target)}: sha256 mismatch \(card says [0-9a-f]{{64}}, file has [0-9a-f]{{64}}\); "
        r"the file was modified or the card is stale"
    )
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tinyserve: refusing to start: "), lines  # no traceback
    assert message.search(lines[0]), lines


@pytest.mark.parametrize(
    ("requirements", "lock"), [("serve.txt", "serve.lock.txt"), ("serve-cuda.txt", "serve-cuda.lock.txt")]
)
def test_each_lock_satisfies_its_requirements(requirements: str, lock: str) -> None:
    """A requirement changed without `make lock` leaves a lock that no longer satisfies it."""
    pins = dict(pin.split("==") for pin in locked_versions(REPO / "requirements" / lock))
    lines = (REPO / "requirements" / requirements).read_text().splitlines()
    for requirement in (Requirement(line) for line in lines if line and not line.startswith("#")):
        name = canonicalize_name(requirement.name)
        assert name in pins and requirement.specifier.contains(pins[name]), (requirement, pins.get(name))
