"""Input readers and output writers, by file extension; streaming, one chunk of rows at a time.

A reader yields `Chunk`s: the rows that parsed, and an error for each row that did not, each keyed by
its 0-based row index in the input. A writer turns records (dicts with a "row" key) into the output
format; the same records always give the same bytes.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePath, PurePosixPath
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
    pixels: bool  # a picture
    value_range: tuple[float, float] = (-MAX_MAGNITUDE, MAX_MAGNITUDE)  # the card's rule, as the server checks it
    padded_side: int = 0  # pictures of this side are zero-padded to the model's, as the server pads them

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def padded(self, values: np.ndarray) -> np.ndarray | None:
        """Rows of smaller pictures (`padded_side` square, with or without a channel axis) zero-padded to the
        model's side; None when they are not of that size."""
        small = self.padded_side
        if not small or values.shape[1:] not in ((small, small), (1, small, small)):
            return None
        pad = (self.shape[-1] - small) // 2
        return np.pad(values.reshape(-1, small, small), ((0, 0), (pad, pad), (pad, pad)))


@dataclass(frozen=True)
class Layout:
    """An output record's fields, in order, and how many probabilities a classifier's record holds."""

    fields: tuple[str, ...]
    classes: int = 0


def _suffix(path: PurePath, allowed: tuple[str, ...], what: str) -> str:
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
    padded = shape.padded(array[None])
    if padded is not None:
        array = padded[0]
    if array.size != shape.size:
        raise ValueError(f"expected {shape.size} values {list(shape.shape)}, got {array.size}")
    if not np.isfinite(array).all():
        raise ValueError("NaN or Infinity; expected finite numbers")
    low, high = shape.value_range
    if array.min() < low or array.max() > high:
        what = f"{'pixels' if shape.pixels else 'values'} must be in [{low:g}, {high:g}]"
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
    if path.suffix.lower() not in INPUTS or not path.is_file():
        return None
    with path.open("rb") as f:
        return count_stream(f, path.name)


def count_stream(f: IO[bytes], name: str) -> int:
    """Rows in one input file, exactly as its reader will number them: from the .npy header or the
    Parquet footer; by lines for .csv (less the header) and .jsonl. .parquet needs a seekable stream."""
    suffix = _suffix(PurePosixPath(name), INPUTS, "input")
    if suffix == ".npy":
        shape, _, _ = _npy_header(f, name)
        return shape[0] if shape else 0
    if suffix == ".parquet":
        return int(_parquet_file(f).metadata.num_rows)
    lines, last = 0, b"\n"
    for block in iter(lambda: f.read(1 << 20), b""):
        lines, last = lines + block.count(b"\n"), block[-1:]
    lines += last != b"\n"  # a last line without its newline is a row too
    return max(0, lines - 1) if suffix == ".csv" else lines


def read_chunks(path: Path, shape: RowShape, size: int, columns: list[str] | None = None) -> Iterator[Chunk]:
    _suffix(path, INPUTS, "input")
    if not path.is_file():
        raise FormatError(f"{path}: input file not found")
    if path.suffix.lower() == ".npy":
        return _read_npy(path, shape, size)
    return _read_file(path, shape, size, columns)


def _read_file(path: Path, shape: RowShape, size: int, columns: list[str] | None) -> Iterator[Chunk]:
    with path.open("rb") as f:
        yield from read_stream(f, str(path), shape, size, columns)


def read_stream(
    f: IO[bytes], name: str, shape: RowShape, size: int, columns: list[str] | None = None, start: int = 0
) -> Iterator[Chunk]:
    """The chunks of one input file read from an open binary stream (a file on any file system), its rows
    numbered from `start`. The same rows give the same chunks as `read_chunks`. .parquet needs seeking."""
    suffix = _suffix(PurePosixPath(name), INPUTS, "input")
    if suffix == ".npy":
        return _npy_stream(f, name, shape, size, start)
    if suffix == ".csv":
        rows = _csv_rows(io.TextIOWrapper(f, newline=""), name, shape, columns)
    elif suffix == ".jsonl":
        rows = _jsonl_rows(f)
    else:
        rows = _parquet_rows(f, columns)
    return _chunked(((start + index, values) for index, values in rows), size, shape)


