"""The batch scoring client against a real server: formats, order, bad rows, retries, resume, memory."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from client import Scorer
from tests.helpers import REPO, held_out_digits, upscale_32
from tests.proxy import FlakyProxy, flaky_proxy
from tests.server import Server, kill, launch, running, stop, wait_ready

SCORE = [sys.executable, "-m", "client"]


def score(*args: str, check: int | None = 0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*SCORE, *args, "--quiet"], cwd=REPO, capture_output=True, text=True, env=os.environ | (env or {}), timeout=300
    )
    if check is not None:
        assert result.returncode == check, result.stderr
    return result


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    images8, labels = held_out_digits()
    images = np.stack([upscale_32(im) for im in images8])
    path = tmp_path_factory.mktemp("digits") / "digits.npy"
    np.save(path, images)
    return path, images, labels


@pytest.fixture(scope="module")
def local_digits(digits: tuple[Path, np.ndarray, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local") / "local.jsonl"
    score("lenet", str(digits[0]), str(out), "--local", "--chunk-size", "64")
    return out


@pytest.mark.parametrize("protocol", ["v2", "grpc", "json"])
def test_url_scoring_equals_local_scoring_byte_for_byte(
    server: Server, digits: tuple[Path, np.ndarray, np.ndarray], local_digits: Path, tmp_path: Path, protocol: str
) -> None:
    out = tmp_path / "remote.jsonl"
    score(
        "lenet",
        str(digits[0]),
        str(out),
        "--url",
        server.url,
        "--protocol",
        protocol,
        "--grpc-port",
        server.grpc.rsplit(":", 1)[1],
        "--chunk-size",
        "50",
        "--concurrency",
        "3",
    )
    assert out.read_bytes() == local_digits.read_bytes()
    records = read_jsonl(out)
    assert [r["row"] for r in records] == list(range(360))
    assert np.mean([r["label"] for r in records] == digits[2]) >= 0.99
    assert all(r["error"] is None and len(r["probabilities"]) == 10 for r in records)


def _tabular_inputs(tmp_path: Path) -> dict[str, Path]:
    rows = [[73, 80, 75], [93, 88, 93], [89, 91, 80], [96, 98, 100], [73, 66, 70]]
    paths = {suffix: tmp_path / f"exams{suffix}" for suffix in (".npy", ".csv", ".jsonl", ".parquet")}
    np.save(paths[".npy"], np.array(rows, np.float32))
    paths[".csv"].write_text("quiz1,quiz2,final\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    paths[".jsonl"].write_text("".join(json.dumps({"x": r}) + "\n" for r in rows))
    pq.write_table(
        pa.table({"quiz1": [r[0] for r in rows], "quiz2": [r[1] for r in rows], "final": [r[2] for r in rows]}),
        paths[".parquet"],
    )
    return paths


def test_every_input_format_gives_the_same_predictions(server: Server, tmp_path: Path) -> None:
    outputs = []
    for suffix, path in _tabular_inputs(tmp_path).items():
        out = tmp_path / f"out-{suffix[1:]}.jsonl"
        score("multilinear", str(path), str(out), "--url", server.url)
        outputs.append(out.read_bytes())
    assert len(set(outputs)) == 1
    ys = [r["y"] for r in read_jsonl(tmp_path / "out-npy.jsonl")]
    np.testing.assert_allclose(ys, [152, 185, 180, 196, 142], atol=0.3)


def test_every_output_format_holds_the_same_records(server: Server, tmp_path: Path) -> None:
    points = tmp_path / "points.csv"
    points.write_text("a,b\n1,1\n-1,1\nbad,0\n1,-1\n")
    for suffix in (".jsonl", ".csv", ".npy", ".parquet"):
        score("blobs", str(points), str(tmp_path / f"out{suffix}"), "--url", server.url, check=1)
    jsonl = read_jsonl(tmp_path / "out.jsonl")
    assert [r.get("label") for r in jsonl] == [0, 1, None, 1]
    assert jsonl[2] == {"row": 2, "error": "row 2: not a number: 'bad'"}
    csv_lines = (tmp_path / "out.csv").read_text().splitlines()
    assert csv_lines[0] == "row,label,probability,error"
    assert csv_lines[3] == "2,,,row 2: not a number: 'bad'"
    assert [float(line.split(",")[2]) for line in csv_lines[1:] if ",," not in line] == pytest.approx(
        [r["probability"] for r in jsonl if r.get("error") is None], abs=0
    )
    array = np.load(tmp_path / "out.npy")
    assert array["row"].tolist() == [0, 1, 2, 3] and array["label"].tolist() == [0, 1, -1, 1]
    assert array["error"][2] == "row 2: not a number: 'bad'"
    table = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [r["row"] for r in table] == [0, 1, 2, 3] and table[2]["error"] == "row 2: not a number: 'bad'"


def test_bad_rows_become_error_records_in_place_and_the_exit_code_says_so(server: Server, tmp_path: Path) -> None:
    source = tmp_path / "linear.jsonl"
    lines = [
        '{"x": 1.0}',
        '{"x": "2"}',
        "not json",
        '{"x": NaN}',
        '{"y": 3}',
        '{"x": [1, 2]}',
        '{"x": true}',
        '{"x": 4.0}',
    ]
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    result = score("linear", str(source), str(out), "--url", server.url, check=1)
    records = read_jsonl(out)
    assert [r["row"] for r in records] == list(range(8))
    assert [r["error"] is None for r in records] == [True, False, False, False, False, False, False, True]
    assert records[1]["error"] == "row 1: expected numbers, got booleans, strings or nulls"
    assert records[2]["error"].startswith("row 2: not valid JSON")
    assert records[3]["error"] == "row 3: NaN or Infinity; expected finite numbers"
    assert records[4]["error"] == "row 4: expected one field, x or image, got y"
    assert records[5]["error"] == "row 5: expected 1 values [1], got 2"
    assert "rows ok: 2, rows failed: 6" in result.stderr


@pytest.fixture
def flaky(server: Server) -> Iterator[str]:
    with flaky_proxy(server.url) as url:
        yield url


@pytest.mark.parametrize("status", [429, 503])
def test_overloaded_answers_are_retried_with_backoff(
    flaky: str, digits: tuple[Path, np.ndarray, np.ndarray], local_digits: Path, tmp_path: Path, status: int
) -> None:
    FlakyProxy.failures, FlakyProxy.status = 3, status
    out = tmp_path / "out.jsonl"
    score(
        "lenet",
        str(digits[0]),
        str(out),
        "--url",
        flaky,
        "--chunk-size",
        "120",
        "--concurrency",
        "1",
        "--backoff",
        "0.05",
    )
    assert FlakyProxy.seen == [status] * 3 + [200] * 3
    assert out.read_bytes() == local_digits.read_bytes()


def test_a_refused_row_is_found_and_refused_in_its_own_place_without_retries(flaky: str, tmp_path: Path) -> None:
    """The server refuses any request holding row 1 (x = 2.0): the chunk is split until that row is alone."""
    FlakyProxy.poison = struct.pack("<f", 2.0)
    source = tmp_path / "x.csv"
    source.write_text("x\n1\n2\n3\n")
    out = tmp_path / "out.jsonl"
    score("linear", str(source), str(out), "--url", flaky, "--chunk-size", "2", "--concurrency", "1", check=1)
    assert FlakyProxy.seen == [400, 200, 400, 200]  # rows 0-1, row 0, row 1, row 2: nothing sent twice
    records = read_jsonl(out)
    assert [r["row"] for r in records] == [0, 1, 2]
    assert records[1]["error"] == "row 1: the server refused it (400): busy"
    assert records[0]["error"] is None and records[2]["error"] is None


def test_a_dead_server_fails_the_run_with_a_clear_message(tmp_path: Path) -> None:
    source = tmp_path / "x.csv"
    source.write_text("x\n1\n")
    result = score(
        "linear",
        str(source),
        str(tmp_path / "out.jsonl"),
        "--url",
        "http://127.0.0.1:9",
        "--retries",
        "1",
        "--backoff",
        "0.01",
        check=2,
    )
    assert "error: server unavailable: http://127.0.0.1:9/v1/models/linear: ConnectError" in result.stderr
    assert result.stderr.endswith("nothing was scored: rerun once the server answers\n")
    assert not (tmp_path / "out.jsonl.parts").exists()  # nothing to --resume, so a plain rerun works
    assert not (tmp_path / "out.jsonl").exists()


def _big_digits(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "many.npy"
    np.save(path, np.random.default_rng(7).random((n, 32, 32), dtype=np.float32))
    return path


def test_killed_server_then_resume_gives_the_uninterrupted_output(tmp_path: Path) -> None:
    source = _big_digits(tmp_path, 12_000)
    reference = tmp_path / "reference.jsonl"
    score("lenet", str(source), str(reference), "--local", "--chunk-size", "200")
    out = tmp_path / "out.jsonl"
    parts = tmp_path / "out.jsonl.parts"
    first = launch(tmp_path / "first.log")
    try:
        wait_ready(first)
        client = subprocess.Popen(
            [
                *SCORE,
                "lenet",
                str(source),
                str(out),
                "--url",
                first.url,
                "--chunk-size",
                "200",
                "--concurrency",
                "2",
                "--retries",
                "2",
                "--backoff",
                "0.05",
                "--timeout",
                "5",
                "--quiet",
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while len(list(parts.glob("*.jsonl"))) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        kill(first)  # the server dies mid-run
        _, stderr = client.communicate(timeout=120)
    finally:
        stop(first)
    assert client.returncode == 2, stderr
    assert "server unavailable" in stderr and "rerun with --resume" in stderr
    assert not out.exists()
    done = len(list(parts.glob("*.jsonl")))
    assert 5 <= done < 60
    with running(tmp_path / "second.log") as second:
        result = score("lenet", str(source), str(out), "--url", second.url, "--chunk-size", "200", "--resume")
    assert out.read_bytes() == reference.read_bytes()
    assert f"({done * 200} rows from the resumed run)" in result.stderr
    assert not parts.exists()


def test_ctrl_c_then_resume_gives_the_uninterrupted_output(flaky: str, tmp_path: Path) -> None:
    """Ctrl-C while chunks are in flight: the proxy holds every request after the third until the signal
    has been sent, so the run cannot finish first, however fast the machine."""
    source = _big_digits(tmp_path, 2_000)
    reference = tmp_path / "reference.csv"
    score("lenet", str(source), str(reference), "--local", "--chunk-size", "100")
    out = tmp_path / "out.csv"
    FlakyProxy.hold_after = 3
    client = subprocess.Popen(
        [*SCORE, "lenet", str(source), str(out), "--url", flaky, "--chunk-size", "100", "--concurrency", "2", "-q"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as a terminal delivers it: a runner that starts the tests in the background ignores SIGINT,
        # and a child would inherit that (Python then installs no KeyboardInterrupt handler)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    parts = tmp_path / "out.csv.parts"
    deadline = time.monotonic() + 120
    while len(list(parts.glob("*.jsonl"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client.poll() is None  # held: still running
    client.send_signal(signal.SIGINT)
    FlakyProxy.released.set()
    _, stderr = client.communicate(timeout=120)
    assert client.returncode == 130, stderr
    assert "interrupted" in stderr
    assert not out.exists()
    refused = score("lenet", str(source), str(out), "--local", "--chunk-size", "100", check=2)
    assert "holds an unfinished run: continue it with --resume" in refused.stderr
    changed = score("lenet", str(source), str(out), "--local", "--chunk-size", "50", "--resume", check=2)
    assert "cannot resume" in changed.stderr and "chunk_rows changed" in changed.stderr
    score("lenet", str(source), str(out), "--local", "--chunk-size", "100", "--resume")
    assert out.read_bytes() == reference.read_bytes()


def _peak_rss(args: list[str]) -> int:
    process = psutil.Popen([*SCORE, *args, "--quiet"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while process.poll() is None:
        try:
            peak = max(peak, process.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    assert process.returncode == 0
    return peak


def test_memory_stays_flat_for_a_million_row_csv(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    big, small = tmp_path / "big.csv", tmp_path / "small.csv"
    with big.open("w") as f:
        f.write("x\n")
        for _ in range(100):
            f.write("".join(f"{v:.9f}\n" for v in rng.standard_normal(10_000)))
    small.write_text("".join(big.open().readlines()[:20_001]))
    args = ["--local", "--chunk-size", "8192"]
    peak_small = _peak_rss(["linear", str(small), str(tmp_path / "small.jsonl"), *args])
    peak_big = _peak_rss(["linear", str(big), str(tmp_path / "big.jsonl"), *args])
    assert len(read_jsonl(tmp_path / "big.jsonl")) == 1_000_000
    growth = peak_big - peak_small
    print(
        f"input {big.stat().st_size / 2**20:.1f} MiB; peak RSS {peak_small / 2**20:.0f} MiB for 20k rows, "
        f"{peak_big / 2**20:.0f} MiB for 1M rows"
    )
    assert growth < 40 * 2**20  # 50x the rows; loading it whole would add hundreds of MiB


def test_python_api_scores_without_the_cli(server: Server, tmp_path: Path) -> None:
    source = tmp_path / "x.npy"
    np.save(source, np.array([[0.0], [1.0]], np.float32))
    scorer = Scorer(model="linear", url=server.url, quiet=True)
    try:
        summary = scorer.score_file(source, tmp_path / "y.jsonl")
    finally:
        scorer.close()
    assert (summary.rows_ok, summary.rows_failed) == (2, 0)
    assert [r["y"] for r in read_jsonl(tmp_path / "y.jsonl")] == pytest.approx([5.3189, 12.0805], abs=1e-3)


def test_options_read_their_environment_variables(server: Server, tmp_path: Path) -> None:
    source = tmp_path / "x.csv"
    source.write_text("x\n1\n")
    score("linear", str(source), str(tmp_path / "y.jsonl"), env={"TINYSERVE_SCORE_URL": server.url})
    help_text = score("--help").stdout
    for option in ("--url", "--chunk-size", "--concurrency", "--timeout", "--retries", "--resume", "--quiet"):
        assert option in help_text
    assert "TINYSERVE_SCORE_CHUNK_SIZE" in help_text and "default: 1024" in help_text


def test_out_of_range_rows_become_the_same_error_records_on_every_protocol(server: Server, tmp_path: Path) -> None:
    source = tmp_path / "x.csv"
    source.write_text("x\n1\n1e31\n-2\n-1e30\n")
    outputs = {}
    grpc_port = ["--grpc-port", server.grpc.rsplit(":", 1)[1]]
    for mode in (["--protocol", "v2"], ["--protocol", "json"], ["--protocol", "grpc"], ["--local"]):
        out = tmp_path / f"{mode[-1]}.jsonl"
        target = ["--local"] if mode == ["--local"] else ["--url", server.url, *mode, *grpc_port]
        score("linear", str(source), str(out), *target, "--chunk-size", "4", check=1)
        outputs[mode[-1]] = out.read_bytes()
    assert outputs["v2"] == outputs["json"] == outputs["grpc"] == outputs["--local"]
    records = read_jsonl(tmp_path / "v2.jsonl")
    assert records[1]["error"] == "row 1: values must be in [-1e+30, 1e+30], got values in [1e+31, 1e+31]"
    assert [r["error"] is None for r in records] == [True, False, True, True]


def test_a_refused_token_stops_the_run_at_once_with_its_own_exit_code(tmp_path: Path) -> None:
    source = tmp_path / "x.csv"
    source.write_text("x\n1\n2\n")
    out = tmp_path / "out.jsonl"
    with running(tmp_path / "server.log", {"TINYSERVE_API_TOKEN": "right"}) as server:
        result = score("linear", str(source), str(out), "--url", server.url, "--token", "wrong", check=3)
        assert result.stderr == (
            f"error: {server.url} refused the API token (401): missing or invalid API token: "
            "send 'Authorization: Bearer <token>'; give the right one with --token or TINYSERVE_SCORE_TOKEN\n"
        )
        assert not out.exists() and not (tmp_path / "out.jsonl.parts").exists()
        score("linear", str(source), str(out), "--url", server.url, "--token", "right")
        assert [r["error"] for r in read_jsonl(out)] == [None, None]


def test_local_scoring_finds_the_served_repository_from_any_directory(tmp_path: Path) -> None:
    source = tmp_path / "x.csv"
    source.write_text("x\n1\n")
    out = tmp_path / "out.jsonl"
    result = subprocess.run(
        [*SCORE, "linear", str(source), str(out), "--local", "--quiet"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert read_jsonl(out)[0]["y"] == pytest.approx(12.0805, abs=1e-3)
    missing = tmp_path / "nowhere"
    result = score("linear", str(source), str(out), "--local", check=2, env={"TINYSERVE_MODELS_DIR": str(missing)})
    assert result.stderr == f"error: {missing}: model repository directory not found\n"


def test_parquet_without_pyarrow_is_refused_before_any_row_is_scored(tmp_path: Path) -> None:
    blocker = tmp_path / "site"
    (blocker / "pyarrow").mkdir(parents=True)
    (blocker / "pyarrow" / "__init__.py").write_text("raise ImportError('No module named pyarrow')\n")
    source = tmp_path / "x.csv"
    source.write_text("x\n1\n")
    out = tmp_path / "out.parquet"
    result = score("linear", str(source), str(out), "--local", check=2, env={"PYTHONPATH": str(blocker)})
    assert result.stderr == "error: writing .parquet needs pyarrow, which is not installed: pip install pyarrow\n"
    assert not out.exists() and not (tmp_path / "out.parquet.parts").exists()
