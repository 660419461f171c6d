"""Cores available to the process (affinity, cgroup quotas), the worker/thread shape for them, a worker's memory."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import psutil
import pytest

from client.v2 import binary_request
from service import cuda
from service.cuda import CUDA
from service.machine import Cores, Shape, available_cores, cgroup_cpu_quota, choose_shape
from service.runtime import CPU
from tests.server import Server, running


@pytest.mark.parametrize(
    ("cores", "workers", "threads", "expected"),
    [
        (1, 0, 0, (1, 1)),
        (2, 0, 0, (2, 1)),  # this machine: never one worker where there are two cores
        (3, 0, 0, (2, 1)),
        (4, 0, 0, (2, 2)),
        (8, 0, 0, (4, 2)),
        (16, 0, 0, (8, 2)),  # the measured 16-core optimum for single images (BENCHMARKS.md)
        (64, 0, 0, (32, 2)),
        (16, 4, 0, (4, 4)),  # workers given: the cores are shared among them
        (16, 0, 4, (4, 4)),  # threads given: as many workers as fit
        (16, 2, 16, (2, 16)),  # both given: taken as they are, even oversubscribed
        (2, 4, 0, (4, 1)),
    ],
)
def test_shape_follows_the_cores_unless_given(
    cores: int, workers: int, threads: int, expected: tuple[int, int]
) -> None:
    assert choose_shape(cores, workers, threads) == Shape(*expected, spinning=False)


def test_cores_are_the_affinity_capped_by_the_quota_rounded_up() -> None:
    assert Cores(affinity=16, quota=None).available == 16
    assert Cores(affinity=16, quota=1.5).available == 2
    assert Cores(affinity=2, quota=8.0).available == 2
    assert Cores(affinity=4, quota=0.1).available == 1
    assert Cores(affinity=16, quota=1.5).describe() == "2 cores (affinity 16, cgroup CPU quota 1.5)"


def test_this_process_cores_are_its_affinity_here() -> None:
    cores = available_cores()
    assert cores.affinity == len(os.sched_getaffinity(0))
    assert 1 <= cores.available <= cores.affinity


def _fake_proc(tmp: Path, cgroup: str, mounts: list[str]) -> Path:
    proc = tmp / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text(cgroup)
    (proc / "mountinfo").write_text("\n".join(mounts) + "\n")
    return proc


def _write(path: Path, **files: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name.replace("_", ".", 1)).write_text(text + "\n")


def test_cgroup_v2_quota_is_the_tightest_of_the_cgroup_and_its_ancestors(tmp_path: Path) -> None:
    root = tmp_path / "cgroup2"
    _write(root / "kubepods" / "pod1", cpu_max="max 100000")
    _write(root / "kubepods", cpu_max="300000 100000")
    _write(root / "kubepods" / "pod1" / "c1", cpu_max="250000 100000")
    proc = _fake_proc(
        tmp_path,
        "0::/kubepods/pod1/c1\n",
        [f"30 24 0:26 / {root} rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate"],
    )
    assert cgroup_cpu_quota(proc) == 2.5
    _write(root / "kubepods", cpu_max="150000 100000")
    assert cgroup_cpu_quota(proc) == 1.5


def test_cgroup_v2_max_means_no_quota(tmp_path: Path) -> None:
    root = tmp_path / "cgroup2"
    _write(root, cpu_max="max 100000")
    proc = _fake_proc(tmp_path, "0::/\n", [f"30 24 0:26 / {root} rw - cgroup2 cgroup2 rw"])
    assert cgroup_cpu_quota(proc) is None


def test_cgroup_v1_cfs_quota_of_the_cpu_controller(tmp_path: Path) -> None:
    cpu = tmp_path / "cpu,cpuacct"
    _write(cpu / "docker" / "abc", cpu_cfs_quota_us="50000", cpu_cfs_period_us="100000")
    memory = tmp_path / "memory"
    _write(memory / "docker" / "abc", cpu_cfs_quota_us="10000", cpu_cfs_period_us="100000")  # not the cpu one
    proc = _fake_proc(
        tmp_path,
        "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n",
        [
            f"40 30 0:35 / {cpu} rw - cgroup cgroup rw,cpu,cpuacct",
            f"41 30 0:36 / {memory} rw - cgroup cgroup rw,memory",
        ],
    )
    assert cgroup_cpu_quota(proc) == 0.5


def test_cgroup_v1_unlimited_and_a_container_s_own_namespace(tmp_path: Path) -> None:
    cpu = tmp_path / "cpu"
    _write(cpu, cpu_cfs_quota_us="-1", cpu_cfs_period_us="100000")
    proc = _fake_proc(tmp_path, "3:cpu:/\n", [f"40 30 0:35 / {cpu} rw - cgroup cgroup rw,cpu"])
    assert cgroup_cpu_quota(proc) is None
    # inside a container the mount's root is the container's own cgroup, and so is the process's path
    _write(cpu, cpu_cfs_quota_us="400000", cpu_cfs_period_us="100000")
    assert cgroup_cpu_quota(proc) == 4.0


def test_no_cgroup_files_means_no_quota(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(tmp_path / "missing") is None


def test_default_runtime_is_reported_in_the_catalog(server: Server) -> None:
    catalog = httpx.get(f"{server.url}/v1/models").json()
    runtime = catalog["runtime"]
    cores = available_cores()
    shape = choose_shape(cores.available)
    assert {model["provider"] for model in catalog["models"]} == {runtime["provider"]}  # every model on it
    # providers=auto: the CPU on a build without CUDA; on a CUDA build, CUDA with its options, or the CPU
    # and the probe's reason (test_cuda_build.py and make test-gpu check those two cases in full)
    if CUDA not in ort.get_available_providers():
        provider = (CPU, {}, None)
    elif runtime["provider"] == CUDA:
        provider = (CUDA, cuda.provider_options(device_id=0, tf32=False, conv_algo_search="HEURISTIC"), None)
    else:
        assert runtime["cuda_fallback"], runtime
        provider = (CPU, {}, runtime["cuda_fallback"])
    assert runtime == {
        "cores": cores.available,
        "cpu_affinity": cores.affinity,
        "cgroup_cpu_quota": cores.quota,
        "workers": shape.workers,
        "intra_op_threads": shape.threads,
        "spinning": False,
        "provider": provider[0],
        "provider_options": provider[1],
        "cuda_fallback": provider[2],
    }
    assert f"runtime: {cores.describe()} -> " in server.output()


def test_settings_override_the_shape_and_start_logs_it_once(tmp_path: Path) -> None:
    env = {"TINYSERVE_WORKERS": "2", "TINYSERVE_THREADS": "1", "TINYSERVE_SPINNING": "true"}
    with running(tmp_path / "server.log", env) as server:
        runtime = httpx.get(f"{server.url}/v1/models").json()["runtime"]
        assert (runtime["workers"], runtime["intra_op_threads"], runtime["spinning"]) == (2, 1, True)
        deadline = time.monotonic() + 60  # /readyz answers once one worker is ready; wait for the other
        while server.output().count("loaded lenet/1 ") < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        lines = server.output().splitlines()
        (started,) = [line for line in lines if "runtime: " in line]
        assert started.endswith("-> 2 workers x 1 intra-op threads, spinning on; CPUExecutionProvider")
        loaded = [line for line in lines if "loaded lenet/1 " in line]
        assert len(loaded) == 2 and all("intra-op threads 1," in line for line in loaded)  # one per worker
        # one intra-op thread: a long batch runs as calls of 16 images, taken in turn by a thread a core
        spread = f"calls of at most 16 rows, spread over {available_cores().available} threads"
        assert all(spread in line for line in loaded), loaded


def test_request_bodies_are_acknowledged_promptly(server: Server) -> None:
    """TCP_QUICKACK reaches uvicorn's socket through BentoML's middlewares (tritonclient's Nagle stall)."""
    assert httpx.post(f"{server.url}/v1/linear/predict", json={"x": [1.0]}).status_code == 200
    assert "prompt ACKs while reading request bodies: on" in server.output()


def _minor_faults(pid: int) -> int:
    """Pages the process has faulted in from zero or the page cache (/proc/PID/stat's minflt)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


@pytest.mark.parametrize(("keep_mib", "most", "least"), [("32", 100, None), ("0", None, 1_000)])
def test_a_worker_keeps_the_memory_of_its_last_large_bodies(
    tmp_path: Path, keep_mib: str, most: int | None, least: int | None
) -> None:
    """TINYSERVE_MALLOC_KEEP_MIB reaches the worker: its 1024-image bodies reuse the memory of the last ones
    (measured ~0.4 pages faulted in a request), where glibc's own thresholds fault ~2,000 in afresh each."""
    x = np.random.default_rng(0).random((1024, 1, 32, 32), dtype=np.float32)
    body, headers = binary_request(x, ["logits"])
    env = {"TINYSERVE_WORKERS": "1", "TINYSERVE_MALLOC_KEEP_MIB": keep_mib}
    with running(tmp_path / "server.log", env) as server, httpx.Client(timeout=60) as client:
        (worker,) = [p for p in psutil.Process(server.process.pid).children(recursive=True) if _is_worker(p)]
        url = f"{server.url}/v2/models/lenet/infer"
        for _ in range(3):  # the heaps grow to what a request needs
            assert client.post(url, content=body, headers=headers).status_code == 200
        before = _minor_faults(worker.pid)
        for _ in range(20):
            assert client.post(url, content=body, headers=headers).status_code == 200
        per_request = (_minor_faults(worker.pid) - before) / 20
    assert most is None or per_request < most, per_request
    assert least is None or per_request > least, per_request


def _is_worker(process: psutil.Process) -> bool:
    return "_bentoml_impl.worker.service" in " ".join(process.cmdline())
