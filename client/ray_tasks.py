"""What `--engine ray` runs on the Ray cluster: files read into the client's chunks, chunks scored by actors.

A dataset row is one chunk of the input (`client.formats.Chunk`, up to --chunk-size rows, bad rows
already marked), so that Ray schedules, retries and orders exactly the unit the threads engine does.
Imported only once Ray is connected (see `client.ray_engine`).
"""

from __future__ import annotations

import functools
import logging
import pickle
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import ray
import ray.data
from ray.data.block import BlockMetadata

from client import formats
from client.backends import Backend, LocalBackend, Model, RemoteBackend, ServerUnavailable
from client.scorer import chunk_records

logger = logging.getLogger("tinyserve.client")


class NoInputFiles(ValueError):
    """No file with an input extension under the paths given."""


class ChunkSource(ray.data.Datasource):
    """Input files parsed by the client's own readers, one dataset row (and block) per chunk, rows numbered
    across files: a custom datasource on Ray Data's public Datasource API.

    The files are listed here (directories recursively, in name order, leaving out names that start with
    "." or "_", as Ray's own readers do) on pyarrow's file systems, which open local paths and URIs alike
    (S3, GCS, HDFS, ...); each file is read by one task, in order, each chunk a block of its own so that
    the actor pool can share them out.
    """

    def __init__(self, paths: list[str], shape: formats.RowShape, chunk_rows: int, columns: list[str] | None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.shape, self.chunk_rows, self.columns = shape, chunk_rows, columns
        self.files = [file for path in paths for file in _list_inputs(path)]
        if not self.files:
            raise NoInputFiles(", ".join(paths))
        self.starts: dict[str, int] = {}  # file -> index of its first row among all the files' rows
        self.file_chunks: dict[str, int] = {}  # file -> its chunks

    def number_rows(self) -> int:
        """Count every file's rows (here, on the driver) so that each chunk carries its rows' global indices."""
        total = 0
        for source, path in self.files:
            self.starts[path] = total
            with _filesystem(source).open_input_file(path) as f:
                rows = formats.count_stream(f, path)
            total += rows
            self.file_chunks[path] = -(-rows // self.chunk_rows)
        return total

    @property
    def chunks(self) -> int:
        """Dataset rows: the chunks of every file."""
        return sum(self.file_chunks.values())

    def estimate_inmemory_data_size(self) -> int | None:
        return None  # the chunks' pickles: about the files' numbers as float32, unknown before reading

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ray.data.ReadTask]:
        """One task per file, whatever the parallelism asked: a file's rows are numbered in one pass."""
        return [
            ray.data.ReadTask(
                functools.partial(self._read, source, path),
                BlockMetadata(
                    num_rows=self.file_chunks.get(path),  # dataset rows: the file's chunks, once counted
                    size_bytes=None,
                    input_files=(path,),
                    exec_stats=None,
                ),
            )
            for source, path in self.files
        ]

    def _read(self, source: str, path: str) -> Iterator[pa.Table]:
        """One file's chunks, its rows numbered from the file's start, each pickled into a block of one row."""
        with _filesystem(source).open_input_file(path) as f:  # seekable: Parquet reads its footer first
            for chunk in formats.read_stream(f, path, self.shape, self.chunk_rows, self.columns, self.starts[path]):
                chunk_bytes = pa.array([pickle.dumps(chunk, protocol=5)], pa.binary())
                yield pa.table({"start": pa.array([chunk.start], pa.int64()), "chunk": chunk_bytes})


def _resolve(source: str) -> tuple[pafs.FileSystem, str]:
    """An input's file system and its path there: a URI's (pyarrow's own, else fsspec's), or the local one."""
    if "://" not in source:
        return pafs.LocalFileSystem(), source
    try:
        filesystem, path = pafs.FileSystem.from_uri(source)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # a scheme pyarrow lacks (http, abfs, ...)
        import fsspec

        other, path = fsspec.core.url_to_fs(source)
        return pafs.PyFileSystem(pafs.FSSpecHandler(other)), path
    return filesystem, path


def _filesystem(source: str) -> pafs.FileSystem:
    return _resolve(source)[0]


def _list_inputs(source: str) -> list[tuple[str, str]]:
    """(source, path on its file system) of each input file under `source` (a file, a directory), in name order."""
    filesystem, root = _resolve(source)
    info = filesystem.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise formats.FormatError(f"{source}: no such file or directory")
    if info.type == pafs.FileType.File:
        found = [info.path]
    else:
        selector = pafs.FileSelector(root, recursive=True)
        base = selector.base_dir.rstrip("/")
        found = sorted(
            entry.path
            for entry in filesystem.get_file_info(selector)
            if entry.is_file and not entry.path[len(base) :].lstrip("/").startswith((".", "_"))
        )
    return [(source, path) for path in found if PurePosixPath(path).suffix.lower() in formats.INPUTS]


class ChunkScorer:
    """One actor of the pool: its backend built once, then chunk after chunk through `chunk_records`,
    the function the threads engine scores with. Returns the chunk's output lines (`record_line`)."""

    def __init__(self, backend: LocalModel | Servers) -> None:
        self.backend = backend.build()

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        chunk: formats.Chunk = pickle.loads(row["chunk"])
        records = chunk_records(chunk, self.backend)
        return {
            "start": chunk.start,
            "rows": chunk.count,
            "failed": sum(1 for record in records if record.get("error") is not None),
            "lines": b"".join(formats.record_line(record) for record in records),
        }


@dataclass(frozen=True)
class LocalModel:
    """A verified model's files, put once in Ray's object store for the actors to fetch: the nodes need
    no copy of the model repository."""

    name: str
    version: str
    files: ray.ObjectRef[dict[str, bytes]]  # file name -> bytes, of card.json and model.onnx
    threads: int  # ONNX Runtime threads per actor: each actor holds this many of the node's CPUs

    def build(self) -> Backend:
        with tempfile.TemporaryDirectory(prefix="tinyserve-") as root:
            directory = Path(root, self.name, self.version)
            directory.mkdir(parents=True)
            for name, data in ray.get(self.files).items():
                (directory / name).write_bytes(data)
            return LocalBackend(self.name, Path(root), threads=self.threads)  # checks the sha256 again, here


@dataclass(frozen=True)
class Servers:
    """One or more tinyserve servers; each actor sends its chunks to them in turn."""

    model: str
    urls: tuple[str, ...]
    protocol: str
    timeout: float
    retries: int
    backoff: float
    token: str | None

    def build(self) -> Backend:
        return _RoundRobin(self)


class _RoundRobin:
    """Backend over several servers: chunk i goes to server i mod n. A server still down after its
    retries leaves this actor's rotation; with none left the chunk fails, and with it the run."""

    def __init__(self, servers: Servers) -> None:
        self.backends: list[RemoteBackend] = []
        for url in servers.urls:
            try:
                self.backends.append(
                    RemoteBackend(
                        servers.model,
                        url,
                        protocol=servers.protocol,
                        timeout=servers.timeout,
                        retries=servers.retries,
                        backoff=servers.backoff,
                        token=servers.token,
                    )
                )
            except ServerUnavailable as e:
                logger.warning("leaving out %s: %s", url, e)
        if not self.backends:
            raise ServerUnavailable(f"none of {', '.join(servers.urls)} answered")
        self.model: Model = self.backends[0].model
        self.turn = 0

    def predict(self, x: np.ndarray) -> list[dict[str, Any]]:
        while True:
            backend = self.backends[self.turn % len(self.backends)]
            self.turn += 1
            try:
                return backend.predict(x)
            except ServerUnavailable:
                if len(self.backends) == 1:
                    raise
                logger.warning("leaving out %s: unavailable after its retries", backend.http.base_url)
                self.backends.remove(backend)
                backend.close()

    def close(self) -> None:
        for backend in self.backends:
            backend.close()
