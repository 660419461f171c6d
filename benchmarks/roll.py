"""`make bench`'s roll case: requests/s and p99 while model versions are loaded and unloaded, against none.

    .venv/bin/python -m benchmarks.roll [--requests N] [--concurrency C]

One server (the default worker shape, TINYSERVE_MODEL_CONTROL=explicit) on a copy of the shipped LeNet.
The same load (single pictures on the default V2 route) runs twice: once undisturbed, once while another
client rolls the model over and over (load version 2 beside 1, unload 2). Prints both, their ratio, and
the rolls done; a failed request in either run is an error. Writes benchmarks/results/roll.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from benchmarks.repository import publish, repository
from benchmarks.server import REPO, launch, stop, wait_ready

RESULTS = REPO / "benchmarks" / "results"


def _body() -> bytes:
    picture = np.zeros((1, 1, 32, 32), dtype=np.float32)
    return json.dumps(
        {"inputs": [{"name": "x", "shape": [1, 1, 32, 32], "datatype": "FP32", "data": picture.ravel().tolist()}]}
    ).encode()


def _load(url: str, body: Path, concurrency: int, requests: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.load", f"{url}/v2/models/lenet/infer", str(body), str(concurrency)]
    done = subprocess.run([*command, str(requests), "600"], cwd=REPO, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _roll(url: str, version: str, stop_rolling: threading.Event) -> list[int]:
    """Load version `version` beside 1, unload it, again and again: the failed calls, and the rolls done."""
    done, failed = 0, 0
    with httpx.Client(base_url=url, timeout=120) as client:
        while not stop_rolling.is_set():
            loaded = client.post("/v2/repository/models/lenet/load", json={})
            unloaded = client.post("/v2/repository/models/lenet/unload", json={"parameters": {"version": version}})
            failed += (loaded.status_code, unloaded.status_code) != (200, 200)
            done += 1
    return [done, failed]


def run(requests: int, concurrency: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tinyserve-roll-") as scratch:
        base = Path(scratch)
        root = repository(base / "models", "lenet")
        body = base / "body.json"
        body.write_bytes(_body())
        env = {"TINYSERVE_MODELS_DIR": str(root), "TINYSERVE_MODEL_CONTROL": "explicit"}
        server = launch(base / "server.log", env)
        try:
            wait_ready(server, timeout=180)
            steady = _load(server.url, body, concurrency, requests)
            rss_before = _rss(server.process.pid)
            version = publish(root, "lenet")
            stop_rolling = threading.Event()
            rolls: list[int] = []
            roller = threading.Thread(target=lambda: rolls.extend(_roll(server.url, version, stop_rolling)))
            roller.start()
            try:
                rolling = _load(server.url, body, concurrency, requests)
            finally:
                stop_rolling.set()
                roller.join()
            rss_after = _rss(server.process.pid)
        finally:
            stop(server)
    return {
        "concurrency": concurrency,
        "steady": steady,
        "rolling": rolling,
        "rolls": rolls[0],
        "failed_rolls": rolls[1],
        "rss_mib": {"before": rss_before / 2**20, "after_rolls": rss_after / 2**20},
    }


def _rss(pid: int) -> int:
    """The server's processes' resident memory, together."""
    family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    return sum(p.memory_info().rss for p in family)


def table(report: dict[str, Any]) -> str:
    steady, rolling = report["steady"], report["rolling"]
    rows = [
        f"| LeNet, single pictures, c={report['concurrency']} | requests/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|",
    ]
    for label, r in (("steady", steady), (f"rolling ({report['rolls']} load+unload rolls)", rolling)):
        rows.append(f"| {label} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} |")
    rps, p99 = rolling["rps"] / steady["rps"], rolling["p99_ms"] / steady["p99_ms"]
    rows.append(f"| rolling / steady | {rps:.2f}x | | {p99:.2f}x | |")
    rss = report["rss_mib"]
    rows.append(f"\nRSS of the server: {rss['before']:.0f} MiB before, {rss['after_rolls']:.0f} MiB after the rolls")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.roll", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000, help="requests per run (default: 20000)")
    parser.add_argument("--concurrency", type=int, default=32, help="clients at once (default: 32)")
    args = parser.parse_args()
    report = run(args.requests, args.concurrency)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "roll.json").write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    failures = report["steady"]["errors"] + report["rolling"]["errors"] + report["failed_rolls"]
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
