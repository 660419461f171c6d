"""`tinyserve-score --engine ray`: the same bytes as the threads engine, from a real local Ray.

One Ray instance serves the whole module (starting Ray takes seconds): the engine's own embedded start,
on 127.0.0.1. Ray is imported only once it is running (see client.ray_engine.connect).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from client import Scorer
from client.ray_engine import RayEngine, connect
from tests.helpers import REPO, held_out_digits, upscale_32
from tests.proxy import FlakyProxy, flaky_proxy
from tests.server import Server, free_port, running

ACTOR = "ray::MapWorker(Map(ChunkScorer))"  # the process title Ray gives each actor of the pool
BAD_ROWS = {
    7: "NaN or Infinity; expected finite numbers",
    123: "pixels must be in [0, 1], got values in [0, 2]",
}


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A local Ray for the module, started as the CLI starts it; its address lets subprocesses join."""
    assert connect(None), "Ray was already running in the test process"
    import ray

    yield str(ray.get_runtime_context().gcs_address)
    ray.shutdown()


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 360 held-out digits as LeNet takes them, with a NaN row and a row out of the pixel range."""
    images = np.stack([upscale_32(image) for image in held_out_digits()[0]])
    images[7, 4, 4] = np.nan
    images[123, 0, 0] = 2.0
    path = tmp_path_factory.mktemp("digits") / "digits.npy"
    np.save(path, images)
    return path


def threads(model: str, source: Path, output: Path, chunk_size: int) -> bytes:
    """The threads engine's output, in process, as the reference."""
    scorer = Scorer(model=model, local=True, models_dir=REPO / "models", chunk_size=chunk_size, quiet=True)
    try:
        scorer.score_file(source, output)
    finally:
        scorer.close()
    return output.read_bytes()


def on_ray(model: str, source: str | Path, output: Path, chunk_size: int, actors: int = 1) -> bytes:
    """The Ray engine's output, on the module's Ray."""
    scorer = Scorer(model=model, local=True, models_dir=REPO / "models", chunk_size=chunk_size, quiet=True)
    try:
        RayEngine(scorer, actors=actors).score(str(source), output)
    finally:
        scorer.close()
    return output.read_bytes()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("suffix", [".npy", ".parquet"])
def test_ray_output_has_the_threads_engines_bytes(ray_address: str, digits: Path, tmp_path: Path, suffix: str) -> None:
    expected = threads("lenet", digits, tmp_path / f"threads{suffix}", chunk_size=50)
    assert on_ray("lenet", digits, tmp_path / f"ray{suffix}", actors=2, chunk_size=50) == expected
    if suffix == ".parquet":
        table = pq.read_table(tmp_path / "ray.parquet").to_pylist()
        assert [r["row"] for r in table] == list(range(360))
        assert {r["row"]: r["error"] for r in table if r["error"]} == {i: f"row {i}: {e}" for i, e in BAD_ROWS.items()}
        labels = np.array([r["label"] for r in table if r["error"] is None])
        truth = np.delete(held_out_digits()[1], list(BAD_ROWS))
        assert (labels == truth).mean() > 0.99


@pytest.mark.timeout(600)
def test_ray_reads_csv_jsonl_and_parquet_with_bad_rows_as_the_threads_engine_does(
    ray_address: str, tmp_path: Path
) -> None:
    csv = tmp_path / "exams.csv"
    csv.write_text("a,b,c\n73,80,75\n93,88,93\nbad,1,2\n89,91\n96,98,100\n73,66,70")  # no final newline
    jsonl = tmp_path / "points.jsonl"
    jsonl.write_text('{"x": [1, 1]}\nnot json\n{"x": [-1, 1]}\n{"x": [1, NaN]}\n{"y": 3}\n{"x": [1, -1]}\n')
    parquet = tmp_path / "xs.parquet"
    pq.write_table(pa.table({"x": [1.0, 2.0, float("inf"), 4.0, 5.0]}), parquet)
    for model, source in (("multilinear", csv), ("blobs", jsonl), ("linear", parquet)):
        expected = threads(model, source, tmp_path / f"{source.stem}-threads.jsonl", chunk_size=2)
        assert on_ray(model, source, tmp_path / f"{source.stem}-ray.jsonl", chunk_size=2) == expected
    assert (tmp_path / "exams-ray.jsonl").read_text().splitlines()[2:4] == [
        '{"row":2,"error":"row 2: not a number: \'bad\'"}',
        '{"row":3,"error":"row 3: expected 3 fields as in the header, got 2"}',
    ]
    assert (tmp_path / "exams-ray.jsonl").read_text().count("\n") == 6


