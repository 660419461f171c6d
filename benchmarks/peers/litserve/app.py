"""LeNet on LitServe, with its dynamic batching.

    python app.py PORT   (from this folder; PEER_WORKERS inference workers, default 2)

Configuration, for 2 cores (LitServer's and LitServer.run's docstrings, lightning.ai/docs/litserve
api-reference/litserver and features/batching): accelerator="cpu" with workers_per_device=2 ("for CPU, set
to the number of cores"), num_api_servers left at its default, "same count as inference workers
(recommended)", fast_queue=True (ZeroMQ between the API servers and the workers, "for >100 RPS"), batching
on (max_batch_size 32, the load's concurrency; batch_timeout 1 ms). Each inference worker runs one ONNX
Runtime intra-op thread with spinning off. LitServe parses JSON in its API servers and hands the payload to
the workers through a queue, so there is no raw-bytes request: the bulk form is base64 in JSON.
    POST /predict  {"images": [32x32 nested lists, ...]} -> {"logits": [[10 floats], ...]}
                   {"b64": base64 of float32 (n, 1, 32, 32)} -> {"b64": base64 of float32 (n, 10) logits}
"""

import base64
import os
import sys
from pathlib import Path

import litserve as ls
import numpy as np
import onnxruntime as ort

MODEL = str(Path(__file__).resolve().parents[3] / "models" / "lenet" / "1" / "model.onnx")


class LeNet(ls.LitAPI):
    def setup(self, device: str) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(MODEL, options, providers=["CPUExecutionProvider"])

    def decode_request(self, request: dict) -> tuple[np.ndarray, bool]:
        if "b64" in request:
            return np.frombuffer(base64.b64decode(request["b64"]), np.float32).reshape(-1, 1, 32, 32), True
        return np.asarray(request["images"], np.float32)[:, None], False

    def batch(self, inputs: list[tuple[np.ndarray, bool]]) -> list[tuple[np.ndarray, bool]]:
        return inputs  # requests hold any number of images: predict concatenates them and splits the logits

    def predict(self, inputs: list[tuple[np.ndarray, bool]]) -> list[tuple[np.ndarray, bool]]:
        x = np.concatenate([images for images, _ in inputs])
        (logits,) = self.session.run(None, {"x": x})
        ends = np.cumsum([len(images) for images, _ in inputs])[:-1]
        return [(part, b64) for part, (_, b64) in zip(np.split(logits, ends), inputs, strict=True)]

    def unbatch(self, outputs: list[tuple[np.ndarray, bool]]) -> list[tuple[np.ndarray, bool]]:
        return outputs

    def encode_response(self, output: tuple[np.ndarray, bool]) -> dict:
        logits, b64 = output
        return {"b64": base64.b64encode(logits.tobytes()).decode()} if b64 else {"logits": logits.tolist()}


if __name__ == "__main__":
    api = LeNet(max_batch_size=32, batch_timeout=0.001)
    workers = int(os.environ.get("PEER_WORKERS", "2"))
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=workers, fast_queue=True)
    server.run(host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", generate_client_file=False)
