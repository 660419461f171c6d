"""deploy/kubernetes/: rendered by kubectl's Kustomize, validated against the Kubernetes schemas, and held to
the service's own settings, routes, port and shutdown, so that the manifests and the service cannot drift."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import grpc
import httpx
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.server import traffic_timeout
from service.settings import Settings
from tests.helpers import REPO
from tests.server import Server, running

KUBE = REPO / "deploy" / "kubernetes"
IMAGE_UID = int(re.search(r"set bento__uid_gid = (\d+)", (REPO / "deploy/image/Dockerfile.j2").read_text())[1])  # type: ignore[index]
TARGETS = ["base", "overlays/gpu", "overlays/model-repository", "kserve", "kserve-grpc"]
KUBERNETES = "1.37.0"  # the newest schemas kubernetes-validate bundles
TOKEN_SECRET = "tinyserve-api-token"
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"  # its own virtualenv (Makefile: why)
TOKEN_FILES = {"TINYSERVE_API_TOKEN_FILE": "token", "TINYSERVE_METRICS_TOKEN_FILE": "metrics-token"}
# The image runs `bentoml serve` with no --port (deploy/image/Dockerfile.j2): BentoML's documented default port.
IMAGE_PORT = 3000


@cache
def render(target: str) -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl (v1.27+, for its built-in Kustomize v5) is needed to render deploy/kubernetes/")
    result = subprocess.run([kubectl, "kustomize", str(KUBE / target)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return tuple(yaml.safe_load_all(result.stdout))


def one(target: str, kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in render(target) if doc["kind"] == kind]
    return found


def pod_spec(target: str) -> dict[str, Any]:
    """The pod as the target runs it: a Deployment's template, or the InferenceService's predictor."""
    if target.startswith("kserve"):
        return dict(one(target, "InferenceService")["spec"]["predictor"])
    spec: dict[str, Any] = one(target, "Deployment")["spec"]["template"]["spec"]
    return spec


def container(target: str) -> dict[str, Any]:
    (serving,) = pod_spec(target)["containers"]
    return dict(serving)


def settings_env(target: str) -> dict[str, str]:
    """The TINYSERVE_* variables the serving container gets: its ConfigMap's, then its own values."""
    data: dict[str, str] = one(target, "ConfigMap")["data"]
    env = {e["name"]: e["value"] for e in container(target)["env"] if "value" in e}
    return {k: v for k, v in (data | env).items() if k.startswith("TINYSERVE_")}


def test_every_file_of_deploy_kubernetes_is_part_of_a_kustomization() -> None:
    listed = set()
    for kustomization in KUBE.rglob("kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text())
        names = [*spec.get("resources", []), *spec.get("configurations", [])]
        names += [patch["path"] for patch in spec.get("patches", [])]
        names += [env for generator in spec.get("configMapGenerator", []) for env in generator.get("envs", [])]
        listed |= {(kustomization.parent / name).resolve() for name in names}
    files = {path.resolve() for path in KUBE.rglob("*") if path.is_file() and path.name != "kustomization.yaml"}
    assert files - listed == set()


@pytest.mark.parametrize("target", TARGETS)
def test_every_rendered_object_is_valid_for_kubernetes(target: str) -> None:
    kinds = []
    for doc in render(target):
        kinds.append(doc["kind"])
        if doc["apiVersion"].startswith("serving.kserve.io/"):
            continue  # a custom resource: its pod part is checked below
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)  # raises, naming the field, when invalid
    expected = (
        ["ConfigMap", "InferenceService", "NetworkPolicy"]
        if target.startswith("kserve")
        else ["ConfigMap", "Service", "Deployment", "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy"]
    )
    if target == "overlays/model-repository":
        expected.append("PersistentVolumeClaim")  # the shared repository the pods poll
    assert sorted(kinds) == sorted(expected)


