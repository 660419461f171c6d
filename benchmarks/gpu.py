"""The figures of BENCHMARKS.md's GPU section, on a machine with an NVIDIA GPU (`make test-gpu` runs it).

    python -m benchmarks.gpu [--requests 200]

LeNet in process on CUDA (the server's options) and on the CPU (all available cores); then through a
server on CUDA: V2 binary bulk (1024 images a request, 1 and 4 in flight) against in-process CUDA, and
single-image latency on the typed route and over V2. Prints one markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import cases
from benchmarks.server import running
from service import cuda
from service.machine import available_cores

OPTIONS = cuda.provider_options(device_id=0, tf32=False, conv_algo_search="HEURISTIC")  # the server's defaults


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="requests per case through the server")
    args = parser.parse_args()
    cuda.preload_libraries()
    cores = available_cores().available
    rows: list[tuple[str, str, str]] = []
    on_cuda: dict[int, dict[str, float]] = {}
    for batch in (1, 1024):
        on_cuda[batch] = cases.raw_onnxruntime("lenet", batch, 1, 2.0, providers=[(cuda.CUDA, OPTIONS)])
        on_cpu = cases.raw_onnxruntime("lenet", batch, cores, 2.0)
        for where, r in (
            (f"CUDA ({OPTIONS['cudnn_conv_algo_search']}, TF32 off)", on_cuda[batch]),
            (f"CPU, {cores} threads", on_cpu),
        ):
            rows.append(
                (
                    f"in process, LeNet batch {batch}, {where}",
                    f"{r['ms_per_call']:.3f} ms",
                    f"{r['rows_per_s']:,.0f} images/s",
                )
            )
    with (
        tempfile.TemporaryDirectory() as tmp,
        running(Path(tmp) / "server.log", {"TINYSERVE_PROVIDERS": "cuda"}) as server,
    ):
        for in_flight in (1, 4):
            bulk = cases.bulk_v2(server.url, 1024, in_flight, args.requests)
            share = bulk["images_per_s"] / on_cuda[1024]["rows_per_s"]
            rows.append(
                (
                    f"server on CUDA, V2 binary, 1024 images, {in_flight} in flight",
                    f"p50 {bulk['p50_ms']:.2f} ms, p99 {bulk['p99_ms']:.2f} ms",
                    f"{bulk['images_per_s']:,.0f} images/s ({share:.0%} of in-process CUDA)",
                )
            )
        single: list[tuple[str, dict[str, Any]]] = [
            ("typed route", cases.load(f"{server.url}/v1/lenet/predict", cases.lenet_image_json(), 1, args.requests)),
        ]
        body, headers = cases.v2_binary(np.zeros((1, 1, 32, 32), np.float32))
        single.append(("V2 binary", cases.load(f"{server.url}/v2/models/lenet/infer", body, 1, args.requests, headers)))
        for route, r in single:
            rows.append(
                (
                    f"server on CUDA, one image, {route}, c=1",
                    f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms",
                    f"{r['rps']:,.0f} req/s",
                )
            )
    print("| case | latency | throughput |\n|---|---|---|")
    for row in rows:
        print(f"| {' | '.join(row)} |")


if __name__ == "__main__":
    main()
