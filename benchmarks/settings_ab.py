"""The same server under different settings, started afresh in turn: what a setting buys, measured served.

    .venv/bin/python -m benchmarks.settings_ab [--rounds N] [--requests N] [--single] NAME=SETTING=VALUE,... ...

    .venv/bin/python -m benchmarks.settings_ab before=TINYSERVE_BULK_THREADS=1,TINYSERVE_MALLOC_KEEP_MIB=0 now=

Each variant names the settings it changes (none: the defaults). In each round every variant's server starts
afresh, in an order rotated by one from the round before, and gets: 1024-image LeNet requests over V2 HTTP
binary and over gRPC, 2 and then 4 in flight (`--requests` each), with the server's CPU an image; with
`--single`, one image a request on the typed route at c=32 too; and the RSS of its process tree at rest and
after the load. Prints each round's figures and then the medians, beside ONNX Runtime in process (one
session of two threads given the whole batch, as the other tables' in-process column).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import psutil

from benchmarks import cases
from benchmarks.grpc_cases import grpc_load
from benchmarks.server import REPO, costed, launch, stop, wait_ready

RESULTS = REPO / "benchmarks" / "results"


def variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, settings = text.partition("=")
    env = dict(setting.split("=", 1) for setting in settings.split(",") if setting)
    if not name or any(not key.startswith("TINYSERVE_") for key in env):
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=TINYSERVE_SETTING=VALUE,... (or NAME=)")
    return name, env


def rss_mib(pid: int) -> int:
    root = psutil.Process(pid)
    return round(sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20)


def measure(env: dict[str, str], log: Path, requests: int, single: bool) -> dict[str, float]:
    server = launch(log, env)
    row: dict[str, float] = {}
    try:
        wait_ready(server, timeout=180)
        row["RSS at rest MiB"] = rss_mib(server.process.pid)
        for in_flight in (2, 4):
            v2 = costed(server.process.pid, cases.bulk_v2, server.url, 1024, in_flight, requests)
            grpc = costed(server.process.pid, grpc_load, server.grpc, 1024, in_flight, requests)
            for form, result in (("V2 binary", v2), ("gRPC", grpc)):
                row[f"{form} {in_flight} in flight, images/s"] = round(result["images_per_s"])
                row[f"{form} {in_flight} in flight, server us an image"] = round(result["server_cpu_us"] / 1024, 1)
        row["RSS after load MiB"] = rss_mib(server.process.pid)
        if single:
            typed = cases.load(f"{server.url}/v1/lenet/predict", cases.lenet_image_json(), 32, requests * 100)
            row["typed c=32 req/s"] = round(typed["rps"])
    finally:
        stop(server)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", type=variant, help="NAME=TINYSERVE_SETTING=VALUE,... (NAME=: defaults)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over the variants (default: 3)")
    parser.add_argument("--requests", type=int, default=60, help="1024-image requests a case (default: 60)")
    parser.add_argument("--single", action="store_true", help="also one image a request on the typed route, c=32")
    args = parser.parse_args()
    variants: list[tuple[str, dict[str, str]]] = args.variants
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict[str, float]]] = {name: [] for name, _ in variants}
    for round_ in range(args.rounds):
        shift = round_ % len(variants)
        for name, env in variants[shift:] + variants[:shift]:
            rows[name].append(measure(env, RESULTS / f"server-ab-{name}.log", args.requests, args.single))
            print(f"round {round_ + 1}, {name}: {rows[name][-1]}", flush=True)
    raw = cases.raw_onnxruntime("lenet", 1024, 2, 5)["rows_per_s"]
    keys = list(rows[variants[0][0]][0])
    print(f"\n| medians of {args.rounds} rounds | " + " | ".join(name for name, _ in variants) + " |")
    print("|---|" + "---|" * len(variants))
    for key in keys:
        medians = [statistics.median(row[key] for row in rows[name]) for name, _ in variants]
        print(f"| {key} | " + " | ".join(f"{m:,g}" for m in medians) + " |")
    print(f"| ONNX Runtime in process, 2 threads, images/s | {raw:,.0f} |" + " |" * (len(variants) - 1))


if __name__ == "__main__":
    main()
