"""`make bench`'s gRPC cases: the Open Inference Protocol over gRPC against V2 HTTP and in-process ONNX Runtime.

    .venv/bin/python -m benchmarks.grpc_cases [--quick]             # these cases alone, default shape
    .venv/bin/python -m benchmarks.grpc_cases load ADDRESS IMAGES CONCURRENCY REQUESTS [--connections N]
        [--seconds S] [--warm-up N]                                 # the load alone

One server at the default shape: one LeNet image per request at c=1 and c=32 (gRPC raw contents, V2 HTTP
binary, the typed route), then 1,024 images per request, two per worker in flight (gRPC, V2 HTTP binary),
beside ONNX Runtime in process on all the server's threads. The gRPC load runs in its own process, as
benchmarks.load does for HTTP, over several channels (each its own connection: SO_REUSEPORT spreads them),
and the bulk case once more over one connection, as a client that opens one channel sends (one worker serves it).
Last, the single-image cases against grpcio's Python server alone (benchmarks.grpc_bare): the ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import time
from typing import Any

import grpc
import numpy as np
import psutil
import uvloop
from tritonclient.grpc import service_pb2 as pb

from benchmarks import cases
from benchmarks.server import REPO, Server, costed, free_port, launch, stop, wait_ready
from service import grpc_server
from service.machine import Shape
from service.settings import Settings

CHANNELS = 8  # connections the load opens at most: a client pool, spread over the workers
MODEL_INFER = f"/{pb.DESCRIPTOR.services_by_name['GRPCInferenceService'].full_name}/ModelInfer"
BARE = "grpcio alone, a fixed answer"  # benchmarks.grpc_bare: the ceiling of grpcio's Python server here


def _request(images: int) -> Any:
    x = np.random.default_rng(0).random((images, 1, 32, 32), dtype=np.float32)
    request = pb.ModelInferRequest(model_name="lenet")
    request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    return request


async def _load(
    address: str,
    images: int,
    concurrency: int,
    requests: int,
    connections: int,
    seconds: float | None = None,
    warm_up: int | None = None,
) -> dict[str, Any]:
    """`requests` calls (or as many as `seconds` allow) at `concurrency`, after `warm_up` calls (default: 2 per
    call in flight and up to 200), as benchmarks.load does over HTTP.

    As benchmarks.load sends one body built before the load and reads each answer's bytes, the message is
    encoded once and each answer taken as bytes (a channel's method without serializers): the client's work
    a call is then grpcio's alone. Encoding a 1,024-image message for each call cost the client ~1.7 ms of
    CPU a call, taken from the cores the server shares with it.
    """
    request = _request(images).SerializeToString()
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", -1)]
    channels = [grpc.aio.insecure_channel(address, options=options) for _ in range(connections)]
    stubs = [channel.unary_unary(MODEL_INFER) for channel in channels]  # bytes in, bytes out
    latencies: list[float] = []
    errors, sent = 0, 0

    deadline = float("inf")

    async def worker(model_infer: Any, count: int) -> None:
        nonlocal sent, errors
        while sent < count and time.perf_counter() < deadline:
            sent += 1
            started = time.perf_counter()
            try:
                await model_infer(request, timeout=30)
            except grpc.aio.AioRpcError:
                errors += 1
            latencies.append(time.perf_counter() - started)

    if warm_up is None:
        warm_up = max(2 * concurrency, min(200, requests // 5))
    if seconds is not None:
        deadline = time.perf_counter() + seconds  # the warm-up too, as benchmarks.load bounds it
    await asyncio.gather(*(worker(stubs[i % len(stubs)], warm_up) for i in range(concurrency)))
    warmed = sent
    if seconds is not None:
        deadline = time.perf_counter() + seconds
    latencies.clear()
    sent, errors = 0, 0
    cpu, started = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(stubs[i % len(stubs)], requests) for i in range(concurrency)))
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    for channel in channels:
        await channel.close()
    quantiles = statistics.quantiles(latencies, n=100)
    rps = len(latencies) / seconds
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": seconds,
        "rps": rps,
        "p50_ms": quantiles[49] * 1000,
        "p99_ms": quantiles[98] * 1000,
        "client_cpu_s": cpu,
        "images_per_s": rps * images,
        "warm_up": warmed,
    }


def grpc_load(
    address: str,
    images: int,
    concurrency: int,
    requests: int,
    connections: int | None = None,
    *,
    seconds: float | None = None,
    warm_up: int | None = None,
) -> dict[str, Any]:
    """The gRPC load generator in its own process; a connection per request in flight, up to CHANNELS."""
    connections = connections or min(concurrency, CHANNELS)
    command = [sys.executable, "-m", "benchmarks.grpc_cases", "load", address, str(images), str(concurrency)]
    command += [str(requests), "--connections", str(connections)]
    command += ["--seconds", str(seconds)] if seconds is not None else []
    command += ["--warm-up", str(warm_up)] if warm_up is not None else []
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True, timeout=600)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def run(shape: Shape, requests: int, bulk_requests: int, seconds: float) -> dict[str, Any]:
    print(f"gRPC against V2 HTTP, shape {shape.workers}x{shape.threads}", flush=True)
    env = {"TINYSERVE_WORKERS": str(shape.workers), "TINYSERVE_THREADS": str(shape.threads)}
    server = launch(REPO / "benchmarks" / "results" / "server-grpc.log", env)
    in_flight = 2 * shape.workers
    try:
        wait_ready(server, timeout=180)
        one_image, one_headers = cases.v2_binary(np.random.default_rng(0).random((1, 1, 32, 32), dtype=np.float32))
        typed = cases.lenet_image_json()
        single: dict[str, dict[str, Any]] = {}
        for c in (1, 32):
            n = requests * (4 if c > 1 else 1)
            single[f"grpc c={c}"] = costed(server.process.pid, grpc_load, server.grpc, 1, c, n)
            v2_url = f"{server.url}/v2/models/lenet/infer"
            single[f"v2 http binary c={c}"] = costed(
                server.process.pid, cases.load, v2_url, one_image, c, n, one_headers
            )
            single[f"typed c={c}"] = costed(
                server.process.pid, cases.load, f"{server.url}/v1/lenet/predict", typed, c, n
            )
        bulk = {
            "grpc": costed(server.process.pid, grpc_load, server.grpc, 1024, in_flight, bulk_requests),
            "grpc, one connection": costed(
                server.process.pid, grpc_load, server.grpc, 1024, in_flight, bulk_requests, 1
            ),
            "v2 http binary": costed(server.process.pid, cases.bulk_v2, server.url, 1024, in_flight, bulk_requests),
        }
    finally:
        stop(server)
    bare = launch_bare(shape.workers, Settings().max_concurrency + grpc_server.SPARE_THREADS)
    try:
        for c in (1, 32):
            n = requests * (4 if c > 1 else 1)
            single[f"{BARE} c={c}"] = costed(bare.process.pid, grpc_load, bare.grpc, 1, c, n)
    finally:
        stop(bare)
    raw = cases.raw_onnxruntime("lenet", 1024, shape.workers * shape.threads, seconds)
    return {"workers": shape.workers, "threads": shape.threads, "single": single, "bulk": bulk, "raw_1024": raw}


def launch_bare(workers: int, threads: int) -> Server:
    """benchmarks.grpc_bare, `workers` processes on one port, answering."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.grpc_bare", str(port), str(threads), str(workers)],
        cwd=REPO,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while _listening(process.pid, port) < workers:  # each worker binds the port once it has imported
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"benchmarks.grpc_bare did not listen on {port} with {workers} workers")
        time.sleep(0.1)
    return Server("", process, REPO / "benchmarks" / "results" / "grpc-bare.log", f"127.0.0.1:{port}")


