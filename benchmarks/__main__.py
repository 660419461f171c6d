"""`make bench`: what serving costs and how it scales, against raw ONNX Runtime and a FastAPI peer, in one run.

    .venv/bin/python -m benchmarks [--quick] [--publish]

The same cases at several worker/thread shapes chosen from the cores this process may use (the default
shape among them), so that the same command measures a 2-core laptop and a 64-core server. Prints the
tables and the targets, writes benchmarks/results/bench.json and bench.png; --publish also rewrites the
tables and chart in BENCHMARKS.md. Every figure sits next to its ratio to a baseline measured in the same
run: on a shared, noisy machine absolute numbers move between runs, ratios much less.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import cases, grpc_cases, peers
from benchmarks.server import REPO, launch, stop, wait_ready
from service.machine import Shape, available_cores, choose_shape

RESULTS = REPO / "benchmarks" / "results"


def shapes(cores: int) -> list[Shape]:
    """One worker with every core, workers of 4 threads, the default (2 threads), and on small machines 1."""
    chosen = [choose_shape(cores, workers=1), choose_shape(cores, threads=4), choose_shape(cores)]
    if cores <= 4:
        chosen.append(choose_shape(cores, threads=1))
    return list(dict.fromkeys(chosen))


def serve(shape: Shape, log: Path, extra: dict[str, str] | None = None) -> tuple[Any, float]:
    env = {"TINYSERVE_WORKERS": str(shape.workers), "TINYSERVE_THREADS": str(shape.threads), **(extra or {})}
    started = time.perf_counter()
    server = launch(log, env)
    wait_ready(server, timeout=180)
    return server, time.perf_counter() - started


def single_images(url: str, requests: int, path: str = "/v1/lenet/predict") -> list[dict[str, Any]]:
    """One LeNet image per request on the typed route (or the peer's), at concurrency 1 and 32."""
    body = cases.lenet_image_json()
    return [{"concurrency": c} | cases.load(f"{url}{path}", body, c, requests * (4 if c > 1 else 1)) for c in (1, 32)]


def measure_shape(shape: Shape, requests: int, bulk_requests: int, seconds: float) -> dict[str, Any]:
    name = f"{shape.workers}x{shape.threads}"
    print(f"shape {name}: workers x intra-op threads", flush=True)
    server, cold = serve(shape, RESULTS / f"server-{name}.log")
    try:
        result = {
            "workers": shape.workers,
            "threads": shape.threads,
            "cold_start_s": cold,
            "single": single_images(server.url, requests),
            "bulk": [cases.bulk_v2(server.url, 1024, n, bulk_requests) for n in (1, 2 * shape.workers)],
        }
    finally:
        stop(server)
    # the baselines: ONNX Runtime in process with one worker's threads, and with the whole server's
    result["raw_1024_worker"] = cases.raw_onnxruntime("lenet", 1024, shape.threads, seconds)
    result["raw_1024"] = cases.raw_onnxruntime("lenet", 1024, shape.workers * shape.threads, seconds)
    return result


def run(quick: bool) -> dict[str, Any]:
    requests, bulk_requests, rows = (300, 30, 20_000) if quick else (1000, 100, 100_000)
    seconds = 0.5 if quick else 2.0
    RESULTS.mkdir(parents=True, exist_ok=True)
    cores = available_cores()
    default = choose_shape(cores.available)
    report: dict[str, Any] = {
        "machine": f"{cores.describe()}, {platform.processor() or platform.machine()}",
        "cores": cores.available,
        "default": [default.workers, default.threads],
        "quick": quick,
    }
    print("raw ONNX Runtime", flush=True)
    report["raw"] = [
        {"batch": batch, "threads": threads} | cases.raw_onnxruntime("lenet", batch, threads, seconds)
        for threads in sorted({1, default.threads, cores.available})
        for batch in (1, 1024)
    ]
    report["shapes"] = [measure_shape(shape, requests, bulk_requests, seconds) for shape in shapes(cores.available)]
    report["grpc"] = grpc_cases.run(default, requests, bulk_requests, seconds)

    # the FastAPI app of bench-peers, in this environment, one worker per core as the other servers
    print("FastAPI peer", flush=True)
    fastapi = peers.BY_NAME["fastapi"]
    peer = peers.start(fastapi, RESULTS / "peer.log", python=Path(sys.executable), workers=cores.available)
    try:
        report["peer"] = {
            "workers": cores.available,
            "cold_start_s": peer.cold_start_s,
            "single": single_images(peer.url, requests, "/predict"),
        }
    finally:
        peer.stop()

    print("tritonclient.http and tinyserve-score, default shape", flush=True)
    images = RESULTS / "bulk-images.npy"
    np.save(images, np.random.default_rng(0).random((rows, 32, 32), dtype=np.float32))
    quick_ack = ("true",) if quick else ("true", "false")
    for setting in quick_ack:
        server, _ = serve(default, RESULTS / f"server-quick-ack-{setting}.log", {"TINYSERVE_QUICK_ACK": setting})
        try:
            report[f"triton_quick_ack_{setting}"] = {"unchanged": cases.triton_bulk(server.url, 1024, bulk_requests)}
            if setting == "true":
                report["client"] = {
                    "local": cases.score_file(images, ["--local"]),
                    "v2": cases.score_file(images, ["--url", server.url]),
                }
        finally:
            stop(server)
    images.unlink()

    print("overload: 64 clients, TINYSERVE_MAX_CONCURRENCY=4", flush=True)
    server, _ = serve(default, RESULTS / "server-overload.log", {"TINYSERVE_MAX_CONCURRENCY": "4"})
    try:
        report["overload"] = cases.overload(server.url, seconds=2.0 if quick else 4.0)
    finally:
        stop(server)
    return report


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else "-"


def tables(report: dict[str, Any]) -> str:
    lines = [f"Machine: {report['machine']}; default shape {report['default'][0]} x {report['default'][1]}.", ""]
    lines += ["| in process, LeNet | threads | ms per call | images/s |", "|---|---|---|---|"]
    lines += [
        f"| batch {r['batch']} | {r['threads']} | {r['ms_per_call']:.3f} | {r['rows_per_s']:,.0f} |"
        for r in report["raw"]
    ]
    peer = {r["concurrency"]: r for r in report["peer"]["single"]}
    lines += [
        "",
        "| workers x threads | 1 image c=1: req/s, p50/p99 ms | 1 image c=32: req/s, p50/p99 ms, vs peer "
        "| V2 1024 images, 1 in flight, vs in process at one worker's threads "
        "| V2 1024 images, 2 per worker in flight, vs in process at all the threads | cold start |",
        "|---|---|---|---|---|---|",
    ]
    for s in report["shapes"]:
        one, many = s["single"]
        bulk_one, bulk_many = s["bulk"]
        mark = " (default)" if [s["workers"], s["threads"]] == report["default"] else ""
        worker_raw, all_raw = s["raw_1024_worker"]["rows_per_s"], s["raw_1024"]["rows_per_s"]
        lines.append(
            f"| {s['workers']} x {s['threads']}{mark} | {one['rps']:,.0f}, {one['p50_ms']:.1f}/{one['p99_ms']:.1f} "
            f"| {many['rps']:,.0f}, {many['p50_ms']:.1f}/{many['p99_ms']:.1f}, {_ratio(many['rps'], peer[32]['rps'])} "
            f"| {bulk_one['images_per_s']:,.0f}/s, p50 {bulk_one['p50_ms']:.1f} ms, "
            f"{bulk_one['images_per_s'] / worker_raw:.0%} of {worker_raw:,.0f}/s "
            f"| {bulk_many['images_per_s']:,.0f}/s, {bulk_many['images_per_s'] / all_raw:.0%} of {all_raw:,.0f}/s "
            f"| {s['cold_start_s']:.1f} s |"
        )
    lines.append(
        f"| FastAPI peer ({report['peer'].get('workers', 1)} workers) "
        f"| {peer[1]['rps']:,.0f}, {peer[1]['p50_ms']:.1f}/{peer[1]['p99_ms']:.1f} "
        f"| {peer[32]['rps']:,.0f}, {peer[32]['p50_ms']:.1f}/{peer[32]['p99_ms']:.1f}, 1.00x | - | - "
        f"| {report['peer']['cold_start_s']:.1f} s |"
    )
    lines += ["", "| tritonclient.http, 1024 images, one at a time | p50 ms | p90 ms | images/s |", "|---|---|---|---|"]
    for key in ("triton_quick_ack_true", "triton_quick_ack_false"):
        for label, r in report.get(key, {}).items():
            server = "server TCP_QUICKACK " + ("on" if key.endswith("true") else "off")
            client = "client unchanged (Nagle on)" if label == "unchanged" else "client with TCP_NODELAY"
            lines.append(f"| {server}, {client} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['images_per_s']:,.0f} |")
    local, v2 = report["client"]["local"], report["client"]["v2"]
    lines += [
        "",
        f"| tinyserve-score, {local['rows']:,} LeNet images | rows/s (its own clock) | rows/s (wall, with start-up) |",
        "|---|---|---|",
        f"| --local | {local['rows_per_s']:,.0f} | {local['rows_per_s_wall']:,.0f} |",
        f"| --url (V2 binary) | {v2['rows_per_s']:,.0f} | {v2['rows_per_s_wall']:,.0f} |",
        "",
        grpc_cases.table(report["grpc"]),
    ]
    return "\n".join(lines)


def targets(report: dict[str, Any]) -> list[tuple[str, float, str, bool]]:
    """(target, measured, bar, met), each a ratio taken within this run."""
    default = next(s for s in report["shapes"] if [s["workers"], s["threads"]] == report["default"])
    peer32 = report["peer"]["single"][1]
    c32 = default["single"][1]
    bulk = default["bulk"][1]["images_per_s"] / default["raw_1024"]["rows_per_s"]
    local, v2 = report["client"]["local"], report["client"]["v2"]
    # the Nagle stall (BENCHMARKS.md): tritonclient.http unchanged, against the server with and without prompt ACKs
    without = report.get("triton_quick_ack_false", report["triton_quick_ack_true"])
    stall = report["triton_quick_ack_true"]["unchanged"]["p50_ms"] / without["unchanged"]["p50_ms"]
    rows = [
        ("single-image LeNet, typed route, c=32 / FastAPI peer", c32["rps"] / peer32["rps"], 1.5, True),
        ("bulk V2 binary / in-process ONNX Runtime, same threads", bulk, 0.70, True),
        ("p99 / p50, single images at c=32", c32["p99_ms"] / c32["p50_ms"], 3.0, False),
        ("tinyserve-score V2 / --local (own clock)", v2["rows_per_s"] / local["rows_per_s"], 0.70, True),
        (
            "tinyserve-score V2 / --local (wall, with start-up)",
            v2["rows_per_s_wall"] / local["rows_per_s_wall"],
            0.70,
            True,
        ),
        ("tritonclient.http p50, prompt ACKs / without (full runs)", stall, 1.0, False),
        (  # a refusal never waits behind the queue: on 2 shared cores it still waits for the event loop
            "overload: p99 of a 429 / p99 of a served request",
            report["overload"]["429"]["p99_ms"] / report["overload"]["200"]["p99_ms"],
            1.0,
            False,
        ),
        *grpc_cases.targets(report["grpc"]),
    ]
    return [
        (name, value, f"{'>=' if higher else '<='} {bar:g}", value >= bar if higher else value <= bar)
        for name, value, bar, higher in rows
    ]


def targets_table(report: dict[str, Any]) -> str:
    lines = ["| target | measured | bar | met |", "|---|---|---|---|"]
    for name, value, bar, met in targets(report):
        lines.append(f"| {name} | {value:.2f} | {bar} | {'yes' if met else 'no'} |")
    return "\n".join(lines)


def chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [f"{s['workers']}x{s['threads']}" for s in report["shapes"]] + ["peer"]
    single = [s["single"][1]["rps"] for s in report["shapes"]] + [report["peer"]["single"][1]["rps"]]
    left.bar(labels, single, color=[*(["C0"] * len(report["shapes"])), "C7"])
    left.set_ylabel("requests/s")
    left.set_title("one LeNet image per request, c=32")
    bulk_labels = [f"{s['workers']}x{s['threads']}" for s in report["shapes"]]
    bulk = [s["bulk"][1]["images_per_s"] for s in report["shapes"]]
    raw = [s["raw_1024"]["rows_per_s"] for s in report["shapes"]]
    x = np.arange(len(bulk_labels))
    right.bar(x - 0.2, bulk, 0.4, label="server, V2 binary, 2 per worker in flight")
    right.bar(x + 0.2, raw, 0.4, label="in process, same threads", color="C7")
    right.set_xticks(x, bulk_labels)
    right.set_ylabel("LeNet images/s")
    right.set_title("bulk, 1024 images per request")
    right.legend()
    fig.suptitle(report["machine"])
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def publish(text: str, report: dict[str, Any]) -> None:
    doc = REPO / "BENCHMARKS.md"
    marker_start, marker_end = "<!-- bench:start -->", "<!-- bench:end -->"
    head, rest = doc.read_text().split(marker_start)
    _, tail = rest.split(marker_end)
    doc.write_text(f"{head}{marker_start}\n{text}\n{marker_end}{tail}")
    chart(report, REPO / "benchmarks" / "bench.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests and rows (about 2 minutes on 2 cores)")
    parser.add_argument("--publish", action="store_true", help="rewrite BENCHMARKS.md and benchmarks/bench.png")
    args = parser.parse_args()
    started = time.perf_counter()
    report = run(args.quick)
    text = tables(report) + "\n\n" + targets_table(report)
    (RESULTS / "bench.json").write_text(json.dumps(report, indent=2))
    chart(report, RESULTS / "bench.png")
    print(text)
    print(f"\n{time.perf_counter() - started:.0f} s; results in {RESULTS.relative_to(REPO)}/bench.json and bench.png")
    if args.publish:
        publish(text, report)


if __name__ == "__main__":
    main()
