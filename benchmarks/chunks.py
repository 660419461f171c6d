"""LeNet in ONNX Runtime, 1024 images in calls of fewer rows: what TINYSERVE_RUN_CHUNK_BYTES is measured by.

    .venv/bin/python -m benchmarks.chunks [--seconds S]

In process, no server: images/s for each number of rows per `session.run` at one intra-op thread and at two,
then two one-thread sessions side by side (the default shape's two workers on 2 cores), in calls of the whole
batch and of the rows the service would use, and one worker's session running a lone batch as the service
does (`ModelSession.run`: its calls spread over two threads, TINYSERVE_BULK_THREADS). Prints one table;
spinning off, as the service runs it.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import onnxruntime as ort

from benchmarks.server import REPO
from modelrepo import discover
from service.machine import Cores, Shape
from service.runtime import CPU, Runtime, open_session
from service.settings import Settings

ROWS = (1024, 256, 64, 32, 16, 8)
BATCH = 1024


def _session(threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(REPO / "models" / "lenet" / "1" / "model.onnx"), options, providers=[CPU])


def images_per_s(session: ort.InferenceSession, x: np.ndarray, rows: int, seconds: float) -> float:
    """1024-image batches run as calls of `rows`, repeated for about `seconds` after a warm-up."""

    def batch() -> None:
        for start in range(0, len(x), rows):
            session.run(None, {"x": x[start : start + rows]})

    return rate(batch, len(x), seconds)


def rate(batch: Callable[[], object], images: int, seconds: float) -> float:
    """Images/s of `batch` (`images` a call), called back to back for about `seconds` after one warm-up call."""
    batch()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        batch()
        done += images
    return done / (time.perf_counter() - started)


def side_by_side(x: np.ndarray, rows: int, seconds: float) -> float:
    """Two one-thread sessions, each on its own thread (ONNX Runtime lets go of the GIL while it runs)."""
    sessions = [_session(1), _session(1)]
    rates: list[float] = []
    threads = [threading.Thread(target=lambda s=s: rates.append(images_per_s(s, x, rows, seconds))) for s in sessions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds for each figure (default: 1)")
    args = parser.parse_args()
    x = np.random.default_rng(0).random((BATCH, 1, 32, 32), dtype=np.float32)
    lenet = {entry.name: entry for entry in discover(REPO / "models")}["lenet"]
    runtime = Runtime(Cores(1, None), Shape(1, 1, spinning=False), CPU, {}, chunk_bytes=Settings().run_chunk_bytes)
    served = runtime.chunk_rows(lenet.card.inputs[0]) or BATCH
    spread = open_session(lenet, replace(runtime, cores=Cores(2, None), bulk_threads=2))  # the service's own run
    one, two = _session(1), _session(2)
    print(f"| rows per call (the service's, one thread: {served}) | 1 thread, images/s | 2 threads, images/s |")
    print("|---|---|---|")
    for rows in sorted({*ROWS, served}, reverse=True):
        on_one, on_two = images_per_s(one, x, rows, args.seconds), images_per_s(two, x, rows, args.seconds)
        print(f"| {rows} | {on_one:,.0f} | {on_two:,.0f} |")
    on_two_threads = rate(lambda: spread.run(x), len(x), args.seconds)
    print(
        f"\nTwo one-thread sessions side by side: {side_by_side(x, BATCH, args.seconds):,.0f} images/s in calls of "
        f"{BATCH}, {side_by_side(x, served, args.seconds):,.0f} in calls of {served}. One one-thread session, a "
        f"batch's calls of {served} spread over 2 threads (the service's bulk): {on_two_threads:,.0f}."
    )


if __name__ == "__main__":
    main()
