"""The peer: the same ONNX Runtime calls behind a minimal FastAPI + uvicorn app (no batching, no checks).

uvicorn benchmarks.peers.fastapi_peer:app --port 3300
"""

import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel

MODELS = os.environ.get("TINYSERVE_MODELS_DIR", "models")
options = ort.SessionOptions()
options.intra_op_num_threads = os.cpu_count() or 1
sessions = {
    name: ort.InferenceSession(f"{MODELS}/{name}/1/model.onnx", options, providers=["CPUExecutionProvider"])
    for name in ("linear", "lenet")
}
app = FastAPI()


class Rows(BaseModel):
    x: list[float]


class Images(BaseModel):
    images: list[list[list[float]]]


@app.post("/v1/linear/predict")
def linear(body: Rows) -> dict[str, list[float]]:
    (y,) = sessions["linear"].run(None, {"x": np.asarray(body.x, np.float32).reshape(-1, 1)})
    return {"y": y.ravel().tolist()}


@app.post("/v1/lenet/predict")
def lenet(body: Images) -> dict[str, list[int]]:
    (logits,) = sessions["lenet"].run(None, {"x": np.asarray(body.images, np.float32)[:, None]})
    return {"labels": logits.argmax(1).tolist()}


@app.get("/readyz")
def ready() -> dict[str, bool]:
    return {"ready": True}
