"""`make bench-peers`: tinyserve against the frameworks a user would pick instead, on the same LeNet ONNX file.

    .venv/bin/python -m benchmarks.peers [--rounds N] [--seconds S] [--only NAME,...] [--quick] [--publish]

Servers one at a time, in rounds: each round starts every server afresh, in an order rotated by one from the
round before, and the table gives each figure's median over the rounds. For each server: the seconds from
its start to its ready route's first 200; its answers checked against ONNX Runtime in process on 8 digits
(a server that fails is reported, not timed); the RSS of its process tree at rest; one image a request at
c=1 on the fresh server, at c=32 (the burst), and at c=1 again right after; 1024 images a request, 2 in
flight, in the fastest form it documents; the RSS after that load. The load generator is benchmarks/load.py
(aiohttp, in its own process) for every server. Prints the table and tinyserve's targets (ratios to the
best framework of the run), writes them to benchmarks/results/peers.md (and every figure to peers.json);
--publish also puts them into BENCHMARKS.md between its peers markers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import cases
from benchmarks.grpc_cases import grpc_load
from benchmarks.peers import DIGITS, PEERS, Form, Peer, Running, check, start
from benchmarks.server import REPO, costed
from service.machine import available_cores

RESULTS = REPO / "benchmarks" / "results"
BULK = 1024


def load(running: Running, form: Form, x: np.ndarray, concurrency: int, seconds: float, warm_up: int) -> dict[str, Any]:
    """One timed case, with what it cost the server (benchmarks.server.costed) and the load generator."""
    body, headers = form.encode(x)
    pid = running.process.pid
    if form.grpc:  # the same shape of load, from grpcio's client (benchmarks.grpc_cases)
        result = costed(pid, grpc_load, running.grpc, len(x), concurrency, 10**9, seconds=seconds, warm_up=warm_up)
    else:
        url = running.url + form.path
        result = costed(pid, cases.load, url, body, concurrency, 10**9, headers, seconds=seconds, warm_up=warm_up)
    result["client_cpu_us"] = result["client_cpu_s"] / max(result["requests"], 1) * 1e6
    return result


def measure(peer: Peer, scratch: Path, seconds: float, workers: int) -> dict[str, Any]:
    """One server, started afresh: checked, then timed case by case."""
    running = start(peer, scratch / f"{peer.name}.log", workers=workers)
    try:
        if not peer.fixed:  # the floor's answer is fixed: nothing to compare
            check(running)
        result: dict[str, Any] = {"cold_start_s": running.cold_start_s, "rss_rest_mib": running.rss_mib()}
        one = np.load(DIGITS)[:1]
        single: dict[str, dict[str, Any]] = {form.name: {} for form in peer.single}
        for form in peer.single:  # the fresh server: 20 requests open the connection and warm up
            single[form.name]["c1"] = load(running, form, one, 1, seconds, warm_up=20)
        for form in peer.single:
            single[form.name]["c32"] = load(running, form, one, 32, seconds, warm_up=64)
        for form in peer.single:  # right after the burst, as it left the server
            single[form.name]["c1_after"] = load(running, form, one, 1, seconds, warm_up=1)
        result["single"] = single
        if peer.floor:
            return result | {"rss_load_mib": running.rss_mib()}
        bulk = load(running, peer.bulk, np.resize(np.load(DIGITS), (BULK, 1, 32, 32)), 2, seconds, warm_up=2)
        result["bulk"] = bulk | {"images_per_s": bulk["rps"] * BULK}
        result["rss_load_mib"] = running.rss_mib()
        return result
    finally:
        running.stop()


def rotations(peers: list[Peer], rounds: int) -> Iterator[tuple[int, list[Peer]]]:
    for r in range(rounds):
        shift = r % len(peers)
        yield r, peers[shift:] + peers[:shift]


def median_of(runs: list[dict[str, Any]], *path: str) -> float | None:
    values = []
    for run in runs:
        value: Any = run
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, int | float):
            values.append(float(value))
    return statistics.median(values) if values else None


def run(peers: list[Peer], rounds: int, seconds: float) -> dict[str, Any]:
    cores = available_cores()
    workers = cores.available  # one worker (or replica) per core, each with one ONNX Runtime thread
    report: dict[str, Any] = {
        "machine": f"{cores.describe()}, {platform.processor() or platform.machine()}",
        "workers": workers,
        "rounds": rounds,
        "seconds": seconds,
        "load_average_start": os.getloadavg(),
        "runs": {peer.name: [] for peer in peers},
        "errors": {peer.name: [] for peer in peers},
    }
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        for r, order in rotations(peers, rounds):
            for peer in order:
                print(f"round {r + 1}/{rounds}: {peer.title}", flush=True)
                for attempt in (1, 2):  # a second start where the first failed (a server once exited at start)
                    scratch = Path(tmp) / f"{peer.name}-{r}-{attempt}"
                    scratch.mkdir()
                    try:
                        report["runs"][peer.name].append(measure(peer, scratch, seconds, workers))
                        break
                    except Exception as error:  # reported in the table; the other servers are still measured
                        report["errors"][peer.name].append(f"round {r + 1}, try {attempt}: {error}"[:2000])
                        print(f"  {peer.title} failed: {report['errors'][peer.name][-1][:400]}", flush=True)
            ort_row = cases.raw_onnxruntime("lenet", BULK, workers, seconds)
            report.setdefault("onnxruntime", []).append(
                ort_row | {"batch1_ms": cases.raw_onnxruntime("lenet", 1, 1, min(seconds, 1.0))["ms_per_call"]}
            )
    report["load_average_end"] = os.getloadavg()
    return report


def _pin(peer: Peer) -> str:
    return f" ({peer.pin()})" if peer.pin() else ""


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _case(runs: list[dict[str, Any]], form: Form, case: str) -> tuple[float | None, ...]:
    """p50, p99, requests/s and errors of one single-image case, medians over the runs."""
    return tuple(median_of(runs, "single", form.name, case, key) for key in ("p50_ms", "p99_ms", "rps", "errors"))


def table(report: dict[str, Any], peers: list[Peer]) -> str:
    load_start, load_end = report["load_average_start"], report["load_average_end"]
    lines = [
        f"Machine: {report['machine']}; {report['workers']} workers or replicas x 1 ONNX Runtime thread for each "
        f"framework, tinyserve at its defaults. Medians of {report['rounds']} round(s), "
        f"{report['seconds']:g} s a case. "
        f"Load average (1, 5, 15 min) {load_start[0]:.1f} / {load_start[1]:.1f} / {load_start[2]:.1f} at the start, "
        f"{load_end[0]:.1f} / {load_end[1]:.1f} / {load_end[2]:.1f} at the end.",
        "",
        "| server | 1 image: form | c=1 p50 / p99 ms | c=1 after a burst p50 / p99 ms | c=32 req/s, p99 ms "
        "| 1024 images, 2 in flight: form, images/s | cold start s | RSS at rest / after load MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for peer in peers:
        runs = report["runs"][peer.name]
        if not runs:
            why = "; ".join(report["errors"][peer.name])[:300] or "not measured"
            lines.append(f"| {peer.title}{_pin(peer)} | failed: {why.replace('|', '/').replace(chr(10), ' ')} |||||||")
            continue
        for i, form in enumerate(peer.single):
            c1, after, c32 = (_case(runs, form, case) for case in ("c1", "c1_after", "c32"))
            flagged = " (errors)" if any(e for *_, e in (c1, after, c32)) else ""
            row = [
                f"{peer.title}{_pin(peer)}" if i == 0 else "",
                form.name + flagged,
                f"{_ms(c1[0])} / {_ms(c1[1])}",
                f"{_ms(after[0])} / {_ms(after[1])}",
                f"{_count(c32[2])}, {_ms(c32[1])}",
            ]
            if i == 0:
                bulk_errors = median_of(runs, "bulk", "errors")
                row += [
                    f"{peer.bulk.name}, {_count(median_of(runs, 'bulk', 'images_per_s'))}"
                    + (" (errors)" if bulk_errors else ""),
                    _ms(median_of(runs, "cold_start_s")),
                    f"{_count(median_of(runs, 'rss_rest_mib'))} / {_count(median_of(runs, 'rss_load_mib'))}",
                ]
            else:
                row += ["", "", ""]
            lines.append("| " + " | ".join(row) + " |")
        if report["errors"][peer.name]:
            first = report["errors"][peer.name][0].splitlines()[0][:200].replace("|", "/")
            failed = len(report["errors"][peer.name])
            lines.append(f"| | {failed} failed attempt(s), {len(runs)} measured; the first: {first} |||||||")
    ort = report.get("onnxruntime", [])
    if ort:
        lines.append(
            f"| ONNX Runtime in process, {report['workers']} threads (1 image: 1 thread) | one call | "
            f"{median_of(ort, 'batch1_ms') or 0:.3f} ms (batch 1) | | | "
            f"{_count(median_of(ort, 'rows_per_s'))} | | |"
        )
    return "\n".join([*lines, "", cpu_table(report, peers)])


def cpu_table(report: dict[str, Any], peers: list[Peer]) -> str:
    """Where the time goes: the CPU each case cost the server's whole process tree, per request or image."""
    lines = [
        "| server | 1 image: form | server CPU a request, c=1 / after a burst / c=32, us "
        "| c=32: the busiest process's share of it | load generator's CPU a request, c=32, us "
        "| 1024 images: server CPU an image, us (the busiest process's share) |",
        "|---|---|---|---|---|---|",
    ]
    for peer in peers:
        runs = report["runs"][peer.name]
        if not runs:
            continue
        for i, form in enumerate(peer.single):
            cpu = [median_of(runs, "single", form.name, case, "server_cpu_us") for case in ("c1", "c1_after", "c32")]
            bulk = median_of(runs, "bulk", "server_cpu_us")
            row = [
                f"{peer.title}{_pin(peer)}" if i == 0 else "",
                form.name,
                " / ".join(_count(value) for value in cpu),
                _share(median_of(runs, "single", form.name, "c32", "busiest_share")),
                _count(median_of(runs, "single", form.name, "c32", "client_cpu_us")),
                f"{_ms(None if bulk is None else bulk / BULK)} ({_share(median_of(runs, 'bulk', 'busiest_share'))})"
                if i == 0
                else "",
            ]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def targets(report: dict[str, Any], peers: list[Peer]) -> str:
    """Issue 20's targets for tinyserve, each a ratio of medians from this run (empty without tinyserve)."""
    runs = report["runs"]
    frameworks = [peer for peer in peers if peer.name != "tinyserve" and not peer.floor and runs[peer.name]]
    tinyserve = next((peer for peer in peers if peer.name == "tinyserve" and runs[peer.name]), None)
    if tinyserve is None or not frameworks:
        return ""

    def of(peer: Peer, *path: str) -> float:
        return median_of(runs[peer.name], *path) or float("nan")

    def one(peer: Peer, case: str, key: str, form: str = "") -> float:  # a single-image figure, first form
        return of(peer, "single", form or peer.single[0].name, case, key)

    forms = [form.name for form in tinyserve.single]  # typed JSON first, then V2 JSON and gRPC: the same bars
    c32 = max(frameworks, key=lambda peer: one(peer, "c32", "rps"))
    c1 = min(frameworks, key=lambda peer: one(peer, "c1", "p50_ms"))
    after = min(frameworks, key=lambda peer: one(peer, "c1_after", "p50_ms"))
    bulk = max(frameworks, key=lambda peer: of(peer, "bulk", "images_per_s"))
    cold = min(frameworks, key=lambda peer: of(peer, "cold_start_s"))
    light = min(frameworks, key=lambda peer: of(peer, "rss_rest_mib"))
    raw = median_of(report.get("onnxruntime", []), "rows_per_s") or float("nan")
    bulk_images = of(tinyserve, "bulk", "images_per_s")
    Row = tuple[str, float, bool, float]  # (what, ratio, at least (True) or at most, bar)

    def single_rows(peer: Peer, form: str) -> list[Row]:
        return [
            (f"c=32 req/s, {form} / {c32.title}", one(peer, "c32", "rps", form) / one(c32, "c32", "rps"), True, 1.5),
            (f"c=1 p50, {form} / {c1.title}", one(peer, "c1", "p50_ms", form) / one(c1, "c1", "p50_ms"), False, 1),
            (f"c=1 p50 after a burst, {form} / {after.title}", one(peer, "c1_after", "p50_ms", form)
             / one(after, "c1_after", "p50_ms"), False, 1),
        ]  # fmt: skip

    def server_rows(peer: Peer) -> list[Row]:
        return [
            (f"cold start / {cold.title}", of(peer, "cold_start_s") / of(cold, "cold_start_s"), False, 2),
            (f"RSS at rest / {light.title}", of(peer, "rss_rest_mib") / of(light, "rss_rest_mib"), False, 1.2),
        ]

    rows = [row for form in forms for row in single_rows(tinyserve, form)]
    rows += [
        ("bulk V2 binary / ONNX Runtime in process", bulk_images / raw, True, 0.9),
        (f"bulk V2 binary / {bulk.title}, {bulk.bulk.name}", bulk_images / of(bulk, "bulk", "images_per_s"), True, 1),
        *server_rows(tinyserve),
    ]
    lines = ["| tinyserve / the best framework of this run | ratio | target | met |", "|---|---|---|---|"]
    for what, value, higher, bar in rows:
        met = value >= bar if higher else value <= bar
        lines.append(f"| {what} | {value:.2f} | {'>=' if higher else '<='} {bar:g} | {'yes' if met else 'no'} |")
    for floor in (peer for peer in peers if peer.floor and runs[peer.name]):
        # the same ratios for a service that does no work on the same framework: where tinyserve's can go at best
        lines += ["", f"| {floor.title} / the best framework of this run | ratio | tinyserve's target |"]
        lines.append("|---|---|---|")
        for what, value, higher, bar in [*single_rows(floor, floor.single[0].name), *server_rows(floor)]:
            lines.append(f"| {what} | {value:.2f} | {'>=' if higher else '<='} {bar:g} |")
    return "\n".join(lines)


