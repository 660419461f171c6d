"""The batch scoring client against a real server: formats, order, bad rows, retries, resume, memory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from client import Scorer
from tests.helpers import REPO, held_out_digits, upscale_32
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


@pytest.mark.parametrize("protocol", ["v2", "json"])
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


class _FlakyProxy(BaseHTTPRequestHandler):
    """Fails the first `failures` inference requests with `status`, then forwards to the real server."""

    upstream = ""
    failures = 0
    status = 503
    seen: list[int] = []  # noqa: RUF012  (class-level state of a test double)

    def do_GET(self) -> None:
        self._forward()

    def do_POST(self) -> None:
        if "/infer" in self.path and _FlakyProxy.failures > 0:
            _FlakyProxy.failures -= 1
            self.rfile.read(int(self.headers["content-length"]))
            body = json.dumps({"error": "busy"}).encode()
            self.send_response(self.status)
            self.send_header("content-length", str(len(body)))
            self.send_header("retry-after", "0")
            self.end_headers()
            self.wfile.write(body)
            _FlakyProxy.seen.append(self.status)
            return
        self._forward()

    def _forward(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        r = httpx.request(self.command, self.upstream + self.path, content=body, headers=headers, timeout=30)
        self.send_response(r.status_code)
        for key in ("content-type", "inference-header-content-length"):
            if key in r.headers:
                self.send_header(key, r.headers[key])
        self.send_header("content-length", str(len(r.content)))
        self.end_headers()
        self.wfile.write(r.content)
        if self.command == "POST":
            _FlakyProxy.seen.append(r.status_code)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def flaky(server: Server) -> Iterator[str]:
    _FlakyProxy.upstream, _FlakyProxy.seen = server.url, []
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), _FlakyProxy)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{proxy.server_address[1]}"
    proxy.shutdown()


@pytest.mark.parametrize("status", [429, 503])
def test_overloaded_answers_are_retried_with_backoff(
    flaky: str, digits: tuple[Path, np.ndarray, np.ndarray], local_digits: Path, tmp_path: Path, status: int
) -> None:
    _FlakyProxy.failures, _FlakyProxy.status = 3, status
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
    assert _FlakyProxy.seen == [status] * 3 + [200] * 3
    assert out.read_bytes() == local_digits.read_bytes()


def test_a_client_error_is_not_retried(flaky: str, tmp_path: Path) -> None:
    _FlakyProxy.failures, _FlakyProxy.status = 1, 400
    source = tmp_path / "x.csv"
    source.write_text("x\n1\n2\n3\n")
    out = tmp_path / "out.jsonl"
    score("linear", str(source), str(out), "--url", flaky, "--chunk-size", "2", "--concurrency", "1", check=1)
    assert _FlakyProxy.seen == [400, 200]
    records = read_jsonl(out)
    assert records[0]["error"] == records[1]["error"] == "server refused the chunk (400): busy"
    assert records[2]["error"] is None


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


def test_ctrl_c_then_resume_gives_the_uninterrupted_output(tmp_path: Path) -> None:
    source = _big_digits(tmp_path, 20_000)
    reference = tmp_path / "reference.csv"
    score("lenet", str(source), str(reference), "--local", "--chunk-size", "100")
    out = tmp_path / "out.csv"
    client = subprocess.Popen(
        [*SCORE, "lenet", str(source), str(out), "--local", "--chunk-size", "100", "--quiet"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    parts = tmp_path / "out.csv.parts"
    deadline = time.monotonic() + 60
    while len(list(parts.glob("*.jsonl"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    client.send_signal(signal.SIGINT)
    _, stderr = client.communicate(timeout=60)
    assert client.returncode == 130, stderr
    assert "interrupted" in stderr
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
