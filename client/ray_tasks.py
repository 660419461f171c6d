"""What `--engine ray` runs on the Ray cluster: files read into the client's chunks, chunks scored by actors.

A dataset row is one chunk of the input (`client.formats.Chunk`, up to --chunk-size rows, bad rows
already marked), so that Ray schedules, retries and orders exactly the unit the threads engine does.
Imported only once Ray is connected (see `client.ray_engine`).
"""

from __future__ import annotations

import logging
import pickle
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import ray
from ray.data.block import Block, BlockAccessor
from ray.data.datasource import FileBasedDatasource

from client import formats
from client.backends import Backend, LocalBackend, Model, RemoteBackend, ServerUnavailable
from client.scorer import chunk_records

logger = logging.getLogger("tinyserve.client")


class ChunkSource(FileBasedDatasource):
    """Input files parsed by the client's own readers, one dataset row per chunk, rows numbered across files.

    Ray lists directories (recursively, in name order), filters by extension, opens local paths and
    URIs alike (S3, GCS, HDFS, ...) and retries failed reads; each file is read by one task, in order.
    """

    def __init__(self, paths: list[str], shape: formats.RowShape, chunk_rows: int, columns: list[str] | None) -> None:
        super().__init__(paths, file_extensions=[suffix.lstrip(".") for suffix in formats.INPUTS])
        self.shape, self.chunk_rows, self.columns = shape, chunk_rows, columns
        self.starts: dict[str, int] = {}  # file -> index of its first row among all the files' rows
        self.chunks = 0  # dataset rows: chunks of every file

    def number_rows(self) -> int:
        """Count every file's rows (here, on the driver) so that each chunk carries its rows' global indices."""
        total = 0
        for path in self._paths():
            self.starts[path] = total
            with self._filesystem.open_input_file(path) as f:
                rows = formats.count_stream(f, path)
            total += rows
            self.chunks += -(-rows // self.chunk_rows)
        return total

    def _open_input_source(self, filesystem: Any, path: str, **open_args: Any) -> Any:
        if path.lower().endswith(".parquet"):  # Parquet reads its footer first: it needs seeking
            return filesystem.open_input_file(path)
        return super()._open_input_source(filesystem, path, **open_args)

    def _read_stream(self, f: IO[bytes], path: str) -> Iterator[Block]:
        for chunk in formats.read_stream(f, path, self.shape, self.chunk_rows, self.columns, self.starts[path]):
            yield BlockAccessor.batch_to_block(
                {
                    "start": np.array([chunk.start]),
                    "chunk": np.array([pickle.dumps(chunk, protocol=5)], dtype=object),
                }
            )


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
