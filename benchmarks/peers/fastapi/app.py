"""LeNet behind FastAPI + uvicorn, the plain app a user would write instead of a serving framework.

    uvicorn app:app --workers 2 --host 127.0.0.1 --port 3300 --no-access-log   (from this folder)

Configuration, for 2 cores: `--workers 2` (FastAPI's "Server Workers" page: uvicorn's --workers, one process
per core, "to take advantage of multiple cores"), each worker one ONNX Runtime intra-op thread with spinning
off, as tinyserve's workers run it. `async def` routes: a LeNet image is ~0.1 ms in ONNX Runtime, less than
the hop to FastAPI's thread pool. No validation beyond what numpy does; orjson both ways.
    POST /predict      {"images": [32x32 nested lists, ...]} -> {"logits": [[10 floats], ...]}
    POST /predict/raw  float32 bytes of (n, 1, 32, 32) -> float32 bytes of (n, 10) logits (the bulk form)
"""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
from fastapi import FastAPI, Request, Response

MODEL = str(Path(__file__).resolve().parents[3] / "models" / "lenet" / "1" / "model.onnx")
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
options.add_session_config_entry("session.intra_op.allow_spinning", "0")
session = ort.InferenceSession(MODEL, options, providers=["CPUExecutionProvider"])
app = FastAPI()


@app.post("/predict")
async def predict(request: Request) -> Response:
    images = np.asarray(orjson.loads(await request.body())["images"], dtype=np.float32)
    (logits,) = session.run(None, {"x": images[:, None]})
    return Response(orjson.dumps({"logits": logits}, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


@app.post("/predict/raw")
async def predict_raw(request: Request) -> Response:
    x = np.frombuffer(await request.body(), dtype=np.float32).reshape(-1, 1, 32, 32)
    (logits,) = session.run(None, {"x": x})
    return Response(logits.tobytes(), media_type="application/octet-stream")


@app.get("/readyz")
async def ready() -> Response:
    return Response(b"ready")
