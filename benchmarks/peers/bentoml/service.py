"""LeNet on stock BentoML 1.4: a batchable API, as BentoML's docs write one.

    bentoml serve service:LeNet --port 3000   (from this folder; PEER_WORKERS workers, default 2)

Configuration, for 2 cores: `workers=2`, one per core (docs.bentoml.com guides/workers: workers are the
processes that use the cores; "cpu_count" for CPU-bound work), each running one ONNX Runtime intra-op
thread with spinning off; `batchable=True`, BentoML's adaptive batching (guides/adaptive-batching), with
its default max_latency_ms and max_batch_size 1024, so that a 1024-image request is never cut into pieces
(the default, 100, would cut it into 11). The access log off (as in every server measured here); tracing
and metrics as they ship. The request is JSON (BentoML's numpy input), for single images and bulk alike.
    POST /predict  {"images": [[[32x32 nested lists]], ...]} (n, 1, 32, 32) -> [[10 logits], ...]
"""

import os
from pathlib import Path

import bentoml
import numpy as np
import onnxruntime as ort

MODEL = str(Path(__file__).resolve().parents[3] / "models" / "lenet" / "1" / "model.onnx")


# the access log off, as every server here runs: one log line per request is not serving
@bentoml.service(workers=int(os.environ.get("PEER_WORKERS", "2")), logging={"access": {"enabled": False}})
class LeNet:
    def __init__(self) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(MODEL, options, providers=["CPUExecutionProvider"])

    @bentoml.api(batchable=True, max_batch_size=1024)
    def predict(self, images: np.ndarray) -> np.ndarray:
        (logits,) = self.session.run(None, {"x": images.astype(np.float32, copy=False)})
        return logits
