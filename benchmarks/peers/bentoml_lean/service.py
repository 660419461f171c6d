"""FastAPI's handler on BentoML: the least a LeNet service on BentoML 1.4 can do, served as tinyserve is served.

    bentoml serve service:Lean --port 3000   (from this folder; PEER_WORKERS workers, default 2)

BentoML's floor (../bentoml_floor) answers a fixed body; this answers LeNet with exactly the work of the
FastAPI app of bench-peers (../fastapi/app.py): orjson, `np.asarray`, one ONNX Runtime call (one intra-op
thread, spinning off), orjson back; no checks, no batching, no metrics. An ASGI middleware in front of
BentoML's service, where tinyserve's hot path sits. Against the FastAPI app itself it measures what BentoML's
processes and layers cost a service that does a model's work: where it misses a bar of issue 20, any
service on BentoML misses it. Runs in tinyserve's own environment (the same BentoML).
"""

import os
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import onnxruntime as ort
import orjson

MODEL = str(Path(__file__).resolve().parents[3] / "models" / "lenet" / "1" / "model.onnx")
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class Predict:
    """POST /predict as the FastAPI app answers it; everything else goes on to BentoML's app."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(MODEL, options, providers=["CPUExecutionProvider"])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/predict":
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        images = np.asarray(orjson.loads(b"".join(chunks))["images"], dtype=np.float32)
        (logits,) = self.session.run(None, {"x": images[:, None]})
        answer = orjson.dumps({"logits": logits}, option=orjson.OPT_SERIALIZE_NUMPY)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


@bentoml.service(
    workers=int(os.environ.get("PEER_WORKERS", "2")),
    metrics={"enabled": False},
    logging={"access": {"enabled": False}},
    tracing={"excluded_urls": [".*"]},
)
class Lean:
    @bentoml.api
    def ping(self) -> str:
        return "pong"


Lean.add_asgi_middleware(Predict)  # type: ignore[attr-defined]
