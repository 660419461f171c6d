"""Every knob of the service, read once from `TINYSERVE_*` environment variables."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# models/ beside this package: the repo root from source, the bento's src/ from a built bento.
DEFAULT_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TINYSERVE_", frozen=True)

    models_dir: Path = Field(DEFAULT_MODELS_DIR, description="model repository: <name>/<version>/model.onnx")
    providers: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA when available, else CPU; cuda: refuse to start without CUDA"
    )
    workers: int = Field(
        0, ge=0, description="server worker processes; 0 = one per 2 available cores, at least 2 (1 on one core)"
    )
    threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads per worker; 0 = available cores / workers")
    spinning: bool = Field(
        False, description="let ONNX Runtime's idle intra-op threads spin: off, as it burns cores other work needs"
    )
    cuda_tf32: bool = Field(False, description="CUDA: TF32 matrix maths (faster on Ampere+, ~1e-3 off float32)")
    cuda_conv_algo_search: Literal["HEURISTIC", "EXHAUSTIVE", "DEFAULT"] = Field(
        "HEURISTIC", description="CUDA: how cuDNN picks convolution algorithms (EXHAUSTIVE times them all per shape)"
    )
    cuda_device: int = Field(0, ge=0, description="CUDA: the device id each worker runs on")
    batching: bool = Field(True, description="merge concurrent requests into larger ONNX Runtime calls")
    max_batch_rows: int = Field(256, ge=1, description="most rows in one merged ONNX Runtime call")
    run_chunk_bytes: int = Field(
        65536,
        ge=0,
        description="CPU, one intra-op thread: a batch runs as ONNX Runtime calls of at most this many input "
        "bytes (LeNet: 16 images), whose activations stay in the core's cache; 0: one call per batch",
    )
    bulk_threads: int = Field(
        0,
        ge=0,
        description="CPU, one intra-op thread: threads one worker may run a long batch's calls of run_chunk_bytes "
        "on, so that a lone bulk request uses every core; 0 = the available cores, 1 = one thread",
    )
    malloc_keep_mib: int = Field(
        32,
        ge=0,
        description="glibc: freed memory (MiB) a worker keeps for its next large body instead of returning it to "
        "the kernel, which then faults every page of a 4 MiB body in afresh; 0: glibc's own thresholds",
    )
    max_latency_ms: int = Field(
        1000, ge=1, description="a queued request older than this is shed with 503 (batching only)"
    )
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="larger request bodies get 413")
    max_concurrency: int = Field(
        256,
        ge=1,
        description="model requests in flight per worker, HTTP and gRPC together; more are answered 429 with "
        "Retry-After",
    )
    drain_seconds: float = Field(2.0, ge=0, description="on SIGTERM: seconds of 503 readiness before connections close")
    quick_ack: bool = Field(
        True, description="acknowledge request bodies at once (TCP_QUICKACK): Nagle clients otherwise stall ~40 ms"
    )
    reuse_port: bool = Field(
        True,
        description="a listening socket per worker (SO_REUSEPORT, Linux): new connections spread evenly over workers",
    )
    access_log: bool = Field(False, description="log every request (costs ~10% of throughput)")
    tracing: bool = Field(False, description="OpenTelemetry spans per request (when an exporter is configured)")
    api_token: SecretStr | None = Field(
        None, description="when set, predict routes require 'Authorization: Bearer <token>'"
    )
    # Edge limits and authentication (issue 21): what a cheap request may cost a worker, and who may ask.
    api_token_file: Path | None = Field(
        None,
        description="a file holding the API token (a mounted Kubernetes Secret), instead of TINYSERVE_API_TOKEN; "
        "read at start, surrounding whitespace stripped",
    )
    metrics_token: SecretStr | None = Field(
        None, description="when set, /metrics requires 'Authorization: Bearer <it>' (else the API token, when set)"
    )
    metrics_token_file: Path | None = Field(
        None, description="a file holding the metrics token, instead of TINYSERVE_METRICS_TOKEN"
    )
    max_header_bytes: int = Field(
        32 * 1024, ge=1024, description="request line and headers larger than this get 431 and a closed connection"
    )
    header_timeout: float = Field(
        10.0, gt=0, description="seconds from a request's first byte to the end of its headers; then 408 and close"
    )
    idle_timeout: float = Field(
        5.0, gt=0, description="seconds a connection may wait, before its first request or between two, then closes"
    )
    body_timeout: float = Field(
        10.0,
        gt=0,
        description="seconds for a model request's whole body to arrive (then 408); the most a client may "
        "stall reading an answer (then dropped)",
    )
    request_timeout: float = Field(25.0, gt=0, description="seconds until a model request's answer starts; then 504")
    max_body_bytes_in_flight: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="request body bytes a worker holds at once (read or being read); more get 429 with Retry-After",
    )

    server_timing: bool = Field(
        False, description="answer a Server-Timing header (parse, queue, run, encode) on predict and infer routes"
    )
    grpc_port: int = Field(
        8001,
        ge=0,
        le=65535,
        description="the Open Inference Protocol over gRPC on this port, in every worker (SO_REUSEPORT); 0 = off",
    )
    model_control: Literal["none", "poll", "explicit"] = Field(
        "none",
        description="follow the repository while serving: none (read once at start), poll (every "
        "TINYSERVE_POLL_SECONDS), explicit (only on POST /v2/repository/models/<name>/load or /unload)",
    )
    poll_seconds: float = Field(10.0, gt=0, description="model_control=poll: seconds between scans of the repository")
    repository_api: bool = Field(
        True, description="serve Triton's repository extension (/v2/repository/...): index, load, unload"
    )
    control_dir: Path | None = Field(
        None,
        description="where the workers share the served state (a small file) and report theirs; "
        "default: a new temporary directory per server start (set one to keep explicit loads across restarts)",
    )
    control_wait_seconds: float = Field(
        60.0, gt=0, description="how long a load or unload call waits for every worker to serve the new state"
    )
    trusted_keys: str | None = Field(
        None,
        description="public keys (PEM, elliptic curve; comma-separated files): when set, a model version serves "
        "only if one of them signed it (OpenSSF model signing, <version>/model.sig), at start and at every load",
    )

    @model_validator(mode="before")
    @classmethod
    def _read_token_files(cls, data: Any) -> Any:
        """A token file stands for its variable: read here, so that the rest of the service sees one token."""
        if not isinstance(data, dict):
            return data
        for name in ("api_token", "metrics_token"):
            path = data.get(f"{name}_file")
            if path and data.get(name) is None:
                with contextlib.suppress(OSError):  # the file's own validator names the problem
                    if text := Path(path).read_text().strip():
                        data = {**data, name: text}
        return data

    @field_validator("api_token", "metrics_token")
    @classmethod
    def _not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        """Set but blank must not mean "no authentication"; a trailing newline is no part of a token."""
        if value is None:
            return None
        token = value.get_secret_value().strip()
        if not token:
            raise ValueError("set but blank; give a token, or unset the variable to serve without authentication")
        return SecretStr(token)

    @field_validator("api_token_file", "metrics_token_file")
    @classmethod
    def _token_file(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        if path is None:
            return None
        name = (info.field_name or "").removesuffix("_file")
        try:
            text = path.read_text().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
        if not text:
            raise ValueError(f"{path} is empty; it must hold the token")
        given = info.data.get(name)
        if given is not None and given.get_secret_value() != text:
            raise ValueError(f"TINYSERVE_{name.upper()} is set too; give the token one way")
        return path

    @field_validator("max_body_bytes_in_flight")
    @classmethod
    def _holds_one_body(cls, value: int, info: ValidationInfo) -> int:
        largest = info.data.get("max_body_bytes", 0)
        if value < largest:
            raise ValueError(f"expected at least TINYSERVE_MAX_BODY_BYTES ({largest}), got {value}")
        return value


def auth_summary(settings: Settings) -> str:
    """The start-up line that says whether requests need a token, and which routes stay open."""
    if settings.api_token is None:
        metrics = "/metrics needs the metrics token" if settings.metrics_token else "/metrics is open"
        return f"authentication: OFF, every route is open (set TINYSERVE_API_TOKEN_FILE to require a token); {metrics}"
    source = "TINYSERVE_API_TOKEN_FILE" if settings.api_token_file else "TINYSERVE_API_TOKEN"
    metrics = "its own token" if settings.metrics_token else "the API token"
    return (
        f"authentication: on (token from {source}); open without it: the probes and the page's static files; "
        f"/metrics needs {metrics}"
    )
