"""`--engine ray`'s datasource without a Ray cluster: its read tasks, run here, give the threads engine's chunks.

Ray Data's Datasource API (`get_read_tasks`, `ReadTask`, `BlockMetadata`) is all the engine uses of Ray's
reading; this fails at once if an upgrade of the pinned Ray moves it (tests/test_ray_engine.py runs it on a
real Ray, slowly).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from client import formats

# Ray reads this once, when first imported: as client.ray_engine.connect sets it, for a later local Ray
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ray_tasks = pytest.importorskip("client.ray_tasks", reason="the ray extra is not installed")
SHAPE = formats.RowShape((2,), pixels=False)


def _chunks_of(source: ray_tasks.ChunkSource) -> list[formats.Chunk]:
    chunks = []
    for task in source.get_read_tasks(parallelism=8):
        for block in task():
            assert isinstance(block, pa.Table) and block.num_rows == 1  # a chunk a block: the pool shares them out
            (chunk,) = block.column("chunk").to_pylist()
            chunks.append(pickle.loads(chunk))
    return chunks


def test_files_of_a_directory_in_name_order_rows_numbered_across_them(tmp_path: Path) -> None:
    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    x[13, 1] = np.nan
    parts = tmp_path / "parts"
    (parts / "deeper").mkdir(parents=True)
    np.save(parts / "a.npy", x[:7])
    (parts / "b.csv").write_text("u,v\n" + "".join(f"{u},{v}\n" for u, v in x[7:15].tolist()))
    np.save(parts / "deeper" / "c.npy", x[15:])
    for skipped in (".hidden.npy", "_SUCCESS.npy", "notes.txt"):
        (parts / skipped).write_text("not an input")
    source = ray_tasks.ChunkSource([str(parts)], SHAPE, chunk_rows=3, columns=None)
    assert [Path(path).relative_to(parts).as_posix() for _, path in source.files] == ["a.npy", "b.csv", "deeper/c.npy"]
    assert source.number_rows() == 20 and source.chunks == 3 + 3 + 2

    whole = tmp_path / "whole.npy"
    np.save(whole, x)
    chunks = _chunks_of(source)
    assert [(c.start, c.count) for c in chunks] == [(0, 3), (3, 3), (6, 1), (7, 3), (10, 3), (13, 2), (15, 3), (18, 2)]
    assert [i for c in chunks for i in c.indices] == [i for i in range(20) if i != 13]
    assert {i: e for c in chunks for i, e in c.errors.items()} == {13: "NaN or Infinity; expected finite numbers"}
    expected = np.concatenate([c.x for c in formats.read_chunks(whole, SHAPE, 20) if c.x is not None])
    np.testing.assert_array_equal(np.concatenate([c.x for c in chunks if c.x is not None]), expected)


def test_a_uri_reads_as_its_path_and_a_place_without_inputs_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((4, 2), np.float32))
    source = ray_tasks.ChunkSource([(tmp_path / "x.npy").as_uri()], SHAPE, chunk_rows=3, columns=None)
    assert source.number_rows() == 4 and [c.count for c in _chunks_of(source)] == [3, 1]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ray_tasks.NoInputFiles):
        ray_tasks.ChunkSource([str(tmp_path / "empty")], SHAPE, chunk_rows=3, columns=None)
    with pytest.raises(formats.FormatError, match="missing: no such file or directory"):
        ray_tasks.ChunkSource([str(tmp_path / "missing")], SHAPE, chunk_rows=3, columns=None)
