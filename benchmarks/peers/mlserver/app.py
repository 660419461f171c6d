"""LeNet on MLServer: a custom inference runtime (MLServer has no ONNX runtime of its own), adaptive batching on.

    mlserver start .   (from this folder; ports from MLSERVER_HTTP_PORT, MLSERVER_GRPC_PORT, MLSERVER_METRICS_PORT)

Configuration, for 2 cores: `parallel_workers` 2 (MLSERVER_PARALLEL_WORKERS: the benchmark sets it to the
cores), inference in a pool of 2 processes beside the HTTP one (docs.seldon.ai/mlserver/user-guide/
parallel-inference: the pool works around the GIL; Seldon's tuning page: "adjust parallel_workers in line
with the number of CPU cores"); model-settings.json `max_batch_size: 32, max_batch_time: 0.001`, adaptive
batching (docs.seldon.ai/mlserver/user-guide/adaptive-batching: off by default, values "found through
experimentation": the load's concurrency and a 1 ms window, as for the other batching servers). Each
inference worker runs one ONNX Runtime intra-op thread with spinning off. MLServer's REST server takes V2
JSON only (no binary tensor extension), so that is the bulk form too.
    POST /v2/models/lenet/infer  V2 JSON, input "x" FP32 (n, 1, 32, 32) -> output "logits" FP32 (n, 10)
"""

from pathlib import Path

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

MODEL = str(Path(__file__).resolve().parents[3] / "models" / "lenet" / "1" / "model.onnx")


class LeNet(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(MODEL, options, providers=["CPUExecutionProvider"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        (logits,) = self.session.run(None, {"x": x})
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("logits", logits)])
