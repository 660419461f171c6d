"""`make bench`: what serving costs, against raw ONNX Runtime and a plain FastAPI peer, in one run.

    .venv/bin/python -m benchmarks [--quick] [--publish]

Prints one table, writes benchmarks/results/bench.json and bench.png; --publish also rewrites the
table and chart in BENCHMARKS.md. Every figure sits next to its ratio to a baseline measured in the
same run: on a shared, noisy machine absolute numbers move between runs, ratios much less.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort

from tests.helpers import held_out_digits, upscale_32
from tests.server import REPO, free_port, launch, stop, wait_ready

RESULTS = REPO / "benchmarks" / "results"
THREADS = os.cpu_count() or 1


def raw_onnxruntime(seconds: float) -> list[dict[str, Any]]:
    """Case 1: session.run in process, after warm-up, at the server's thread count."""
    rows = []
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    for name, batch in (("lenet", 1), ("lenet", 64), ("lenet", 256), ("lenet", 1024), ("linear", 1)):
        session = ort.InferenceSession(
            str(REPO / "models" / name / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        shape = (batch, 1, 32, 32) if name == "lenet" else (batch, 1)
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        for _ in range(20):
            session.run(None, {"x": x})
        calls, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            session.run(None, {"x": x})
            calls += 1
        elapsed = time.perf_counter() - started
        rows.append(
            {
                "model": name,
                "batch": batch,
                "ms_per_call": elapsed / calls * 1000,
                "rows_per_s": calls * batch / elapsed,
            }
        )
    return rows


def _load(url: str, body: bytes, concurrency: int, requests: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        f.write(body)
        f.flush()
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.load", url, f.name, str(concurrency), str(requests), "60"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def bodies() -> dict[str, bytes]:
    images8, _ = held_out_digits()
    return {
        "lenet": json.dumps({"images": [upscale_32(images8[0]).tolist()]}).encode(),
        "linear": json.dumps({"x": [1.5]}).encode(),
    }


def single_rows(base: str, requests: int) -> list[dict[str, Any]]:
    """Cases 2 and 3: one row per request, concurrency 1 and 32."""
    rows = []
    for model, body in bodies().items():
        for concurrency in (1, 32):
            result = _load(f"{base}/v1/{model}/predict", body, concurrency, requests * (4 if concurrency > 1 else 1))
            rows.append({"model": model, "concurrency": concurrency} | result)
    return rows


def start_tinyserve(log: Path, env: dict[str, str]) -> tuple[Any, float]:
    started = time.perf_counter()
    server = launch(log, env)
    wait_ready(server, timeout=120)
    return server, time.perf_counter() - started


def start_peer(log: Path) -> tuple[subprocess.Popen[bytes], str, float]:
    port = free_port()
    started = time.perf_counter()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "benchmarks.peers.fastapi_peer:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        cwd=REPO,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
        if process.poll() is not None:
            raise RuntimeError(log.read_text())
    return process, url, time.perf_counter() - started


def bulk(base: str, images: Path, rows: int) -> list[dict[str, Any]]:
    """Case 4: the batch client over a file of LeNet images: in process, V2 binary, typed JSON."""
    results = []
    for mode, args in (
        ("--local", ["--local"]),
        ("--url v2 binary", ["--url", base]),
        ("--url json", ["--url", base, "--protocol", "json"]),
    ):
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "client", "lenet", str(images), f"{tmp}/out.jsonl", *args, "--quiet"],
                cwd=REPO,
                check=True,
                capture_output=True,
            )
            elapsed = time.perf_counter() - started
        results.append({"mode": mode, "rows": rows, "seconds": elapsed, "rows_per_s": rows / elapsed})
    return results


def run(quick: bool) -> dict[str, Any]:
    requests = 200 if quick else 1000
    bulk_rows = 10_000 if quick else 100_000
    RESULTS.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"machine": f"{THREADS} cores", "threads": THREADS, "requests": requests}
    print("case 1: raw ONNX Runtime", flush=True)
    report["raw"] = raw_onnxruntime(0.5 if quick else 2.0)
    images = RESULTS / "bulk-images.npy"
    np.save(images, np.random.default_rng(0).random((bulk_rows, 32, 32), dtype=np.float32))
    for label, env in (("tinyserve", {}), ("tinyserve, batching off", {"TINYSERVE_BATCHING": "false"})):
        print(f"case 2: {label}", flush=True)
        server, cold = start_tinyserve(RESULTS / f"{label.replace(', ', '-').replace(' ', '_')}.log", env)
        try:
            report[label] = {"cold_start_s": cold, "single": single_rows(server.url, requests)}
            if not env:
                print("case 4: bulk scoring", flush=True)
                report["bulk"] = bulk(server.url, images, bulk_rows)
        finally:
            stop(server)
    print("case 3: FastAPI peer", flush=True)
    process, url, cold = start_peer(RESULTS / "peer.log")
    try:
        report["peer"] = {"cold_start_s": cold, "single": single_rows(url, requests)}
    finally:
        process.terminate()
        process.wait()
    images.unlink()
    return report