def _listening(pid: int, port: int) -> int:
    """How many processes of `pid`'s tree listen on `port`."""
    root = psutil.Process(pid)
    count = 0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            count += any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in process.net_connections())
    return count


def table(result: dict[str, Any]) -> str:
    raw = result["raw_1024"]["rows_per_s"]
    lines = [
        f"| gRPC vs V2 HTTP, {result['workers']} x {result['threads']}, one LeNet image "
        "| req/s | p50 ms | p99 ms | server CPU a request, us |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {label} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {_cpu(r, 1)} |"
        for label, r in result["single"].items()
    ]
    lines += [
        "",
        "| 1024 LeNet images per request, 2 per worker in flight | images/s | of in process "
        "| server CPU an image, us |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {label} | {r['images_per_s']:,.0f} | {r['images_per_s'] / raw:.0%} | {_cpu(r, 1024)} |"
        for label, r in result["bulk"].items()
    ]
    lines.append(f"| ONNX Runtime in process, {result['workers'] * result['threads']} threads | {raw:,.0f} | 100% | |")
    return "\n".join(lines)


def _cpu(result: dict[str, Any], images: int) -> str:
    cpu = result.get("server_cpu_us")  # absent from results written before it was measured
    return "-" if cpu is None else f"{cpu / images:,.0f}" if images == 1 else f"{cpu / images:.1f}"


