"""A worker keeps the memory of its last large bodies for the next ones: no page faulted in afresh a request."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from tests.fast.conftest import REPO

# Four 4 MiB buffers a request, as a 1024-image body passes through the socket's reads, the protocol's
# message and the joined body, freed when it is answered; minor page faults over 50 such requests.
REQUESTS = """
import json, resource, sys
from service.runtime import tune_malloc
took = tune_malloc(int(sys.argv[1]))
def faults(): return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def request(): bufs = [bytearray(4 << 20) for _ in range(4)]
for _ in range(3): request()
before = faults()
for _ in range(50): request()
print(json.dumps({"took": took, "faults": faults() - before}))
"""


def requests_in_a_fresh_worker(keep_mib: int) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", REQUESTS, str(keep_mib)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, int] = json.loads(out.stdout)
    return result


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_a_worker_s_large_bodies_reuse_the_memory_of_the_last_ones() -> None:
    kept = requests_in_a_fresh_worker(32)
    returned = requests_in_a_fresh_worker(0)  # TINYSERVE_MALLOC_KEEP_MIB=0: glibc's own thresholds
    assert kept["took"] is True and kept["faults"] < 1_000
    assert returned["took"] is False
    assert returned["faults"] > 50 * 4 * 1024 * 0.9  # ~every 4 KiB page of every buffer, every request
