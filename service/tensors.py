"""Open Inference Protocol (KServe V2) tensors: datatypes, JSON data and Triton's binary framing.

Pure functions over bytes and numpy arrays; `service.v2` wires them to HTTP. Every refusal is a
`TensorError` whose message names the tensor, what was expected and what came.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
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
        raise TensorError(f"input '{tensor.name}': unsupported datatype {tensor.datatype!r}; expected {spec.datatype}")
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
    if not np.isfinite(flat).all():
        raise TensorError(f"input '{tensor.name}': data contains NaN or Infinity; expected finite numbers")
    if flat.size and (flat.min() < low or flat.max() > high):
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


def wanted_outputs(request: InferenceRequest, specs: list[TensorSpec]) -> list[tuple[TensorSpec, bool]]:
    """(output, as binary?) for each requested output, or for all outputs when none are named."""
    default_binary = bool((request.parameters or {}).get("binary_data_output", False))
    by_name = {s.name: s for s in specs}
    if not request.outputs:
        return [(s, default_binary) for s in specs]
    wanted: list[tuple[TensorSpec, bool]] = []
    for output in request.outputs:
        spec = by_name.get(output.name)
        if spec is None:
            raise TensorError(f"unknown output {echo(output.name)}: the model's outputs are {', '.join(by_name)}")
        if any(s.name == spec.name for s, _ in wanted):
            raise TensorError(f"output '{spec.name}' is requested twice; name each output once")
        wanted.append((spec, bool((output.parameters or {}).get("binary_data", default_binary))))
    return wanted


def encode_response(
    header: dict[str, Any], outputs: list[tuple[TensorSpec, bool, np.ndarray]]
) -> tuple[bytes, int | None]:
    """The response body, and the JSON's length when binary outputs follow it (else None)."""
    described, blobs = [], []
    for spec, binary, array in outputs:
        array = np.ascontiguousarray(array, dtype=DATATYPES[spec.datatype])
        entry: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype, "shape": list(array.shape)}
        if binary:
            blob = array.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.ravel().tolist()
        described.append(entry)
    text = json.dumps(header | {"outputs": described}, separators=(",", ":")).encode()
    if not blobs:
        return text, None
    return b"".join([text, *blobs]), len(text)
