"""Every knob of the service, read once from `TINYSERVE_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
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
    max_latency_ms: int = Field(
        1000, ge=1, description="a queued request older than this is shed with 503 (batching only)"
    )
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="larger request bodies get 413")
    max_concurrency: int = Field(
        256, ge=1, description="model requests in flight per worker; more are answered 429 with Retry-After"
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
    server_timing: bool = Field(
        False, description="answer a Server-Timing header (parse, queue, run, encode) on predict and infer routes"
    )
    grpc_port: int = Field(
        8001,
        ge=0,
        le=65535,
        description="the Open Inference Protocol over gRPC on this port, in every worker (SO_REUSEPORT); 0 = off",
    )
