"""LeNet on KServe's Python model server (kserve.Model), both its V1 and its V2 (Open Inference) protocol.

    python app.py --http_port 8080 --workers 2 --enable_grpc false   (from this folder)

Configuration, for 2 cores: `--workers 2`, two uvicorn processes (KServe's ModelServer API reference,
kserve.github.io/website python_runtime_api: "workers: the number of uvicorn workers for multi-processing",
default 1); each runs one ONNX Runtime intra-op thread with spinning off. gRPC off: only HTTP is measured.
(It listens on 0.0.0.0, which KServe does not let one change; the benchmark sends only to 127.0.0.1.)
The Python server has no request batching of its own (KServe batches in its Kubernetes agent sidecar).
`async def predict`: KServe awaits it on the event loop, where a sync one goes to a thread pool; a LeNet
image is ~0.1 ms, less than the hop. Bulk form: V2 with binary tensors (the binary tensor extension).
    POST /v1/models/lenet:predict  {"instances": [32x32 nested lists, ...]} -> {"predictions": [[10 logits], ...]}
    POST /v2/models/lenet/infer    V2 JSON or binary, input "x" FP32 (n, 1, 32, 32) -> output "logits" FP32 (n, 10)
"""

from pathlib import Path

import kserve
import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse

MODEL = str(Path(__file__).resolve().parents[3] / "models" / "lenet" / "1" / "model.onnx")


class LeNet(kserve.Model):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.load()

    def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(MODEL, options, providers=["CPUExecutionProvider"])
        self.ready = True
        return self.ready

    # With --workers > 1 the server pickles its models into each uvicorn process: the session is not
    # picklable, so each process opens its own.
    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "session"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.load()

    async def predict(
        self, payload: dict | InferRequest, headers: dict[str, str] | None = None
    ) -> dict | InferResponse:
        if isinstance(payload, InferRequest):
            x = payload.inputs[0].as_numpy().astype(np.float32, copy=False)
            (logits,) = self.session.run(None, {"x": x})
            output = InferOutput(name="logits", shape=list(logits.shape), datatype="FP32", data=logits)
            return InferResponse(
                response_id=payload.id or "",
                model_name=self.name,
                infer_outputs=[output],
                requested_outputs=payload.request_outputs,
            )
        (logits,) = self.session.run(None, {"x": np.asarray(payload["instances"], np.float32)[:, None]})
        return {"predictions": logits.tolist()}


if __name__ == "__main__":
    kserve.ModelServer().start([LeNet("lenet")])