def publish(text: str) -> None:
    doc = REPO / "BENCHMARKS.md"
    marker_start, marker_end = "<!-- peers:start -->", "<!-- peers:end -->"
    head, rest = doc.read_text().split(marker_start)
    _, tail = rest.split(marker_end)
    doc.write_text(f"{head}{marker_start}\n{text}\n{marker_end}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all the servers (default: 3)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds of each timed case (default: 5)")
    parser.add_argument("--only", help="comma-separated server names (default: all installed)")
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s cases (about 3 minutes on 2 cores)")
    parser.add_argument("--publish", action="store_true", help="put the table into BENCHMARKS.md")
    args = parser.parse_args()
    rounds, seconds = (1, 2.0) if args.quick else (args.rounds, args.seconds)
    wanted = args.only.split(",") if args.only else [peer.name for peer in PEERS]
    unknown = sorted(set(wanted) - {peer.name for peer in PEERS})
    if unknown:
        parser.error(f"--only: no server named {', '.join(unknown)}; the servers: {', '.join(p.name for p in PEERS)}")
    peers = []
    for peer in PEERS:
        if peer.name not in wanted:
            continue
        if not peer.installed():
            print(f"{peer.title}: skipped, .venv-peers/{peer.name} is not installed (`make bench-peers` installs it)")
            continue
        peers.append(peer)
    started = time.perf_counter()
    report = run(peers, rounds, seconds)
    text = "\n\n".join(part for part in (table(report, peers), targets(report, peers)) if part)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "peers.json").write_text(json.dumps(report, indent=2))
    (RESULTS / "peers.md").write_text(text + "\n")
    print(text)
    print(f"\n{time.perf_counter() - started:.0f} s; written to {RESULTS.relative_to(REPO)}/peers.md and peers.json")
    if args.publish:
        publish(text)


if __name__ == "__main__":
    main()