@pytest.mark.timeout(600)
def test_ray_numbers_rows_across_the_files_of_a_directory_a_glob_or_a_uri(
    ray_address: str, digits: Path, tmp_path: Path
) -> None:
    images = np.load(digits)
    parts = tmp_path / "parts"
    parts.mkdir()
    for name, rows in (
        ("part-0.npy", slice(0, 100)),
        ("part-1.npy", slice(100, 250)),
        ("part-2.npy", slice(250, None)),
    ):
        np.save(parts / name, images[rows])
    (parts / "notes.txt").write_text("not an input: skipped")
    expected = threads("lenet", digits, tmp_path / "whole.npy", chunk_size=50)
    assert on_ray("lenet", parts, tmp_path / "from-dir.npy", chunk_size=50) == expected
    assert on_ray("lenet", parts / "part-*.npy", tmp_path / "from-glob.npy", chunk_size=50) == expected
    assert on_ray("lenet", parts.as_uri(), tmp_path / "from-uri.npy", chunk_size=50) == expected  # Ray's file systems


@pytest.mark.timeout(600)
def test_ray_url_spreads_the_chunks_over_every_server(
    ray_address: str, server: Server, digits: Path, tmp_path: Path
) -> None:
    expected = threads("lenet", digits, tmp_path / "local.jsonl", chunk_size=40)
    with running(tmp_path / "second.log") as second:
        before = [_rows_inferred(s.url) for s in (server, second)]
        scorer = Scorer(model="lenet", url=server.url, chunk_size=40, concurrency=2, quiet=True)
        try:
            RayEngine(scorer, urls=[server.url, second.url]).score(str(digits), tmp_path / "ray.jsonl")
        finally:
            scorer.close()
        served = [_rows_inferred(s.url) - b for s, b in zip((server, second), before, strict=True)]
    assert (tmp_path / "ray.jsonl").read_bytes() == expected
    assert sum(served) == 360 - len(BAD_ROWS) and min(served) > 0, served


@pytest.mark.timeout(600)
def test_ray_url_leaves_out_a_server_that_does_not_answer(
    ray_address: str, server: Server, digits: Path, tmp_path: Path
) -> None:
    expected = threads("lenet", digits, tmp_path / "local.jsonl", chunk_size=60)
    nobody = f"http://127.0.0.1:{free_port()}"
    scorer = Scorer(model="lenet", url=server.url, chunk_size=60, concurrency=2, retries=0, quiet=True)
    try:
        summary = RayEngine(scorer, urls=[server.url, nobody]).score(str(digits), tmp_path / "ray.jsonl")
    finally:
        scorer.close()
    assert (tmp_path / "ray.jsonl").read_bytes() == expected
    assert (summary.rows_ok, summary.rows_failed) == (358, 2)


