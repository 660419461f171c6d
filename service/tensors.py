"""Open Inference Protocol (KServe V2) tensors: datatypes, JSON data and Triton's binary framing.

Pure functions over bytes and numpy arrays; `service.v2` wires them to HTTP. Every refusal is a
`TensorError` whose message names the tensor, what was expected and what came.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field

from modelrepo import TensorSpec
from service.errors import InvalidInput, echo

HEADER = "inference-header-content-length"

DATATYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(dtype).newbyteorder("<")
    for name, dtype in {
        "BOOL": np.bool_,
        "UINT8": np.uint8,
        "UINT16": np.uint16,
        "UINT32": np.uint32,
        "UINT64": np.uint64,
        "INT8": np.int8,
        "INT16": np.int16,
        "INT32": np.int32,
        "INT64": np.int64,
        "FP16": np.float16,
        "FP32": np.float32,
        "FP64": np.float64,
    }.items()
}
ONNX_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
}


TensorError = InvalidInput  # a malformed V2 request: answered 400 (INVALID_ARGUMENT) with its sentence
MAX_ENTRIES = 64  # a request's inputs or outputs, one parameters map's entries, one shape's dimensions (numpy's most)

# Per-output parameters served: raw bytes on HTTP, and the classification extension (top k as BYTES).
OUTPUT_PARAMETERS = frozenset({"binary_data", "classification"})
SHARED_MEMORY = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(description="input tensor name, as in the model metadata")
    shape: list[int] = Field(description="shape, row-major; the first axis is the batch")
    datatype: str = Field(description="FP32, INT64, ... as in the model metadata")
    parameters: dict[str, Any] | None = Field(None, description="binary_data_size: bytes that follow the JSON")
    data: Any = Field(None, description="flat or nested row-major values; omitted for binary data")


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    parameters: dict[str, Any] | None = Field(None, description="binary_data: true to get raw bytes")


class InferenceRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="binary_data_output: true for raw bytes")
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


def check_counts(data: Any) -> None:
    """A parsed request's lists and maps counted before their entries are validated one by one.

    The body limit bounds bytes, not objects: 16 MB of JSON can name a million outputs, or as many
    parameters, each a Python object to build and check (~5 s of a worker's CPU to refuse), where 16 MB of
    tensor data is ~0.5 s. No model needs more than MAX_ENTRIES of any of them. (gRPC counts its message's
    fields the same way: service.grpc_server.to_v2.)
    """
    if not isinstance(data, dict):
        return  # Pydantic says what is wrong with it
    count("the request", "parameters", data.get("parameters"))
    for key in ("inputs", "outputs"):
        entries = data.get(key)
        count("the request", key, entries)
        for i, entry in enumerate(entries if isinstance(entries, list) else ()):
            if isinstance(entry, dict):
                where = tensor_named(key, entry.get("name"), i)
                count(where, "parameters", entry.get("parameters"))
                count(where, "dimensions in its shape", entry.get("shape"))


def tensor_named(key: str, name: Any, index: int) -> str:
    """How a sentence names a request's tensor: "input 'x'", or "output #3" where its name is not a string."""
    return f"{key[:-1]} {echo(name) if isinstance(name, str) else f'#{index}'}"


def count(where: str, what: str, entries: Any) -> None:
    """TensorError if `entries` (a list, a map, or a protobuf's repeated field or map) has more than MAX_ENTRIES."""
    if not isinstance(entries, str | bytes) and hasattr(entries, "__len__") and len(entries) > MAX_ENTRIES:
        raise TensorError(f"{where} has {len(entries)} {what}; at most {MAX_ENTRIES} are accepted")


def metadata(spec: TensorSpec) -> dict[str, Any]:
    """A model's input or output as the protocol describes it (-1: any size)."""
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON part and the binary part of a request body."""
    if header_length is None:
        return body, memoryview(b"")
    if not header_length.strip().isdigit():
        raise TensorError(f"Inference-Header-Content-Length must be a byte count, got {header_length!r}")
    n = int(header_length)
    if n > len(body):
        raise TensorError(f"Inference-Header-Content-Length is {n} but the body has only {len(body)} bytes")
    return body[:n], memoryview(body)[n:]


def _shape_text(shape: tuple[int, ...] | list[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _check_against(tensor: RequestInput, spec: TensorSpec) -> tuple[np.dtype[Any], int]:
    if tensor.datatype not in DATATYPES:
        raise TensorError(
            f"input '{tensor.name}': unsupported datatype {echo(tensor.datatype)}; expected {spec.datatype}"
        )
    if tensor.datatype != spec.datatype:
        raise TensorError(
            f"input '{tensor.name}': datatype {tensor.datatype} does not match the model's {spec.datatype}"
        )
    shape = tuple(tensor.shape)
    fits = len(shape) == len(spec.shape) and all(w in (-1, g) for w, g in zip(spec.shape, shape, strict=True))
    if not fits or any(d < 0 for d in shape) or (shape and shape[0] == 0):
        raise TensorError(
            f"input '{tensor.name}': shape {_shape_text(shape)} does not match the model's {_shape_text(spec.shape)}"
        )
    return DATATYPES[tensor.datatype], math.prod(shape)


def _check_values(tensor: RequestInput, values: np.ndarray, value_range: tuple[float, float]) -> None:
    """The model's one rule on values (modelrepo.ModelCard.input_range): finite, within [low, high]."""
    low, high = value_range
    flat = values.reshape(-1)
    if not flat.size:
        return
    smallest, largest = flat.min(), flat.max()  # NaN carries through both, and fails the comparisons
    if low <= smallest and largest <= high and np.isfinite(smallest) and np.isfinite(largest):
        return  # two passes over the values and no temporary array: the usual case of a large tensor
    if not np.isfinite(flat).all():
        raise TensorError(f"input '{tensor.name}': data contains NaN or Infinity; expected finite numbers")
    if smallest < low or largest > high:
        first = int(np.flatnonzero((flat < low) | (flat > high))[0])
        row = first // max(1, math.prod(tensor.shape[1:]))
        raise TensorError(
            f"input '{tensor.name}': row {row} has the value {flat[first]:g}; expected numbers in [{low:g}, {high:g}]"
        )


def _from_json(tensor: RequestInput, dtype: np.dtype[Any], count: int, value_range: tuple[float, float]) -> np.ndarray:
    if tensor.data is None:
        raise TensorError(f"input '{tensor.name}': no data; give 'data' or parameters.binary_data_size")
    try:
        raw = np.asarray(tensor.data)
    except ValueError as e:
        raise TensorError(f"input '{tensor.name}': data is ragged (rows of different lengths)") from e
    kind = "b" if dtype.kind == "b" else "iu" if dtype.kind in "iu" else "iuf"
    if raw.dtype.kind not in kind:
        got = {"U": "strings", "O": "nulls, objects or ragged rows", "b": "booleans", "f": "non-integers"}
        raise TensorError(
            f"input '{tensor.name}': data must be {'booleans' if kind == 'b' else 'numbers'} for "
            f"{tensor.datatype}, got {got.get(raw.dtype.kind, raw.dtype.name)}"
        )
    if raw.size != count:
        raise TensorError(
            f"input '{tensor.name}': shape {_shape_text(tensor.shape)} needs {count} values, data has {raw.size}"
        )
    if dtype.kind == "f":
        _check_values(tensor, raw, value_range)  # before the cast: 1e39 would become inf in float32
    return raw.astype(dtype, copy=False).reshape(tensor.shape)


def _from_binary(tensor: RequestInput, dtype: np.dtype[Any], count: int, binary: memoryview, offset: int) -> np.ndarray:
    size = (tensor.parameters or {}).get("binary_data_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise TensorError(f"input '{tensor.name}': binary_data_size must be a non-negative integer, got {size!r}")
    expected = count * dtype.itemsize
    if size != expected:
        raise TensorError(
            f"input '{tensor.name}': binary_data_size is {size} bytes, but shape {_shape_text(tensor.shape)} "
            f"of {tensor.datatype} is {expected} bytes"
        )
    if offset + size > len(binary):
        raise TensorError(
            f"input '{tensor.name}': expected {size} bytes of binary data, only {len(binary) - offset} follow "
            "the JSON (truncated body?)"
        )
    return np.frombuffer(binary[offset : offset + size], dtype=dtype).reshape(tensor.shape)


def decode_inputs(request: InferenceRequest, binary: memoryview, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """The request's input tensors, checked against the model's inputs and value range, in the model's dtypes."""
    by_name = {s.name: s for s in specs}
    names = ", ".join(by_name)
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in request.inputs:
        spec = by_name.get(tensor.name)
        if spec is None:
            raise TensorError(f"unknown input {echo(tensor.name)}: the model's inputs are {names}")
        if tensor.name in arrays:
            raise TensorError(f"input '{tensor.name}' is given twice")
        _refuse_shared_memory("input", tensor.name, tensor.parameters)
        dtype, count = _check_against(tensor, spec)
        if tensor.parameters and "binary_data_size" in tensor.parameters:
            if tensor.data is not None:
                raise TensorError(f"input '{tensor.name}': give either data or binary_data_size, not both")
            arrays[tensor.name] = _from_binary(tensor, dtype, count, binary, offset)
            offset += count * dtype.itemsize
            if dtype.kind == "f":
                _check_values(tensor, arrays[tensor.name], spec.value_range)
        else:
            arrays[tensor.name] = _from_json(tensor, dtype, count, spec.value_range)
    missing = [n for n in by_name if n not in arrays]
    if missing:
        raise TensorError(f"missing input {', '.join(repr(m) for m in missing)}: the model's inputs are {names}")
    if offset != len(binary):
        raise TensorError(f"{len(binary) - offset} bytes follow the JSON that no input's binary_data_size accounts for")
    return arrays


@dataclass(frozen=True)
class WantedOutput:
    """One output as the request asks for it: raw bytes or JSON, the top `class_count` classes or the tensor."""

    spec: TensorSpec
    binary: bool
    class_count: int = 0

    def take(self, array: np.ndarray, labels: tuple[str, ...] | None) -> tuple[TensorSpec, bool, np.ndarray]:
        """The model's output as this request wants it: (spec of what is sent, as binary?, array)."""
        if not self.class_count:
            return self.spec, self.binary, array
        classes = classify(array, self.class_count, labels)
        return replace(self.spec, dtype="bytes", shape=(-1, classes.shape[1])), self.binary, classes


def _refuse_shared_memory(what: str, name: str, parameters: dict[str, Any] | None) -> None:
    used = [p for p in SHARED_MEMORY if p in (parameters or {})]
    if used:
        raise TensorError(
            f"{what} '{name}': shared memory is not supported (parameter '{used[0]}'); "
            "send the data in the request and read it from the response"
        )


def _class_count(name: str, parameters: dict[str, Any]) -> int:
    count = parameters.get("classification", 0)
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise TensorError(f"output '{name}': classification must be a non-negative integer, got {count!r}")
    return count


def wanted_outputs(request: InferenceRequest, specs: list[TensorSpec]) -> list[WantedOutput]:
    """Each requested output, or all outputs when none are named."""
    default_binary = bool((request.parameters or {}).get("binary_data_output", False))
    by_name = {s.name: s for s in specs}
    if not request.outputs:
        return [WantedOutput(s, default_binary) for s in specs]
    wanted: list[WantedOutput] = []
    for output in request.outputs:
        spec = by_name.get(output.name)
        if spec is None:
            raise TensorError(f"unknown output {echo(output.name)}: the model's outputs are {', '.join(by_name)}")
        if any(w.spec.name == spec.name for w in wanted):
            raise TensorError(f"output '{spec.name}' is requested twice; name each output once")
        parameters = output.parameters or {}
        _refuse_shared_memory("output", spec.name, parameters)
        unknown = sorted(set(parameters) - OUTPUT_PARAMETERS)
        if unknown:
            raise TensorError(
                f"output '{spec.name}': unsupported parameter {echo(unknown[0])}; "
                f"expected {' or '.join(sorted(OUTPUT_PARAMETERS))}"
            )
        binary = parameters.get("binary_data", default_binary)
        wanted.append(WantedOutput(spec, bool(binary), _class_count(spec.name, parameters)))
    return wanted


def classify(array: np.ndarray, class_count: int, labels: tuple[str, ...] | None) -> np.ndarray:
    """Triton's classification extension: each row's top `class_count` entries, highest first, as BYTES
    "value:index" ("value:index:label" where the card names the entries); at most as many as the row has."""
    rows = array.reshape(len(array), -1)
    k = min(class_count, rows.shape[1])
    top = np.argsort(-rows, axis=1, kind="stable")[:, :k]
    named = labels if labels is not None and len(labels) == rows.shape[1] else None
    out = np.empty(top.shape, dtype=object)
    for r, c in np.ndindex(top.shape):
        index = int(top[r, c])
        text = f"{rows[r, index]:f}:{index}" + (f":{named[index]}" if named else "")
        out[r, c] = text.encode()
    return out


def serialize_bytes(array: np.ndarray) -> bytes:
    """A BYTES tensor as the protocol's raw form: each element's length (uint32, little-endian), then its bytes."""
    return b"".join(struct.pack("<I", len(item)) + item for item in array.reshape(-1))


def encode_response(
    header: dict[str, Any], outputs: list[tuple[TensorSpec, bool, np.ndarray]]
) -> tuple[bytes, int | None]:
    """The response body, and the JSON's length when binary outputs follow it (else None)."""
    described, blobs = [], []
    for spec, binary, array in outputs:
        entry: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype, "shape": list(array.shape)}
        if binary:
            blob = raw_bytes(spec, array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif spec.datatype == "BYTES":
            entry["data"] = [item.decode() for item in array.reshape(-1)]
        else:
            entry["data"] = np.asarray(array, dtype=DATATYPES[spec.datatype]).ravel().tolist()
        described.append(entry)
    text = orjson.dumps(header | {"outputs": described})
    if not blobs:
        return text, None
    return b"".join([text, *blobs]), len(text)


def raw_bytes(spec: TensorSpec, array: np.ndarray) -> bytes:
    """An output's raw little-endian bytes (Triton's binary extension, gRPC's raw_output_contents)."""
    if spec.datatype == "BYTES":
        return serialize_bytes(array)
    return np.ascontiguousarray(array, dtype=DATATYPES[spec.datatype]).tobytes()
