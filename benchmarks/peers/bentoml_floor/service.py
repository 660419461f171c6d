"""BentoML's floors: what a service on BentoML 1.4 gets before its own work, served as tinyserve is served.

    bentoml serve service:Floor --port 3000   (from this folder; PEER_WORKERS workers, default 2)
    bentoml serve service:Lean --port 3000

`Floor`: what any service on BentoML pays before it does anything: `bentoml serve`'s processes (the server,
its supervisor, a worker a core), uvicorn and the Starlette app BentoML builds, with its own middleware
(errors, tracing, the traffic timeout) in front of the service's. An ASGI middleware, added as tinyserve adds
its hot path, answers POST /predict at once with a fixed body (the body read, not parsed): no model, no checks.

`Lean`: FastAPI's handler on BentoML, the least a LeNet service on it can do. The same middleware answers
LeNet with exactly the work of the FastAPI app of bench-peers (../fastapi/app.py): orjson, `np.asarray`, one
ONNX Runtime call (one intra-op thread, spinning off), orjson back; no checks, no batching, no metrics.
Against the FastAPI app itself it measures what BentoML's processes and layers cost a service that does a
model's work: where it misses a bar of issue 20, any service on BentoML misses it.

tinyserve's bars against the frameworks can be met only where these meet them. Both run in tinyserve's own
environment (the same BentoML), the access log off, tracing as tinyserve runs it (excluded URLs).
"""

import os
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import onnxruntime as ort
import orjson

ANSWER = b'{"logits": [[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]}'
MODEL = str(Path(__file__).resolve().parents[3] / "models" / "lenet" / "1" / "model.onnx")
CONFIG: dict[str, Any] = {
    "workers": int(os.environ.get("PEER_WORKERS", "2")),
    "metrics": {"enabled": False},
    "logging": {"access": {"enabled": False}},
    "tracing": {"excluded_urls": [".*"]},
}
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class Answer:
    """POST /predict: the body read whole, then `answer(body)` sent; everything else goes on to BentoML's app."""

    def __init__(self, app: App) -> None:
        self.app = app

    def answer(self, body: bytes) -> bytes:
        return ANSWER

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/predict":
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        answer = self.answer(b"".join(chunks))
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


class Predict(Answer):
    """LeNet's logits, as the FastAPI app computes them."""

    def __init__(self, app: App) -> None:
        super().__init__(app)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(MODEL, options, providers=["CPUExecutionProvider"])

    def answer(self, body: bytes) -> bytes:
        images = np.asarray(orjson.loads(body)["images"], dtype=np.float32)
        (logits,) = self.session.run(None, {"x": images[:, None]})
        return orjson.dumps({"logits": logits}, option=orjson.OPT_SERIALIZE_NUMPY)


@bentoml.service(**CONFIG)
class Floor:
    @bentoml.api
    def ping(self) -> str:
        return "pong"


@bentoml.service(**CONFIG)
class Lean:
    @bentoml.api
    def ping(self) -> str:
        return "pong"


Floor.add_asgi_middleware(Answer)  # type: ignore[attr-defined]
Lean.add_asgi_middleware(Predict)  # type: ignore[attr-defined]
