"""The machine the server starts on: the CPU cores it may use, and the worker/thread shape for them.

Cores come from the process's CPU affinity and its cgroup CPU quota (v2 `cpu.max`, v1 CFS quota),
not `os.cpu_count()`: a container limited to 2 CPUs on a 64-core host must not start 64 threads.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

PROC_SELF = Path("/proc/self")

# One worker per this many cores, each with this many intra-op threads. Measured on 16 cores (BENCHMARKS.md):
# single-image requests scale with workers (1, 4, 8 workers: 853, 3,228, 5,814 req/s); each worker's event
# loop is a core's worth of Python, so small requests want many. Bulk throughput needs enough requests in
# flight to fill the workers (with 4 in flight, 8 workers x 2 threads left half the cores idle: 153k against
# 217k images/s for 4 x 4); a single bulk request is then slower (~2x at 2 threads than at 4), not the server.
THREADS_PER_WORKER = 2
# ...but never one worker where there are two cores: its event loop cannot use the second one. Measured on
# 2 cores, in one run, connections spread over the workers (service/listeners.py): 2 workers x 1 thread
# served 1.56x the single images of 1 x 2 (1,494 against 958 req/s at c=32) and more bulk (81% against 74%
# of in-process ONNX Runtime); only one bulk request alone is slower (p50 53 against 35 ms).
MIN_WORKERS = 2


@dataclass(frozen=True)
class Cores:
    affinity: int  # CPUs the scheduler lets this process run on
    quota: float | None  # the cgroup CPU limit in cores, None when unlimited

    @property
    def available(self) -> int:
        if self.quota is None:
            return self.affinity
        return max(1, min(self.affinity, math.ceil(self.quota)))

    def describe(self) -> str:
        quota = "no cgroup CPU quota" if self.quota is None else f"cgroup CPU quota {self.quota:g}"
        return f"{self.available} cores (affinity {self.affinity}, {quota})"


@dataclass(frozen=True)
class Shape:
    """How the server spends the cores: worker processes, and ONNX Runtime threads in each."""

    workers: int
    threads: int
    spinning: bool


def choose_shape(cores: int, workers: int = 0, threads: int = 0, *, spinning: bool = False) -> Shape:
    """Workers and intra-op threads for `cores`; a non-zero `workers` or `threads` is kept as given.

    By default one worker per THREADS_PER_WORKER cores, at least MIN_WORKERS (no more than the cores), the
    cores shared among them.
    """
    if not workers:
        workers = max(1, cores // (threads or THREADS_PER_WORKER))
        if not threads:
            workers = max(workers, min(cores, MIN_WORKERS))
    if not threads:
        threads = max(1, cores // workers)
    return Shape(workers, threads, spinning)


def available_cores(proc: Path = PROC_SELF) -> Cores:
    return Cores(len(os.sched_getaffinity(0)), cgroup_cpu_quota(proc))


def cgroup_cpu_quota(proc: Path = PROC_SELF) -> float | None:
    """The tightest CPU limit on this process's cgroup and its ancestors, in cores (None: unlimited)."""
    try:
        memberships = (proc / "cgroup").read_text().splitlines()
        mounts = (proc / "mountinfo").read_text().splitlines()
    except OSError:
        return None
    limits = [
        limit
        for mount_point, relative, version in _cgroup_dirs(memberships, mounts)
        for limit in _limits(mount_point, relative, version)
    ]
    return min(limits, default=None)


def _cgroup_dirs(memberships: list[str], mounts: list[str]) -> list[tuple[Path, Path, int]]:
    """(mount point, this process's cgroup below it, version) for the v2 hierarchy and the v1 `cpu` one."""
    paths: dict[int, str] = {}  # version -> path within the hierarchy
    for line in memberships:
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and controllers == "":
            paths[2] = path
        elif "cpu" in controllers.split(","):
            paths[1] = path
    found = []
    for line in mounts:
        fields = line.split()
        separator = fields.index("-")
        root, mount_point = fields[3], fields[4]
        fstype, super_options = fields[separator + 1], fields[separator + 3].split(",")
        version = 2 if fstype == "cgroup2" else 1 if fstype == "cgroup" and "cpu" in super_options else 0
        if version in paths:
            relative = os.path.relpath(paths[version], root)
            if not relative.startswith(".."):  # the process's cgroup is visible under this mount
                found.append((Path(mount_point), Path(relative), version))
    return found


def _limits(mount_point: Path, relative: Path, version: int) -> list[float]:
    """The CPU limits of the cgroup and of each ancestor up to the mount point, in cores."""
    levels = [mount_point / relative, *(mount_point / parent for parent in relative.parents)]
    return [limit for level in levels if (limit := _limit(level, version)) is not None]


def _limit(directory: Path, version: int) -> float | None:
    try:
        if version == 2:
            quota, period = (directory / "cpu.max").read_text().split()
        else:
            quota = (directory / "cpu.cfs_quota_us").read_text().strip()
            period = (directory / "cpu.cfs_period_us").read_text().strip()
    except (OSError, ValueError):
        return None
    if quota in ("max", "-1"):
        return None
    return int(quota) / int(period)