def targets(result: dict[str, Any]) -> list[tuple[str, float, float, bool]]:
    """(target, measured, bar, higher is better), as benchmarks.__main__.targets takes them."""
    single = result["single"]
    return [
        ("bulk gRPC / in-process ONNX Runtime, same threads", result["bulk"]["grpc"]["images_per_s"]
         / result["raw_1024"]["rows_per_s"], 0.85, True),
        ("single image gRPC / typed route, requests/s, c=1", single["grpc c=1"]["rps"] / single["typed c=1"]["rps"],
         1.0, True),
        ("single image gRPC / typed route, requests/s, c=32", single["grpc c=32"]["rps"]
         / single["typed c=32"]["rps"], 1.0, True),
    ]  # fmt: skip


def ceiling(result: dict[str, Any]) -> list[str]:
    """What grpcio's Python server alone reaches: of it, tinyserve's door; and it against the typed route."""
    single = result["single"]
    if f"{BARE} c=1" not in single:  # a result written before the ceiling was measured
        return []
    return [
        f"single image at c={c}: tinyserve's gRPC door / {BARE} {single[f'grpc c={c}']['rps'] / bare:.2f}; "
        f"{BARE} / typed route {bare / single[f'typed c={c}']['rps']:.2f}"
        for c in (1, 32)
        if (bare := single[f"{BARE} c={c}"]["rps"])
    ]


def main() -> None:
    if sys.argv[1:2] == ["load"]:
        load = argparse.ArgumentParser(prog="python -m benchmarks.grpc_cases load")
        load.add_argument("address")
        for name in ("images", "concurrency", "requests"):
            load.add_argument(name, type=int)
        load.add_argument(
            "--connections", type=int, help=f"channels, each its own connection (default: up to {CHANNELS})"
        )
        load.add_argument("--seconds", type=float, help="the most the measured calls (and the warm-up) may take")
        load.add_argument("--warm-up", type=int, help="calls before the measured ones")
        a = load.parse_args(sys.argv[2:])
        connections = a.connections or min(a.concurrency, CHANNELS)
        work = _load(a.address, a.images, a.concurrency, a.requests, connections, a.seconds, a.warm_up)
        print(json.dumps(uvloop.run(work)))  # uvloop, as benchmarks.load runs
        return
    from service.machine import available_cores, choose_shape

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests (under a minute on 2 cores)")
    args = parser.parse_args()
    requests, bulk_requests, seconds = (300, 30, 0.5) if args.quick else (1000, 100, 2.0)
    (REPO / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    result = run(choose_shape(available_cores().available), requests, bulk_requests, seconds)
    print(table(result))
    for name, value, bar, higher in targets(result):
        met = value >= bar if higher else value <= bar
        print(f"{name}: {value:.2f} ({'>=' if higher else '<='} {bar:g}: {'met' if met else 'not met'})")
    print("\n".join(ceiling(result)))


if __name__ == "__main__":
    main()
