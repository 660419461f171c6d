"""Score a file: read chunks, send a bounded number concurrently, write every row exactly once.

Crash safety: each finished chunk is written to `<output>.parts/<start>.jsonl` (via a temporary file
and an atomic rename), beside a `state.json` that fingerprints the run. Only when every chunk is done
are the parts assembled, in row order, into `<output>` (again via a temporary file and a rename).
`resume=True` skips the chunks that already have a part, so an interrupted run resumed gives the same
bytes as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tqdm import tqdm

from client import formats
from client.backends import (
    AuthenticationFailed,
    Backend,
    ClientFault,
    LocalBackend,
    Model,
    RemoteBackend,
    ServerUnavailable,
    default_models_dir,
)

logger = logging.getLogger("tinyserve.client")


class ResumeError(RuntimeError):
    """--resume was asked for a run that cannot be resumed (or a fresh run would clobber one)."""


@dataclass
class Summary:
    rows_ok: int = 0
    rows_failed: int = 0
    rows_skipped: int = 0  # already scored by the run being resumed
    seconds: float = 0.0

    @property
    def rows_per_second(self) -> float:
        done = self.rows_ok + self.rows_failed - self.rows_skipped
        return done / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        return (
            f"rows ok: {self.rows_ok}, rows failed: {self.rows_failed}, "
            f"{self.rows_per_second:,.0f} rows/s, elapsed {self.seconds:.1f} s"
            + (f" ({self.rows_skipped} rows from the resumed run)" if self.rows_skipped else "")
        )


@dataclass
class Scorer:
    """Scores files against a server (`url`) or in process (`local=True`)."""

    model: str
    url: str | None = None
    local: bool = False
    models_dir: Path = field(default_factory=default_models_dir)
    protocol: str = "v2"  # or "grpc", "json"
    grpc_port: int = 8001  # the server's gRPC port, for protocol "grpc" (on the URL's host)
    chunk_size: int = 1024
    concurrency: int = 4
    timeout: float = 30.0
    retries: int = 5
    backoff: float = 0.5
    token: str | None = None
    columns: list[str] | None = None
    quiet: bool = False
    http: httpx.Client | None = None  # the HTTP client to send with (default: one of its own, for `url`)
    _backend: Backend | None = field(default=None, init=False, repr=False)

    def backend(self) -> Backend:
        if self._backend is None:
            if self.local:
                self._backend = LocalBackend(self.model, self.models_dir)
            elif self.url:
                self._backend = RemoteBackend(
                    self.model,
                    self.url,
                    protocol=self.protocol,
                    timeout=self.timeout,
                    retries=self.retries,
                    backoff=self.backoff,
                    token=self.token,
                    http=self.http,
                    grpc_port=self.grpc_port,
                    connections=self.concurrency,
                )
            else:
                raise ValueError("give a server --url, or --local to score in process")
        return self._backend

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    def _chunk_rows(self, model: Model) -> int:
        if self.protocol == "json" and not self.local:  # the typed route's limit on rows per request
            return min(self.chunk_size, model.kind.max_rows)
        return self.chunk_size

    def score_file(self, source: Path, output: Path, *, resume: bool = False) -> Summary:
        model = self.backend().model
        chunk_rows = self._chunk_rows(model)
        shape = model.rows
        formats.check_formats(source, output)  # a bad extension or a missing pyarrow: before any work
        parts = output.with_name(output.name + ".parts")
        done = _prepare_parts(parts, _fingerprint(source, self.model, chunk_rows, output), resume)
        summary = Summary()
        started = time.perf_counter()
        total = formats.count_rows(source)
        progress = _Progress(total, self.quiet)
        try:
            for chunk, records in self._scored(
                formats.read_chunks(source, shape, chunk_rows, self.columns), done, parts
            ):
                failed = sum(1 for r in records if r.get("error") is not None)
                summary.rows_failed += failed
                summary.rows_ok += len(records) - failed
                if chunk.start in done:
                    summary.rows_skipped += len(records)
                progress.update(len(records))
        except (ServerUnavailable, AuthenticationFailed):
            if not any(parts.glob("*.jsonl")):  # nothing scored: leave nothing behind to --resume
                shutil.rmtree(parts, ignore_errors=True)
            raise
        finally:
            progress.close()
            summary.seconds = time.perf_counter() - started
        _assemble(parts, output, model.layout, summary.rows_ok + summary.rows_failed)
        return summary

    def _scored(
        self, chunks: Iterator[formats.Chunk], done: set[int], parts: Path
    ) -> Iterator[tuple[formats.Chunk, list[dict[str, Any]]]]:
        """(chunk, its records) in input order; at most `concurrency` chunks in flight."""
        in_flight: deque[tuple[formats.Chunk, Future[list[dict[str, Any]]]]] = deque()
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="score") as pool:
            try:
                for chunk in chunks:
                    finished = _read_part(parts, chunk) if chunk.start in done else None
                    if finished is not None:  # scored by the run being resumed: its part is the answer
                        future: Future[list[dict[str, Any]]] = Future()
                        future.set_result(finished)
                    else:
                        future = pool.submit(self._score_chunk, chunk, parts)
                    in_flight.append((chunk, future))
                    while len(in_flight) >= self.concurrency or (in_flight and in_flight[0][1].done()):
                        head, future = in_flight.popleft()
                        yield head, future.result()
                while in_flight:
                    head, future = in_flight.popleft()
                    yield head, future.result()
            finally:
                for _, future in in_flight:
                    future.cancel()

    def _score_chunk(self, chunk: formats.Chunk, parts: Path) -> list[dict[str, Any]]:
        records = chunk_records(chunk, self.backend())
        _write_part(parts, chunk.start, records)
        return records


def chunk_records(chunk: formats.Chunk, backend: Backend) -> list[dict[str, Any]]:
    """One record per row of the chunk, in row order: its prediction, or why the row was refused.
    Every engine scores a chunk through here, so that the same input gives the same records."""
    predictions: dict[int, dict[str, Any]] = {}
    if chunk.x is not None and len(chunk.x):
        predictions = _predict_rows(backend, chunk.indices, chunk.x)
    records = []
    for index in range(chunk.start, chunk.start + chunk.count):
        if index in chunk.errors:
            records.append({"row": index, "error": f"row {index}: {chunk.errors[index]}"})
        else:
            records.append({"row": index} | predictions[index] | {"error": predictions[index].get("error")})
    return records


def _predict_rows(backend: Backend, indices: list[int], x: np.ndarray) -> dict[int, dict[str, Any]]:
    """Row index -> prediction. A refused request is split in halves until the refused rows are found:
    each gets the server's reason in its own place, and the others their predictions."""
    try:
        return dict(zip(indices, backend.predict(x), strict=True))
    except ClientFault as e:
        if len(indices) == 1:
            return {indices[0]: {"error": f"row {indices[0]}: {e}"}}
        half = len(indices) // 2
        return _predict_rows(backend, indices[:half], x[:half]) | _predict_rows(backend, indices[half:], x[half:])