def test_the_inference_service_is_a_v2_predictor_of_the_same_image() -> None:
    service = one("kserve", "InferenceService")
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    predictor = service["spec"]["predictor"]
    # Its pod part is a Kubernetes pod spec: validate it as one, every field strictly.
    kserve_fields = {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget"}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "predictor"},
        "spec": {k: v for k, v in predictor.items() if k not in kserve_fields},
    }
    kubernetes_validate.validate(pod, KUBERNETES, strict=True)
    assert predictor["minReplicas"] <= predictor["maxReplicas"] and predictor["scaleMetric"] == "cpu"
    serving = container("kserve")
    assert serving["name"] == "kserve-container"  # KServe routes to the container of this name
    assert {"name": "PROTOCOL", "value": "v2"} in serving["env"]  # how KServe knows a custom predictor's protocol
    assert serving["image"] == container("base")["image"] == "tinyserve:latest"
    assert serving["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert serving["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"


@pytest.mark.parametrize("target", TARGETS)
def test_the_settings_are_the_services_own(target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = settings_env(target)
    fields = {f"TINYSERVE_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, set(env) - fields
    for name, value in env.items():
        if name not in TOKEN_FILES:  # files of the pod's Secret, checked below
            monkeypatch.setenv(name, value)
    settings = Settings()  # the service's own parsing: raises on a value it would refuse at start
    assert settings.workers * settings.threads <= _cpus(container(target)["resources"]["limits"]["cpu"])
    assert "TINYSERVE_API_TOKEN" not in one(target, "ConfigMap")["data"]


@pytest.mark.parametrize("target", TARGETS)
def test_the_tokens_are_files_of_the_secret_and_required(target: str) -> None:
    """Mounted read-only from the Secret, every key required: a pod without them does not start."""
    serving, spec = container(target), pod_spec(target)
    (mount,) = [m for m in serving["volumeMounts"] if m["name"] == "tokens"]
    assert mount["readOnly"] is True
    secret = {v["name"]: v for v in spec["volumes"]}["tokens"]["secret"]
    assert secret["secretName"] == TOKEN_SECRET and "optional" not in secret
    keys = {item["key"]: item["path"] for item in secret["items"]}
    for variable, key in TOKEN_FILES.items():
        (value,) = [e["value"] for e in serving["env"] if e["name"] == variable]
        assert value == f"{mount['mountPath']}/{keys[key]}"
    assert not [e for e in serving["env"] if "valueFrom" in e]  # no secret as a variable


def _as_pods(target: str) -> list[dict[str, Any]]:
    """The rendered objects, the InferenceService's predictor as the pod it becomes (checkov skips custom kinds)."""
    if not target.startswith("kserve"):
        return list(render(target))
    service = one(target, "InferenceService")
    kserve_fields = {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget"}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "predictor", "annotations": service["metadata"]["annotations"]},
        "spec": {k: v for k, v in service["spec"]["predictor"].items() if k not in kserve_fields},
    }
    return [*render(target), pod]


@pytest.mark.parametrize("target", TARGETS)
def test_checkov_finds_nothing_and_every_skipped_check_says_why(target: str, tmp_path: Path) -> None:
    if not CHECKOV.exists():
        pytest.fail("checkov is needed to check deploy/kubernetes/: `make test` installs it (.venv-checkov)")
    manifests = tmp_path / "manifests.yaml"
    manifests.write_text(yaml.safe_dump_all(_as_pods(target)))
    command = [str(CHECKOV), "-f", str(manifests), "--framework", "kubernetes", "--skip-download", "-o", "json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    report = json.loads(result.stdout)
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert failed == [] and report["summary"]["parsing_errors"] == 0
    assert report["summary"]["passed"] >= 80  # the workload was checked (85 checks apply to it)
    for skipped in report["results"]["skipped_checks"]:
        assert len(skipped["check_result"]["suppress_comment"]) > 20, skipped["check_id"]  # a reason, not a shrug


def _cpus(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


@pytest.mark.parametrize("target", TARGETS)
def test_shutdown_fits_the_grace_period(target: str) -> None:
    """preStop (endpoints catch up), then the service's drain, then its longest request, within the grace."""
    serving, spec = container(target), pod_spec(target)
    pre_stop = serving["lifecycle"]["preStop"]["sleep"]["seconds"]
    env = settings_env(target)
    settings = Settings.model_validate(
        {
            name: env[variable]
            for name, variable in (
                ("drain_seconds", "TINYSERVE_DRAIN_SECONDS"),
                ("body_timeout", "TINYSERVE_BODY_TIMEOUT"),
                ("request_timeout", "TINYSERVE_REQUEST_TIMEOUT"),
            )
            if variable in env
        }
    )
    longest = math.ceil(traffic_timeout(settings))  # a request in flight: BentoML's timeout ends it at the latest
    assert spec["terminationGracePeriodSeconds"] >= pre_stop + math.ceil(settings.drain_seconds) + longest
    readiness = serving["readinessProbe"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] <= settings.drain_seconds  # seen while draining


def test_rollouts_and_disruptions_keep_a_pod_serving() -> None:
    deployment, pdb, hpa = (
        one("base", kind) for kind in ("Deployment", "PodDisruptionBudget", "HorizontalPodAutoscaler")
    )
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["maxUnavailable"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (deployment["spec"]["selector"]["matchLabels"], pdb["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items()
    assert one("base", "Service")["spec"]["selector"].items() <= labels.items()


@pytest.mark.parametrize("target", TARGETS)
def test_the_pod_runs_unprivileged_on_a_read_only_root(target: str) -> None:
    spec, serving = pod_spec(target), container(target)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == IMAGE_UID >= 10000  # no user of the node's
    assert serving["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    home = next(e["value"] for e in serving["env"] if e["name"] == "BENTOML_HOME")
    writable = [mount for mount in serving["volumeMounts"] if not mount.get("readOnly")]
    assert [m["mountPath"] for m in writable] == ["/tmp"] and Path(home).is_relative_to("/tmp")
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert all("emptyDir" in volumes[m["name"]] for m in writable)


def test_the_gpu_overlay_asks_for_a_gpu_and_refuses_to_serve_without_cuda() -> None:
    serving = container("overlays/gpu")
    assert serving["image"] == "tinyserve-cuda:latest"
    assert serving["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert settings_env("overlays/gpu")["TINYSERVE_PROVIDERS"] == "cuda"
    assert settings_env("base")["TINYSERVE_PROVIDERS"] == "cpu"


@pytest.mark.parametrize("target", TARGETS)
def test_port_and_probes_are_the_services(target: str, server: Server) -> None:
    serving = container(target)
    ports = {p.get("name", "http"): p["containerPort"] for p in serving["ports"]}
    grpc_port = Settings.model_fields["grpc_port"].default
    expected = {"h2c": grpc_port} if target == "kserve-grpc" else {"http": IMAGE_PORT}  # KServe routes one port
    if not target.startswith("kserve"):
        expected["grpc"] = grpc_port
    dockerfile = (REPO / "deploy" / "image" / "Dockerfile.j2").read_text()
    assert ports == expected and "EXPOSE 3000 8001" in dockerfile  # where the image's servers listen
    assert "BENTOML_PORT" not in {e["name"] for e in serving.get("env", [])}  # nothing moves it elsewhere
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        if "grpc" in serving[probe]:  # the standard health service, answered on the gRPC port
            check = serving[probe]["grpc"]
            assert check["port"] == grpc_port
            with grpc.insecure_channel(server.grpc) as channel:
                asked = health_pb2.HealthCheckRequest(service=check.get("service", ""))
                answer = health_pb2_grpc.HealthStub(channel).Check(asked, timeout=30)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            continue
        check = serving[probe]["httpGet"]
        assert check["port"] in (IMAGE_PORT, "http")
        assert httpx.get(server.url + check["path"], timeout=30).status_code == 200, check["path"]
    if target == "kserve-grpc":
        assert "grpc" in serving["readinessProbe"]


def test_the_services_carry_the_grpc_port_as_h2c() -> None:
    (grpc_port,) = [p for p in one("base", "Service")["spec"]["ports"] if p["name"] == "grpc"]
    assert grpc_port == {"name": "grpc", "port": 8001, "targetPort": "grpc", "appProtocol": "kubernetes.io/h2c"}
    assert one("kserve-grpc", "InferenceService")["metadata"]["name"] == "tinyserve-grpc"


@pytest.mark.timeout(900)
def test_the_service_serves_on_a_read_only_root_with_the_manifests_environment(tmp_path: Path) -> None:
    """The Deployment's variables, its read-only root and its one writable volume, on a real server
    (bubblewrap: every mount read-only, a fresh tmpfs where the emptyDir is mounted)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        pytest.fail("bubblewrap (bwrap) is needed to run the service on a read-only root: make system-deps")
    serving = container("base")
    env = dict(one("base", "ConfigMap")["data"]) | {e["name"]: e["value"] for e in serving["env"] if "value" in e}
    secret = tmp_path / "secret"  # the Secret's keys, mounted read-only where the pod mounts them
    secret.mkdir()
    (secret / "token").write_text("k8s-test-token\n")
    (secret / "metrics-token").write_text("k8s-metrics-token\n")
    mounts = ["--tmpfs", "/run"]  # the secret's mount point is made there (/var/run is /run)
    for m in serving["volumeMounts"]:
        where = os.path.realpath(m["mountPath"])
        mounts += ["--ro-bind", str(secret), where] if m.get("readOnly") else ["--tmpfs", where]
    # the checkout bound again on top, read-only, in case it lies below a volume's mount path (a clone in /tmp)
    checkout = ("--ro-bind", str(REPO), str(REPO))
    sandbox = (
        bwrap,
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        *mounts,
        *checkout,
        "--die-with-parent",
    )
    with running(tmp_path / "server.log", env, wrapper=sandbox) as server:
        headers = {"Authorization": "Bearer k8s-test-token"}
        answer = httpx.post(f"{server.url}/v1/linear/predict", json={"x": [1.0]}, headers=headers, timeout=30)
        assert answer.status_code == 200 and answer.json()["y"] == [pytest.approx(12.08, abs=0.01)]
        assert httpx.post(f"{server.url}/v1/linear/predict", json={"x": [1.0]}, timeout=30).status_code == 401
        assert httpx.get(f"{server.url}/metrics", headers=headers, timeout=30).status_code == 401  # not the API's
        scraper = {"Authorization": "Bearer k8s-metrics-token"}
        metrics = httpx.get(f"{server.url}/metrics", headers=scraper, timeout=30).text  # files under BENTOML_HOME
        assert 'tinyserve_rows_inferred_total{model="linear",version="1"} 1.0' in metrics
        assert "Read-only file system" not in server.output()


def test_the_model_repository_overlay_polls_a_shared_volume_read_only() -> None:
    target = "overlays/model-repository"
    env = settings_env(target)
    assert (env["TINYSERVE_MODELS_DIR"], env["TINYSERVE_MODEL_CONTROL"]) == ("/models", "poll")
    (mount,) = [m for m in container(target)["volumeMounts"] if m["mountPath"] == "/models"]
    (volume,) = [v for v in pod_spec(target)["volumes"] if v["name"] == mount["name"]]
    assert mount["readOnly"] is True and volume["persistentVolumeClaim"]["claimName"] == "tinyserve-models"
    assert one(target, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadOnlyMany"]