def table(report: dict[str, Any]) -> str:
    lines = ["| case | figure | ratio to baseline |", "|---|---|---|"]
    raw = {(r["model"], r["batch"]): r for r in report["raw"]}
    base = raw[("lenet", 1)]["rows_per_s"]
    for (model, batch), r in raw.items():
        lines.append(
            f"| 1. raw ORT {model} batch {batch} | {r['ms_per_call']:.3f} ms/call, {r['rows_per_s']:,.0f} rows/s"
            f" | {r['rows_per_s'] / base:.1f}x LeNet batch 1 rows/s |"
        )
    peer = {(r["model"], r["concurrency"]): r for r in report["peer"]["single"]}
    off = {(r["model"], r["concurrency"]): r for r in report["tinyserve, batching off"]["single"]}
    for label in ("tinyserve", "tinyserve, batching off", "peer"):
        for r in report[label]["single"]:
            key = (r["model"], r["concurrency"])
            name = "3. FastAPI peer" if label == "peer" else f"2. {label}"
            ratio = f"{r['rps'] / peer[key]['rps']:.2f}x peer req/s"
            if label == "tinyserve":
                ratio += f", {r['rps'] / off[key]['rps']:.2f}x batching off"
            lines.append(
                f"| {name}, {r['model']} c={r['concurrency']} | {r['rps']:,.0f} req/s, p50 {r['p50_ms']:.1f} ms, "
                f"p99 {r['p99_ms']:.1f} ms (load generator CPU {r['client_cpu_s'] / r['seconds']:.0%}) | "
                f"{ratio}; p99/p50 {r['p99_ms'] / r['p50_ms']:.1f} |"
            )
    ort_1024 = raw[("lenet", 1024)]["rows_per_s"]
    for r in report["bulk"]:
        lines.append(
            f"| 4. bulk {r['rows']:,} LeNet images, {r['mode']} | {r['rows_per_s']:,.0f} images/s "
            f"| {r['rows_per_s'] / ort_1024:.0%} of raw ORT batch 1024 |"
        )
    cold, peer_cold = report["tinyserve"]["cold_start_s"], report["peer"]["cold_start_s"]
    lines.append(
        f"| 5. cold start to /readyz 200 | tinyserve {cold:.1f} s, peer {peer_cold:.1f} s | "
        f"{cold / peer_cold:.1f}x peer |"
    )
    return "\n".join(lines)


def chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels, series = [], {"tinyserve": [], "tinyserve, batching off": [], "peer": []}
    for r in report["peer"]["single"]:
        labels.append(f"{r['model']}\nc={r['concurrency']}")
        for name in series:
            match = next(
                s for s in report[name]["single"] if (s["model"], s["concurrency"]) == (r["model"], r["concurrency"])
            )
            series[name].append(match["rps"])
    width = 0.27
    for i, (name, values) in enumerate(series.items()):
        left.bar(
            np.arange(len(labels)) + (i - 1) * width, values, width, label="FastAPI peer" if name == "peer" else name
        )
    left.set_xticks(range(len(labels)), labels)
    left.set_ylabel("requests/s (one row per request)")
    left.legend()
    left.set_title("single-row requests")
    modes = [r["mode"] for r in report["bulk"]] + ["raw ORT\nbatch 1024"]
    values = [r["rows_per_s"] for r in report["bulk"]] + [
        next(r["rows_per_s"] for r in report["raw"] if r["batch"] == 1024)
    ]
    right.barh(modes, values, color=["C0", "C1", "C2", "C7"])
    right.set_xlabel("LeNet images/s")
    right.set_title("bulk scoring")
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def publish(report: dict[str, Any], text: str) -> None:
    doc = REPO / "BENCHMARKS.md"
    marker_start, marker_end = "<!-- bench:start -->", "<!-- bench:end -->"
    content = doc.read_text()
    head, rest = content.split(marker_start)
    _, tail = rest.split(marker_end)
    doc.write_text(f"{head}{marker_start}\n{text}\n{marker_end}{tail}")
    chart(report, REPO / "benchmarks" / "bench.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests and rows (a smoke run)")
    parser.add_argument("--publish", action="store_true", help="rewrite BENCHMARKS.md and benchmarks/bench.png")
    args = parser.parse_args()
    started = time.perf_counter()
    report = run(args.quick)
    text = table(report)
    (RESULTS / "bench.json").write_text(json.dumps(report, indent=2))
    chart(report, RESULTS / "bench.png")
    print(text)
    print(f"\n{time.perf_counter() - started:.0f} s; results in {RESULTS.relative_to(REPO)}/bench.json and bench.png")
    if args.publish:
        publish(report, text)


if __name__ == "__main__":
    main()