def _fingerprint(source: Path, model: str, chunk_rows: int, output: Path) -> dict[str, Any]:
    stat = source.stat()
    return {
        "input": str(source.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "model": model,
        "chunk_rows": chunk_rows,
        "output": output.suffix,
    }


def _prepare_parts(parts: Path, fingerprint: dict[str, Any], resume: bool) -> set[int]:
    state = parts / "state.json"
    if parts.exists() and not resume:
        raise ResumeError(f"{parts} holds an unfinished run: continue it with --resume, or delete it to start over")
    if resume and state.is_file():
        previous = json.loads(state.read_text())
        changed = [k for k in fingerprint if previous.get(k) != fingerprint[k]]
        if changed:
            raise ResumeError(f"cannot resume {parts}: {', '.join(changed)} changed since the interrupted run")
        return {int(p.stem) for p in parts.glob("*.jsonl")}
    parts.mkdir(parents=True, exist_ok=True)
    _atomic_write(state, json.dumps(fingerprint, indent=2).encode())
    return set()


def _atomic_write(path: Path, data: bytes) -> None:
    """Whole or absent after a crash of this process: written aside, then renamed into place."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_part(parts: Path, start: int, records: list[dict[str, Any]]) -> None:
    _atomic_write(parts / f"{start:012d}.jsonl", b"".join(formats.record_line(r) for r in records))


def _read_part(parts: Path, chunk: formats.Chunk) -> list[dict[str, Any]] | None:
    """A finished chunk's records, or None when its part is damaged (then the chunk is scored again)."""
    try:
        with (parts / f"{chunk.start:012d}.jsonl").open("rb") as f:
            records = [json.loads(line) for line in f]
    except (OSError, ValueError):
        return None
    rows = [r.get("row") for r in records if isinstance(r, dict)]
    return records if rows == list(range(chunk.start, chunk.start + chunk.count)) else None


def _assemble(parts: Path, output: Path, layout: formats.Layout, total: int) -> None:
    """All parts, in row order, into `output` via a temporary file and an atomic rename."""

    def records() -> Iterator[dict[str, Any]]:
        for part in sorted(parts.glob("*.jsonl")):
            with part.open("rb") as f:
                for line in f:
                    yield json.loads(line)

    tmp = output.with_name(output.name + ".tmp")
    if output.suffix.lower() == ".jsonl":  # the parts are already JSON lines: concatenate their bytes
        with tmp.open("wb") as out:
            for part in sorted(parts.glob("*.jsonl")):
                with part.open("rb") as f:
                    shutil.copyfileobj(f, out)
    else:
        formats.write_output(tmp, layout, records(), total)
    os.replace(tmp, output)
    shutil.rmtree(parts)


class _Progress:
    """A tqdm bar on a terminal; a plain line every few seconds otherwise (logs, CI)."""

    def __init__(self, total: int | None, quiet: bool) -> None:
        self.total, self.quiet, self.done = total, quiet, 0
        self.started = self.last = time.monotonic()
        tty = sys.stderr.isatty()
        self.bar = tqdm(total=total, unit="rows", unit_scale=True, smoothing=0.1) if tty and not quiet else None

    def update(self, rows: int) -> None:
        self.done += rows
        if self.bar is not None:
            self.bar.update(rows)
        elif not self.quiet and time.monotonic() - self.last >= 5:
            self.last = time.monotonic()
            rate = self.done / (self.last - self.started)
            of = f"/{self.total}" if self.total is not None else ""
            logger.info("scored %d%s rows (%.0f rows/s)", self.done, of, rate)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
