"""KServe's InferenceGRPCClient against a tinyserve gRPC port; run by tests/test_grpc.py in KServe's own
virtualenv (`make kserve-client`: kserve's pins differ from ours), so it imports nothing of this repo.

Usage: python kserve_grpc.py HOST:PORT TOKEN INPUTS.npz OUTPUTS.npz
Reads one array per model from INPUTS.npz, sends each raw and typed, writes each answer to OUTPUTS.npz
(`<model>` and `<model>.typed`), and prints the probes' answers as JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest


async def main(address: str, token: str, inputs: str, outputs: str) -> None:
    headers = (("authorization", f"Bearer {token}"),)
    answers: dict[str, np.ndarray] = {}
    async with InferenceGRPCClient(address, timeout=60, retries=0) as client:
        probes = {
            "live": await client.is_server_live(headers=headers),
            "ready": await client.is_server_ready(headers=headers),
            "models": {},
        }
        for name, x in np.load(inputs).items():
            probes["models"][name] = await client.is_model_ready(name, headers=headers)
            for typed in (False, True):
                tensor = InferInput(name="x", shape=list(x.shape), datatype="FP32")
                if typed:
                    tensor = InferInput(name="x", shape=list(x.shape), datatype="FP32", data=x.ravel().tolist())
                else:
                    tensor.set_data_from_numpy(x, binary_data=True)
                request = InferRequest(model_name=name, infer_inputs=[tensor], request_id=f"{name}-{typed}")
                response = await client.infer(request, headers=headers)
                (output,) = response.outputs
                answers[f"{name}.typed" if typed else name] = output.as_numpy()
    np.savez(outputs, **answers)
    print(json.dumps(probes))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
