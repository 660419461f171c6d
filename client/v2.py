"""The Open Inference Protocol's binary tensor extension, as a client speaks it: one request builder and
one answer reader, used by the scorer, the benchmarks and the tests alike.

A binary request is the JSON header (its length in `Inference-Header-Content-Length`) followed by the raw
little-endian bytes of each input; the answer is framed the same way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np

from modelrepo import DATATYPES

HEADER = "inference-header-content-length"
DTYPES = {datatype: np.dtype(name).newbyteorder("<") for name, datatype in DATATYPES.items()}  # FP32 -> <f4


def binary_request(
    x: np.ndarray, outputs: Sequence[str] = (), *, input_name: str = "x", binary_output: bool = True
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of an infer request with `x` as one binary input, its answer asked for in binary
    (unless `binary_output` is False: then as JSON): the named `outputs`, or every output when none is named."""
    x = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("<"))
    request: dict[str, object] = {
        "inputs": [
            {
                "name": input_name,
                "shape": list(x.shape),
                "datatype": DATATYPES[x.dtype.name],
                "parameters": {"binary_data_size": x.nbytes},
            }
        ]
    }
    if outputs:
        parameters = {"parameters": {"binary_data": True}} if binary_output else {}
        request["outputs"] = [{"name": name} | parameters for name in outputs]
    elif binary_output:
        request["parameters"] = {"binary_data_output": True}
    header = json.dumps(request).encode()
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}
    return header + x.tobytes(), headers


def read_answer(content: bytes, headers: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Each output of an infer answer by name, whether it came as binary data or as JSON."""
    length = int(headers.get(HEADER) or headers.get(HEADER.title()) or len(content))
    offset = length
    arrays = {}
    for output in json.loads(content[:length])["outputs"]:
        dtype, shape = DTYPES[output["datatype"]], output["shape"]
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is None:
            arrays[output["name"]] = np.asarray(output["data"], dtype=dtype).reshape(shape)
        else:
            arrays[output["name"]] = np.frombuffer(content, dtype=dtype, count=size // dtype.itemsize, offset=offset)
            arrays[output["name"]] = arrays[output["name"]].reshape(shape)
            offset += size
    return arrays
