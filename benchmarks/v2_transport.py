"""How much faster a batch of LeNet images travels to the V2 route as binary than as JSON.

    .venv/bin/python -m benchmarks.v2_transport [--images 1024] [--repeats 10]

Starts a server on a free port, sends the same batch through Triton's client both ways (outputs
always binary), and prints the median time per request and the ratio, measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tritonclient.http as triton

from benchmarks.server import running


def _time(client: triton.InferenceServerClient, x: np.ndarray, binary: bool, repeats: int) -> float:
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    wanted = [triton.InferRequestedOutput("logits", binary_data=True)]
    client.infer("lenet", [tensor], outputs=wanted)  # warm-up
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        client.infer("lenet", [tensor], outputs=wanted)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1024, help="images per request (default: 1024)")
    parser.add_argument("--repeats", type=int, default=10, help="timed requests per transport (default: 10)")
    args = parser.parse_args()
    x = np.random.default_rng(0).random((args.images, 1, 32, 32), dtype=np.float32)
    env = {"TINYSERVE_MAX_BODY_BYTES": str(256 * 1024 * 1024)}  # a JSON batch of 1024 images is ~20 MB
    with tempfile.TemporaryDirectory() as tmp, running(Path(tmp) / "server.log", env) as server:
        client = triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=300)
        binary = _time(client, x, binary=True, repeats=args.repeats)
        as_json = _time(client, x, binary=False, repeats=args.repeats)
        client.close()
    print(f"{args.images} LeNet images per request, median of {args.repeats}:")
    print(f"  binary tensors: {binary * 1000:8.1f} ms  ({args.images / binary:8.0f} images/s)")
    print(f"  JSON tensors:   {as_json * 1000:8.1f} ms  ({args.images / as_json:8.0f} images/s)")
    print(f"  binary is {as_json / binary:.1f}x faster")


if __name__ == "__main__":
    main()