def _rows_inferred(url: str) -> float:
    metrics = httpx.get(f"{url}/metrics", timeout=30).text
    found = re.search(r'^tinyserve_rows_inferred_total\{model="lenet",version="1"\} (\S+)$', metrics, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.timeout(600)
def test_an_actor_killed_mid_run_is_restarted_and_no_row_is_lost_or_doubled(
    ray_address: str, server: Server, tmp_path: Path
) -> None:
    """The actors score through a proxy that holds every request after the fourth: the run cannot end while
    one actor is killed in the middle of its chunk, then the requests go on."""
    source = tmp_path / "xs.npy"
    np.save(source, np.linspace(-50, 50, 400, dtype=np.float32).reshape(-1, 1))
    expected = threads("linear", source, tmp_path / "threads.jsonl", chunk_size=10)
    output = tmp_path / "ray.jsonl"
    errors: list[BaseException] = []
    with flaky_proxy(server.url) as proxy:
        FlakyProxy.hold_after = 4

        def run() -> None:
            scorer = Scorer(model="linear", url=proxy, chunk_size=10, concurrency=2, quiet=True)
            try:
                RayEngine(scorer, urls=[proxy]).score(str(source), output)
            except BaseException as e:
                errors.append(e)
            finally:
                scorer.close()

        runner = threading.Thread(target=run)
        runner.start()
        assert FlakyProxy.held.wait(timeout=300), errors or "no request reached the proxy"
        port = int(proxy.rsplit(":", 1)[1])
        while len(victims := _waiting_on(port)) < 2:  # both actors of the pool hold a chunk, held by the proxy
            assert runner.is_alive(), errors
            FlakyProxy.released.wait(0.05)
        os.kill(victims[0].pid, signal.SIGKILL)
        victims[0].wait(timeout=60)
        FlakyProxy.released.set()
        runner.join()
    assert not errors, errors
    assert output.read_bytes() == expected  # every row once, in order, as the threads engine wrote it
    assert FlakyProxy.forwarded > 40  # the killed actor's chunk was sent again


def _waiting_on(port: int) -> list[psutil.Process]:
    """The pool's actors with a request open to `port` (the proxy answers one request per connection)."""
    return [
        actor
        for actor in _actors()
        if any(c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED for c in _tcp(actor))
    ]


def _tcp(process: psutil.Process) -> list[Any]:
    try:
        return list(process.net_connections("tcp"))
    except psutil.Error:  # an actor that has just exited
        return []


def _actors() -> list[psutil.Process]:
    """This test process's pool actors (Ray's processes are its descendants)."""
    return [p for p in psutil.Process().children(recursive=True) if _title(p).startswith(ACTOR)]


def _title(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "client", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=os.environ | (env or {}),
        timeout=600,
    )


@pytest.mark.timeout(600)
def test_cli_starts_a_quiet_local_ray_by_default(digits: Path, tmp_path: Path) -> None:
    expected = threads("lenet", digits, tmp_path / "threads.npy", chunk_size=100)
    result = cli("lenet", str(digits), str(tmp_path / "ray.npy"), "--local", "--engine", "ray", "--chunk-size", "100")
    assert result.returncode == 1, result.stderr  # two bad rows
    assert (tmp_path / "ray.npy").read_bytes() == expected
    lines = result.stderr.splitlines()
    assert re.fullmatch(r"started a local Ray \(\d+ CPUs\) in [\d.]+ s", lines[0]), result.stderr
    assert all(line.startswith("scored ") for line in lines[1:-1]), result.stderr  # progress, nothing of Ray's
    assert re.fullmatch(r"rows ok: 358, rows failed: 2, [\d,]+ rows/s, elapsed [\d.]+ s", lines[-1]), result.stderr


@pytest.mark.timeout(600)
def test_cli_joins_a_running_ray_with_ray_address(ray_address: str, digits: Path, tmp_path: Path) -> None:
    out = tmp_path / "ray.parquet"
    # The module's Ray listens on 127.0.0.1: a driver joining it from this machine must use that address too.
    result = cli(
        "lenet",
        str(digits),
        str(out),
        "--local",
        "--engine",
        "ray",
        "-q",
        env={"RAY_ADDRESS": ray_address, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("rows ok: 358, rows failed: 2, ") and result.stderr.count("\n") == 1
    assert pq.read_table(out).num_rows == 360


def test_cli_refuses_what_the_ray_engine_cannot_do_before_starting_ray(tmp_path: Path) -> None:
    result = cli("lenet", "in.npy", str(tmp_path / "o.npy"), "--local", "--engine", "ray", "--resume")
    assert result.returncode == 2
    assert "--resume is for --engine threads: Ray retries failed chunks within a run" in result.stderr
    result = cli("lenet", "in.npy", str(tmp_path / "o.npy"), "--url", "http://a", "--url", "http://b")
    assert result.returncode == 2 and "several --url need --engine ray" in result.stderr
    result = cli("lenet", str(tmp_path / "missing-*.npy"), str(tmp_path / "o.npy"), "--local", "--engine", "ray")
    assert result.returncode == 2
    assert result.stderr == f"error: {tmp_path}/missing-*.npy: no such file or directory\n"
    assert not list(tmp_path.iterdir())


def test_ray_engine_without_ray_installed_says_how_to_get_it(tmp_path: Path) -> None:
    site = tmp_path / "no-ray"
    site.mkdir()
    (site / "ray").mkdir()  # a `ray` that cannot be imported shadows the installed one
    (site / "ray" / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    digits = tmp_path / "d.npy"
    np.save(digits, np.zeros((2, 1), np.float32))
    result = cli(
        "linear",
        str(digits),
        str(tmp_path / "o.npy"),
        "--local",
        "--engine",
        "ray",
        env={"PYTHONPATH": f"{site}{os.pathsep}{REPO}"},
    )
    assert result.returncode == 2
    assert result.stderr == "error: --engine ray needs Ray: pip install -e '.[ray]' in the tinyserve checkout\n"
    shutil.rmtree(site)
