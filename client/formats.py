"""Input readers and output writers, by file extension; streaming, one chunk of rows at a time.

A reader yields `Chunk`s: the rows that parsed, and an error for each row that did not, each keyed by
its 0-based row index in the input. A writer turns records (dicts with a "row" key) into the output
format; the same records always give the same bytes.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from modelrepo import MAX_MAGNITUDE

INPUTS = (".npy", ".csv", ".jsonl", ".parquet")
OUTPUTS = (".jsonl", ".csv", ".npy", ".parquet")


PARQUET_NEEDS_PYARROW = "{verb} .parquet needs pyarrow, which is not installed: pip install pyarrow"


class FormatError(ValueError):
    """The file as a whole cannot be read or written (not one bad row): the run stops."""


def check_formats(source: Path, output: Path) -> None:
    """Refuse what this installation cannot read or write before any row is scored."""
    for path, allowed, what, verb in ((source, INPUTS, "input", "reading"), (output, OUTPUTS, "output", "writing")):
        if _suffix(path, allowed, what) == ".parquet":
            try:
                import pyarrow.parquet  # noqa: F401
            except ImportError:
                raise FormatError(PARQUET_NEEDS_PYARROW.format(verb=verb)) from None


@dataclass
class Chunk:
    start: int  # row index of the first row of this chunk
    count: int  # rows in this chunk, good and bad
    indices: list[int] = field(default_factory=list)  # row index of each good row
    x: np.ndarray | None = None  # the good rows, stacked: (len(indices), *row shape) float32
    errors: dict[int, str] = field(default_factory=dict)  # row index -> why it was refused


@dataclass(frozen=True)
class RowShape:
    """What one row must look like: the model's input without the batch axis."""

    shape: tuple[int, ...]  # e.g. (1,), (3,), (1, 32, 32)
    pixels: bool  # an image (28x28 rows are padded to 32x32)
    value_range: tuple[float, float] = (-MAX_MAGNITUDE, MAX_MAGNITUDE)  # the card's rule, as the server checks it

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def _suffix(path: Path, allowed: tuple[str, ...], what: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in allowed:
        raise FormatError(f"{path}: unsupported {what} format {suffix or '(none)'}; expected {', '.join(allowed)}")
    return suffix


def check_row(values: Any, shape: RowShape) -> np.ndarray:
    """One row as float32 in the model's shape, or ValueError saying what is wrong with it."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"not numbers ({e})") from None
    if shape.pixels and array.shape in ((28, 28), (1, 28, 28)):
        array = np.pad(array.reshape(28, 28), 2)  # MNIST-sized: zero border, as LeNet-5 was trained
    if array.size != shape.size:
        raise ValueError(f"expected {shape.size} values {list(shape.shape)}, got {array.size}")
    if not np.isfinite(array).all():
        raise ValueError("NaN or Infinity; expected finite numbers")
    low, high = shape.value_range
    if array.min() < low or array.max() > high:
        what = "pixels must be in [0, 1] (ink high)" if shape.pixels else f"values must be in [{low:g}, {high:g}]"
        raise ValueError(f"{what}, got values in [{array.min():g}, {array.max():g}]")
    return array.astype(np.float32).reshape(shape.shape)


def _validate_block(chunk: Chunk, indices: list[int], block: np.ndarray, shape: RowShape) -> Chunk:
    """Check rows stacked in one array at once: vectorised masks; row by row only for the messages."""
    flat = block.reshape(len(indices), shape.size)
    low, high = shape.value_range
    with np.errstate(invalid="ignore"):  # NaN compares False: refused by the isfinite mask anyway
        good = np.isfinite(flat).all(axis=1) & ((flat >= low) & (flat <= high)).all(axis=1)
    chunk.x = flat[good].astype(np.float32, copy=False).reshape(-1, *shape.shape)
    chunk.indices = [index for index, ok in zip(indices, good.tolist(), strict=True) if ok]
    for i in np.flatnonzero(~good).tolist():
        try:
            check_row(flat[i], shape)
        except ValueError as e:
            chunk.errors[indices[i]] = str(e)
    return chunk


def _validate(chunk: Chunk, pending: list[tuple[int, Any]], shape: RowShape) -> Chunk:
    """Check a chunk's parsed rows: all at once when they have one shape, else one by one."""
    indices = [index for index, _ in pending]
    try:
        block = np.asarray([values for _, values in pending], dtype=np.float64)
        if block.ndim >= 1 and math.prod(block.shape[1:]) == shape.size:
            return _validate_block(chunk, indices, block, shape)
    except (TypeError, ValueError):
        pass
    rows = []
    for index, values in pending:
        try:
            rows.append(check_row(values, shape))
            chunk.indices.append(index)
        except ValueError as e:
            chunk.errors[index] = str(e)
    chunk.x = np.stack(rows) if rows else None
    return chunk


def _chunked(rows: Iterable[tuple[int, Any]], size: int, shape: RowShape) -> Iterator[Chunk]:
    chunk: Chunk | None = None
    pending: list[tuple[int, Any]] = []
    for index, values in rows:
        if chunk is None:
            chunk = Chunk(start=index, count=0)
        chunk.count += 1
        if isinstance(values, Exception):
            chunk.errors[index] = str(values)
        else:
            pending.append((index, values))
        if chunk.count == size:
            yield _validate(chunk, pending, shape) if pending else chunk
            chunk, pending = None, []
    if chunk is not None:
        yield _validate(chunk, pending, shape) if pending else chunk


def count_rows(path: Path) -> int | None:
    """Rows in the input, cheaply, for the progress bar's ETA (None when unknown)."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return int(np.load(path, mmap_mode="r").shape[0])
    if suffix in (".csv", ".jsonl"):
        lines = 0
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                lines += block.count(b"\n")
        return lines - 1 if suffix == ".csv" else lines
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    return None


def read_chunks(path: Path, shape: RowShape, size: int, columns: list[str] | None = None) -> Iterator[Chunk]:
    suffix = _suffix(path, INPUTS, "input")
    if not path.is_file():
        raise FormatError(f"{path}: input file not found")
    if suffix == ".npy":
        return _read_npy(path, shape, size)
    if suffix == ".csv":
        return _chunked(_csv_rows(path, shape, columns), size, shape)
    if suffix == ".jsonl":
        return _chunked(_jsonl_rows(path), size, shape)
    return _chunked(_parquet_rows(path, columns), size, shape)


def _read_npy(path: Path, shape: RowShape, size: int) -> Iterator[Chunk]:
    data = np.load(path, mmap_mode="r")  # memory-mapped: only the chunk in hand is read
    if data.ndim == 1 and shape.size == 1:
        data = data.reshape(-1, 1)
    mnist = shape.pixels and data.shape[1:] in ((28, 28), (1, 28, 28))
    if data.ndim < 2 or (math.prod(data.shape[1:]) != shape.size and not mnist):
        raise FormatError(f"{path}: expected rows of {list(shape.shape)} values, the array is {list(data.shape)}")
    for start in range(0, len(data), size):
        block = np.asarray(data[start : start + size])
        if mnist:  # 28x28: zero border to 32x32, as LeNet-5 was trained
            block = np.pad(block.reshape(-1, 28, 28), ((0, 0), (2, 2), (2, 2)))
        chunk = Chunk(start=start, count=len(block))
        yield _validate_block(chunk, list(range(start, start + len(block))), block, shape)


def _csv_rows(path: Path, shape: RowShape, columns: list[str] | None) -> Iterator[tuple[int, Any]]:
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return
        picks = _pick_columns(path, header, columns, shape)
        for index, record in enumerate(reader):
            if len(record) != len(header):
                yield index, ValueError(f"expected {len(header)} fields as in the header, got {len(record)}")
                continue
            try:
                yield index, [float(record[i]) for i in picks]
            except ValueError as e:
                yield index, ValueError(f"not a number: {e}".replace("could not convert string to float: ", ""))


def _pick_columns(path: Path, header: list[str], columns: list[str] | None, shape: RowShape) -> list[int]:
    if not columns:
        if len(header) != shape.size:
            raise FormatError(
                f"{path}: {len(header)} columns but the model takes {shape.size} features; choose them with --columns"
            )
        return list(range(len(header)))
    picks = []
    for column in columns:
        if column in header:
            picks.append(header.index(column))
        elif column.isdigit() and int(column) < len(header):
            picks.append(int(column))
        else:
            raise FormatError(f"{path}: no column {column!r}; the header has {', '.join(header)}")
    if len(picks) != shape.size:
        raise FormatError(f"{path}: --columns picks {len(picks)} columns, the model takes {shape.size} features")
    return picks


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """Each line: the typed request's field for one row: {"x": 1.0}, {"x": [73, 80, 75]}, {"image": [[...]]}."""
    with path.open("rb") as f:
        for index, line in enumerate(f):
            try:
                record = json.loads(line)
            except ValueError as e:
                yield index, ValueError(f"not valid JSON ({e})")
                continue
            if not isinstance(record, dict):
                yield index, ValueError("expected a JSON object per line")
                continue
            keys = [k for k in ("x", "image", "images") if k in record]
            if len(keys) != 1 or len(record) != 1:
                yield index, ValueError(f"expected one field, x or image, got {', '.join(record) or 'none'}")
                continue
            value = record[keys[0]]
            if isinstance(value, bool) or _has_non_number(value):
                yield index, ValueError("expected numbers, got booleans, strings or nulls")
                continue
            yield index, value


def _has_non_number(value: Any) -> bool:
    if isinstance(value, list):
        return any(_has_non_number(v) for v in value)
    return isinstance(value, bool) or not isinstance(value, int | float)


def _parquet_rows(path: Path, columns: list[str] | None) -> Iterator[tuple[int, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise FormatError(PARQUET_NEEDS_PYARROW.format(verb="reading")) from e
    index = 0
    for batch in pq.ParquetFile(path).iter_batches(columns=columns or None):
        table = np.column_stack([batch.column(i).to_numpy(zero_copy_only=False) for i in range(batch.num_columns)])
        for row in table:
            yield index, row
            index += 1


# Writers ------------------------------------------------------------------------------------------


def record_line(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def write_output(path: Path, fields: list[str], records: Iterable[dict[str, Any]], total: int) -> None:
    """Write every record, in order, to `path` (which the caller renames into place)."""
    suffix = _suffix(path.with_name(path.name.removesuffix(".tmp")), OUTPUTS, "output")
    if suffix == ".jsonl":
        with path.open("wb") as f:
            for record in records:
                f.write(record_line(record))
    elif suffix == ".csv":
        with path.open("w", newline="") as f:
            _write_csv(f, fields, records)
    elif suffix == ".npy":
        _write_npy(path, fields, records, total)
    else:
        _write_parquet(path, fields, records)


def _flat(record: dict[str, Any], fields: list[str]) -> list[Any]:
    row: list[Any] = []
    for name in fields:
        value = record.get(name)
        if name == "probabilities":
            row.extend(value if value is not None else [None] * 10)
        else:
            row.append(value)
    return row


def _columns(fields: list[str]) -> list[str]:
    return [c for name in fields for c in ([f"p{d}" for d in range(10)] if name == "probabilities" else [name])]


def _write_csv(f: IO[str], fields: list[str], records: Iterable[dict[str, Any]]) -> None:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(_columns(fields))
    for record in records:
        writer.writerow(["" if v is None else v for v in _flat(record, fields)])


def _dtype(fields: list[str]) -> np.dtype[Any]:
    types = {"row": "<i8", "y": "<f4", "label": "<i8", "probability": "<f4", "error": "<U200"}
    return np.dtype([(n, ("<f4", (10,)) if n == "probabilities" else types[n]) for n in fields])


def _write_npy(path: Path, fields: list[str], records: Iterable[dict[str, Any]], total: int) -> None:
    """A structured array, written block by block (the header needs only the row count)."""
    dtype = _dtype(fields)
    missing = {"y": np.nan, "label": -1, "probability": np.nan, "probabilities": [np.nan] * 10, "error": ""}
    with path.open("wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (total,)}
        )
        block: list[tuple[Any, ...]] = []
        for record in records:
            block.append(tuple(record.get(n) if record.get(n) is not None else missing[n] for n in fields))
            if len(block) == 4096:
                f.write(np.array(block, dtype=dtype).tobytes())
                block = []
        if block:
            f.write(np.array(block, dtype=dtype).tobytes())


def _write_parquet(path: Path, fields: list[str], records: Iterable[dict[str, Any]]) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise FormatError(PARQUET_NEEDS_PYARROW.format(verb="writing")) from e
    types = {
        "row": pa.int64(),
        "y": pa.float32(),
        "label": pa.int64(),
        "probability": pa.float32(),
        "probabilities": pa.list_(pa.float32()),
        "error": pa.string(),
    }
    schema = pa.schema([(n, types[n]) for n in fields])
    with pq.ParquetWriter(path, schema) as writer:
        block: list[dict[str, Any]] = []
        for record in records:
            block.append(record)
            if len(block) == 65536:
                writer.write_table(pa.Table.from_pylist(block, schema=schema))
                block = []
        if block:
            writer.write_table(pa.Table.from_pylist(block, schema=schema))
