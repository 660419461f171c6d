"""LeNet on Ray Serve, with @serve.batch.

    python app.py PORT   (from this folder: a local Ray of PEER_WORKERS CPUs, default 2; HTTP on 127.0.0.1:PORT)

Configuration, for 2 cores: 2 replicas of 1 CPU each (docs.ray.io serve/configure-serve-deployment:
num_replicas, ray_actor_options num_cpus; the performance-tuning page: reserve cores for the replicas),
each running one ONNX Runtime intra-op thread with spinning off; single images batched by @serve.batch
(docs.ray.io serve/advanced-guides/dyn-req-batch) up to 32 (the load's concurrency) within 1 ms, and
max_ongoing_requests 32 so that a replica is sent enough requests to fill a batch (its default, 5, caps
every batch at 5). Access log off, as for every server measured here. Ray's dashboard is off (not part of
serving; it would count in memory and cold start).
The bulk form is raw float32 bytes, run at once: a 1024-image request is a batch already.
    POST /  {"images": [32x32 nested lists, ...]} -> {"logits": [[10 floats], ...]}
    POST /  float32 bytes of (n, 1, 32, 32), content-type application/octet-stream -> float32 bytes of (n, 10)
    GET  /  200 once a replica answers
"""

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

MODEL = str(Path(__file__).resolve().parents[3] / "models" / "lenet" / "1" / "model.onnx")


WORKERS = int(os.environ.get("PEER_WORKERS", "2"))


@serve.deployment(num_replicas=WORKERS, ray_actor_options={"num_cpus": 1}, max_ongoing_requests=32)
class LeNet:
    def __init__(self) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(MODEL, options, providers=["CPUExecutionProvider"])

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.001)
    async def run_batch(self, requests: list[np.ndarray]) -> list[np.ndarray]:
        (logits,) = self.session.run(None, {"x": np.concatenate(requests)})
        return np.split(logits, np.cumsum([len(x) for x in requests])[:-1])

    async def __call__(self, request: Request) -> Response:
        if request.method == "GET":
            return Response(b"ready")
        body = await request.body()
        if request.headers.get("content-type") == "application/octet-stream":
            (logits,) = self.session.run(None, {"x": np.frombuffer(body, np.float32).reshape(-1, 1, 32, 32)})
            return Response(logits.tobytes(), media_type="application/octet-stream")
        logits = await self.run_batch(np.asarray(json.loads(body)["images"], np.float32)[:, None])
        return Response(json.dumps({"logits": logits.tolist()}), media_type="application/json")


if __name__ == "__main__":
    ray.init(num_cpus=WORKERS, include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": int(sys.argv[1])})
    serve.run(LeNet.bind(), route_prefix="/", logging_config={"enable_access_log": False})
    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    signal.sigwait(stop)  # serve until stopped, then ray.shutdown() (at exit) stops the local Ray
