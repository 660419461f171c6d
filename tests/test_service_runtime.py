"""Start-up, providers, settings, auth, metrics and batching, each against a real server process."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.machine import Cores, Shape
from service.runtime import CPU, CUDA, ProviderUnavailable, Runtime, choose_providers
from service.settings import Settings
from tests.helpers import Reference, metric
from tests.server import REPO, Server, refused_start, running

AZURE = "AzureExecutionProvider"


@pytest.mark.parametrize(
    ("setting", "available", "expected"),
    [
        ("auto", [AZURE, CPU], [CPU]),
        ("auto", [CUDA, AZURE, CPU], [CUDA, CPU]),
        ("cpu", [CUDA, CPU], [CPU]),
        ("cuda", [CUDA, CPU], [CUDA, CPU]),
    ],
)
def test_choose_providers_names_them_explicitly(setting: str, available: list[str], expected: list[str]) -> None:
    assert choose_providers(setting, available) == expected


def test_cuda_setting_without_cuda_is_refused_with_the_reason() -> None:
    with pytest.raises(ProviderUnavailable, match="offers only AzureExecutionProvider, CPUExecutionProvider"):
        choose_providers("cuda", [AZURE, CPU])


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINYSERVE_PROVIDERS", "cpu")
    monkeypatch.setenv("TINYSERVE_WORKERS", "2")
    monkeypatch.setenv("TINYSERVE_MAX_BATCH_ROWS", "64")
    monkeypatch.setenv("TINYSERVE_API_TOKEN", "s3cret")
    settings = Settings()
    assert (settings.providers, settings.workers, settings.max_batch_rows) == ("cpu", 2, 64)
    assert settings.api_token is not None and settings.api_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)
    monkeypatch.setenv("TINYSERVE_THREADS", "3")
    monkeypatch.setenv("TINYSERVE_SPINNING", "true")
    monkeypatch.setenv("TINYSERVE_CUDA_TF32", "1")
    monkeypatch.setenv("TINYSERVE_CUDA_CONV_ALGO_SEARCH", "EXHAUSTIVE")
    settings = Settings()
    assert (settings.threads, settings.spinning, settings.cuda_tf32, settings.cuda_conv_algo_search) == (
        3,
        True,
        True,
        "EXHAUSTIVE",
    )


def test_settings_refuse_a_bad_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINYSERVE_PROVIDERS", "tpu")
    with pytest.raises(ValueError, match="providers"):
        Settings()


def test_session_options_carry_the_threads_and_spinning() -> None:
    runtime = Runtime(Cores(affinity=16, quota=None), Shape(workers=4, threads=4, spinning=False), CPU, {})
    options = runtime.session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (4, 1)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    spinning = Runtime(runtime.cores, Shape(1, 16, spinning=True), CPU, {})
    assert spinning.session_options().get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert runtime.providers() == [CPU]
    options_ = {"device_id": "0", "use_tf32": "0", "cudnn_conv_algo_search": "HEURISTIC"}
    assert Runtime(runtime.cores, runtime.shape, CUDA, options_).providers() == [(CUDA, options_), CPU]
    assert Runtime.from_env(runtime.to_env()) == runtime


def test_tampered_model_file_stops_start_up_naming_the_file(tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(REPO / "models", models)
    target = models / "lenet" / "1" / "model.onnx"
    data = bytearray(target.read_bytes())
    data[1000] ^= 0xFF
    target.write_bytes(bytes(data))
    output = refused_start(tmp_path / "server.log", {"TINYSERVE_MODELS_DIR": str(models)})
    assert output.startswith(f"tinyserve: refusing to start: {target}: sha256 mismatch")


def test_missing_model_file_stops_start_up_naming_the_file(tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(REPO / "models", models)
    (models / "blobs" / "1" / "model.onnx").unlink()
    output = refused_start(tmp_path / "server.log", {"TINYSERVE_MODELS_DIR": str(models)})
    assert output.startswith(
        f"tinyserve: refusing to start: {models / 'blobs' / '1' / 'model.onnx'}: model file is missing"
    )


def test_an_empty_repository_stops_start_up(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    output = refused_start(tmp_path / "server.log", {"TINYSERVE_MODELS_DIR": str(tmp_path / "models")})
    assert output == f"tinyserve: refusing to start: {tmp_path / 'models'}: no models found"


def test_a_bad_setting_stops_start_up_naming_the_variable(tmp_path: Path) -> None:
    output = refused_start(tmp_path / "server.log", {"TINYSERVE_WORKERS": "many"})
    assert output == (
        "tinyserve: refusing to start: TINYSERVE_WORKERS: Input should be a valid integer, "
        "unable to parse string as an integer"
    )


def test_cuda_required_on_a_cpu_only_build_never_becomes_ready(tmp_path: Path) -> None:
    output = refused_start(tmp_path / "server.log", {"TINYSERVE_PROVIDERS": "cuda"})
    assert output == (
        "tinyserve: refusing to start: TINYSERVE_PROVIDERS=cuda, but this onnxruntime build offers only "
        "AzureExecutionProvider, CPUExecutionProvider; install onnxruntime-gpu on a machine with a CUDA GPU, "
        "or use auto/cpu"
    )


# the API docs are open like the playground's files (code and the document, no data): Authorize takes the token
OPEN_ROUTES = ("/livez", "/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/", "/docs.json")
OPEN_ROUTES += ("/static_content/swagger-ui.css",)
GUARDED_GETS = (
    "/metrics",  # with no metrics token of its own: the API token
    "/v1/models",
    "/v1/models/linear",
    "/v2",
    "/v2/models/linear",
    "/v2/models/linear/ready",
    "/v2/models/linear/versions/1",
    "/v2/models/linear/versions/1/ready",
)
GUARDED_POSTS = (
    ("/v1/linear/predict", {"json": {"x": [1.0]}}),
    (
        "/v2/models/linear/infer",
        {"json": {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1]}]}},
    ),
    ("/v1/lenet/predict-image", {"files": {"image": ("x.png", b"", "image/png")}}),
)


def test_api_token_guards_every_route_but_probes(tmp_path: Path) -> None:
    env = {"TINYSERVE_API_TOKEN": "s3cret-token"}
    refused = {"error": "missing or invalid API token: send 'Authorization: Bearer <token>'", "detail": []}
    with running(tmp_path / "server.log", env) as server, httpx.Client(base_url=server.url) as http:
        token = {"Authorization": "Bearer s3cret-token"}
        for route in GUARDED_GETS:
            for headers in ({}, {"Authorization": "Bearer s3cret-tokeX"}, {"Authorization": "s3cret-token"}):
                r = http.get(route, headers=headers)
                assert (r.status_code, r.json()) == (401, refused), route
                assert r.headers["www-authenticate"] == "Bearer"
            assert http.get(route, headers=token).status_code == 200, route
        for route, body in GUARDED_POSTS:
            r = http.post(route, **body)  # type: ignore[arg-type]
            assert (r.status_code, r.json()) == (401, refused), route
            assert http.post(route, headers=token, **body).status_code != 401, route  # type: ignore[arg-type]
        r = http.post("/v1/linear/predict", json={"x": [1.0]}, headers=token)
        assert r.status_code == 200 and len(r.json()["y"]) == 1
        for route in OPEN_ROUTES:
            assert http.get(route).status_code == 200, route


def _metric(text: str, name: str, model: str) -> float:
    return metric(text, name, model=model)


def test_concurrent_single_rows_are_merged_and_each_caller_gets_its_own(server: Server, reference: Reference) -> None:
    xs = [float(i) / 7 for i in range(96)]

    async def call_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            return await asyncio.gather(*[client.post("/v1/linear/predict", json={"x": [x]}) for x in xs])

    before = httpx.get(f"{server.url}/metrics").text
    responses = asyncio.run(call_all())
    after = httpx.get(f"{server.url}/metrics").text
    for x, response in zip(xs, responses, strict=True):
        assert response.status_code == 200
        reference.assert_matches(response.json()["y"], "linear", np.array([[x]]))
    rows = _metric(after, "tinyserve_batch_rows_sum", "linear") - _metric(before, "tinyserve_batch_rows_sum", "linear")
    calls = _metric(after, "tinyserve_batch_rows_count", "linear") - _metric(
        before, "tinyserve_batch_rows_count", "linear"
    )
    assert rows == len(xs)
    assert calls < len(xs)  # merged: fewer ONNX Runtime calls than requests
    assert rows / calls > 1.5


def test_metrics_export_rows_time_and_the_active_provider(server: Server) -> None:
    httpx.post(f"{server.url}/v1/blobs/predict", json={"x": [[1, 1], [-1, 1], [0, 0]]})
    text = httpx.get(f"{server.url}/metrics").text
    for model in ("linear", "multilinear", "blobs", "lenet"):
        assert _metric(text, "tinyserve_model_provider", model) == 1.0
        assert re.search(rf'tinyserve_model_provider\{{[^}}]*model="{model}"[^}}]*provider="{CPU}"', text)
    assert _metric(text, "tinyserve_rows_inferred_total", "blobs") >= 3
    assert _metric(text, "tinyserve_inference_seconds_count", "blobs") >= 1
    assert metric(text, "tinyserve_http_requests_total", route="/v1/{model}/predict", status="200") >= 1


def test_without_batching_every_request_is_its_own_call(tmp_path: Path) -> None:
    with running(tmp_path / "server.log", {"TINYSERVE_BATCHING": "false"}) as server:

        async def call_all() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                return await asyncio.gather(
                    *[client.post("/v1/linear/predict", json={"x": [float(i)]}) for i in range(32)]
                )

        assert all(r.status_code == 200 for r in asyncio.run(call_all()))
        text = httpx.get(f"{server.url}/metrics").text
        assert _metric(text, "tinyserve_batch_rows_count", "linear") == 32


def test_serve_logs_the_provider_of_each_model_at_start(server: Server) -> None:
    for model in ("linear", "multilinear", "blobs", "lenet"):
        assert re.search(rf"loaded {model}/1 from .* on CPUExecutionProvider", server.output()), model


def test_bentoml_serve_in_the_repo_root_uses_the_bentofile(tmp_path: Path) -> None:
    with running(tmp_path / "server.log", target=".") as server:
        r = httpx.post(f"{server.url}/v1/linear/predict", json={"x": [0.0]})
        assert r.status_code == 200 and r.json()["model"] == "linear"


def test_make_serve_target_exists() -> None:
    out = subprocess.run(["make", "-n", "serve"], cwd=REPO, capture_output=True, text=True, check=True)
    assert "bentoml serve --host 127.0.0.1 --port 3000" in out.stdout
