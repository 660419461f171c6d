"""LeNet images scored in process: the threads engine against local Ray with 1 and 2 actors.

    .venv/bin/python -m benchmarks.ray_scoring [--rows 1000000]

Each engine runs as its own `tinyserve-score ... --local` command on the same .npy of held-out digits
(tiled), writing .jsonl. Reported: wall time of the whole command (Ray's start included), the summary's
own scoring time, and rows/s of each; the outputs must have the same bytes (their sha256 is compared).
Needs about 4.3 GB of temporary disk per million rows (the input), removed at the end.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import modelrepo
from benchmarks.digits import held_out_digits, upscale_32
from benchmarks.server import REPO

RUNS = {
    "threads (1 process, 4 chunks in flight)": [],
    "Ray, 1 actor": ["--engine", "ray", "--actors", "1"],
    "Ray, 2 actors": ["--engine", "ray", "--actors", "2"],
}


def make_input(path: Path, rows: int) -> None:
    digits = np.stack([upscale_32(image) for image in held_out_digits()[0]]).astype(np.float32)
    data = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, 32, 32))
    for start in range(0, rows, 100_000):
        n = min(100_000, rows - start)
        data[start : start + n] = np.resize(digits, (n, 32, 32))
    data.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="images to score (default: 1000000)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tinyserve-ray-bench-") as tmp:
        source = Path(tmp) / "digits.npy"
        make_input(source, args.rows)
        print(f"{args.rows:,} LeNet images, {source.stat().st_size / 2**30:.1f} GiB")
        print("| engine | wall time of the command | scoring time (summary) | rows/s (summary) |")
        print("|---|---|---|---|")
        digests = set()
        for name, options in RUNS.items():
            output = Path(tmp) / "out.jsonl"
            command = [sys.executable, "-m", "client", "lenet", str(source), str(output), "--local", "-q", *options]
            started = time.perf_counter()
            result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
            wall = time.perf_counter() - started
            summary = re.search(r"([\d,]+) rows/s, elapsed ([\d.]+) s", result.stderr)
            if result.returncode != 0 or summary is None:
                sys.exit(f"{name} failed ({result.returncode}):\n{result.stderr}")
            print(f"| {name} | {wall:.1f} s | {summary.group(2)} s | {summary.group(1)} |")
            digests.add(modelrepo.sha256_file(output))
            output.unlink()
        print("outputs byte-identical:", len(digests) == 1)


if __name__ == "__main__":
    main()