def _read_npy(path: Path, shape: RowShape, size: int) -> Iterator[Chunk]:
    data = np.load(path, mmap_mode="r")  # memory-mapped: only the chunk in hand is read
    return _npy_chunks(str(path), data.shape, lambda a, b: np.asarray(data[a:b]), shape, size)


def _npy_header(f: IO[bytes], name: str) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    try:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(f)
    except ValueError as e:
        raise FormatError(f"{name}: not a .npy file ({e})") from None
    return shape, fortran_order, dtype


def _npy_stream(f: IO[bytes], name: str, shape: RowShape, size: int, start: int) -> Iterator[Chunk]:
    """.npy read sequentially, block by block, as `_read_npy` reads its memory map."""
    array_shape, fortran_order, dtype = _npy_header(f, name)
    if fortran_order or dtype.hasobject:
        raise FormatError(f"{name}: expected a C-ordered array of numbers (np.save(np.ascontiguousarray(x)))")
    row_bytes = dtype.itemsize * math.prod(array_shape[1:])

    def block(a: int, b: int) -> np.ndarray:
        data = f.read((b - a) * row_bytes)
        if len(data) != (b - a) * row_bytes:
            raise FormatError(f"{name}: the file ends at row {a + len(data) // max(row_bytes, 1)} of {array_shape[0]}")
        return np.frombuffer(data, dtype=dtype).reshape(b - a, *array_shape[1:])

    return _npy_chunks(name, array_shape, block, shape, size, start)


def _npy_chunks(
    name: str,
    array_shape: tuple[int, ...],
    block: Callable[[int, int], np.ndarray],
    shape: RowShape,
    size: int,
    start: int = 0,
) -> Iterator[Chunk]:
    """Chunks of rows [a, b) taken with `block(a, b)`, in order, from an array of `array_shape`."""
    if len(array_shape) == 1 and shape.size == 1:
        array_shape = (array_shape[0], 1)
    small = shape.padded(np.empty((0, *array_shape[1:]))) is not None
    if len(array_shape) < 2 or (math.prod(array_shape[1:]) != shape.size and not small):
        raise FormatError(f"{name}: expected rows of {list(shape.shape)} values, the array is {list(array_shape)}")
    rows = array_shape[0]
    for a in range(0, rows, size):
        b = min(a + size, rows)
        values = block(a, b)
        padded = shape.padded(values) if small else None  # a zero border to the model's side, as the server pads
        chunk = Chunk(start=start + a, count=b - a)
        yield _validate_block(chunk, list(range(start + a, start + b)), values if padded is None else padded, shape)


def _csv_rows(f: IO[str], name: str, shape: RowShape, columns: list[str] | None) -> Iterator[tuple[int, Any]]:
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None:
        return
    picks = _pick_columns(name, header, columns, shape)
    for index, record in enumerate(reader):
        if len(record) != len(header):
            yield index, ValueError(f"expected {len(header)} fields as in the header, got {len(record)}")
            continue
        try:
            yield index, [float(record[i]) for i in picks]
        except ValueError as e:
            yield index, ValueError(f"not a number: {e}".replace("could not convert string to float: ", ""))


def _pick_columns(name: str, header: list[str], columns: list[str] | None, shape: RowShape) -> list[int]:
    if not columns:
        if len(header) != shape.size:
            raise FormatError(
                f"{name}: {len(header)} columns but the model takes {shape.size} features; choose them with --columns"
            )
        return list(range(len(header)))
    picks = []
    for column in columns:
        if column in header:
            picks.append(header.index(column))
        elif column.isdigit() and int(column) < len(header):
            picks.append(int(column))
        else:
            raise FormatError(f"{name}: no column {column!r}; the header has {', '.join(header)}")
    if len(picks) != shape.size:
        raise FormatError(f"{name}: --columns picks {len(picks)} columns, the model takes {shape.size} features")
    return picks


def _jsonl_rows(f: IO[bytes]) -> Iterator[tuple[int, Any]]:
    """Each line: the typed request's field for one row: {"x": 1.0}, {"x": [73, 80, 75]}, {"image": [[...]]}."""
    lines: IO[bytes] = f if isinstance(f, io.BufferedReader) else io.BufferedReader(f)  # type: ignore[type-var]
    for index, line in enumerate(lines):
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


def _parquet_file(f: IO[bytes]) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise FormatError(PARQUET_NEEDS_PYARROW.format(verb="reading")) from e
    return pq.ParquetFile(f)


def _parquet_rows(f: IO[bytes], columns: list[str] | None) -> Iterator[tuple[int, Any]]:
    index = 0
    for batch in _parquet_file(f).iter_batches(columns=columns or None):
        table = np.column_stack([batch.column(i).to_numpy(zero_copy_only=False) for i in range(batch.num_columns)])
        for row in table:
            yield index, row
            index += 1


# Writers ------------------------------------------------------------------------------------------


def record_line(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def write_output(path: Path, layout: Layout, records: Iterable[dict[str, Any]], total: int) -> None:
    """Write every record, in order, to `path` (which the caller renames into place)."""
    suffix = _suffix(path.with_name(path.name.removesuffix(".tmp")), OUTPUTS, "output")
    if suffix == ".jsonl":
        with path.open("wb") as f:
            for record in records:
                f.write(record_line(record))
    elif suffix == ".csv":
        with path.open("w", newline="") as f:
            _write_csv(f, layout, records)
    elif suffix == ".npy":
        _write_npy(path, layout, records, total)
    else:
        _write_parquet(path, layout, records)


def _flat(record: dict[str, Any], layout: Layout) -> list[Any]:
    row: list[Any] = []
    for name in layout.fields:
        value = record.get(name)
        if name == "probabilities":
            row.extend(value if value is not None else [None] * layout.classes)
        else:
            row.append(value)
    return row


def _columns(layout: Layout) -> list[str]:
    """A classifier's probabilities take a column each, p0, p1, ..., in the card's label order."""
    return [
        column
        for name in layout.fields
        for column in ([f"p{i}" for i in range(layout.classes)] if name == "probabilities" else [name])
    ]


def _write_csv(f: IO[str], layout: Layout, records: Iterable[dict[str, Any]]) -> None:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(_columns(layout))
    for record in records:
        writer.writerow(["" if v is None else v for v in _flat(record, layout)])


def _dtype(layout: Layout) -> np.dtype[Any]:
    types = {"row": "<i8", "y": "<f4", "label": "<i8", "probability": "<f4", "error": "<U200"}
    return np.dtype([(n, ("<f4", (layout.classes,)) if n == "probabilities" else types[n]) for n in layout.fields])


def _write_npy(path: Path, layout: Layout, records: Iterable[dict[str, Any]], total: int) -> None:
    """A structured array, written block by block (the header needs only the row count)."""
    dtype = _dtype(layout)
    missing = {"y": np.nan, "label": -1, "probability": np.nan, "probabilities": [np.nan] * layout.classes, "error": ""}
    with path.open("wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (total,)}
        )
        block: list[tuple[Any, ...]] = []
        for record in records:
            block.append(tuple(record.get(n) if record.get(n) is not None else missing[n] for n in layout.fields))
            if len(block) == 4096:
                f.write(np.array(block, dtype=dtype).tobytes())
                block = []
        if block:
            f.write(np.array(block, dtype=dtype).tobytes())


def _write_parquet(path: Path, layout: Layout, records: Iterable[dict[str, Any]]) -> None:
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
    schema = pa.schema([(n, types[n]) for n in layout.fields])
    with pq.ParquetWriter(path, schema) as writer:
        block: list[dict[str, Any]] = []
        for record in records:
            block.append(record)
            if len(block) == 65536:
                writer.write_table(pa.Table.from_pylist(block, schema=schema))
                block = []
        if block:
            writer.write_table(pa.Table.from_pylist(block, schema=schema))
