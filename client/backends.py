"""Where predictions come from: a server over the V2 binary protocol, the typed JSON routes, or
ONNX Runtime in process. Each turns a float32 batch into one record per row."""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import numpy as np
from tenacity import RetryCallState, retry, retry_if_exception, stop_after_attempt

import modelrepo
from client import formats, v2
from client.grpc_transport import AUTH_CODES, RETRY_CODES, GrpcTransport, RpcFailed

RETRY_STATUS = {429, 502, 503, 504}


class ServerUnavailable(RuntimeError):
    """The server did not answer after every retry: the run stops, resumable."""


class ClientFault(ValueError):
    """The server refused a request as the client's mistake (4xx other than 401, 403 and 429): not retried."""


class AuthenticationFailed(RuntimeError):
    """The server refused the token (401 or 403): no row can succeed, so the run stops at once."""


@dataclass(frozen=True)
class Model:
    """What the client needs of a model's card: its kind, its input rows and their rule, how to read its output."""

    name: str
    kind: modelrepo.ModelKind
    input: str
    row_shape: tuple[int, ...]
    output: str
    value_range: tuple[float, float]  # the card's rule on input values, the same the server checks
    classes: int  # a classifier's labels (0 for a regression or a binary classifier)
    logits: bool  # the output is logits: the probabilities are their softmax
    padded_side: int  # pictures of this side are zero-padded to the model's (0: none)

    @classmethod
    def from_card(cls, card: modelrepo.ModelCard) -> Model:
        kind = card.kind  # ModelRepositoryError when the card fits no kind the client knows
        return cls(
            name=card.name,
            kind=kind,
            input=card.inputs[0].name,
            row_shape=card.inputs[0].shape[1:],
            output=card.outputs[0].name,
            value_range=card.input_range,
            classes=len(card.labels or ()) if kind.classifies else 0,
            logits=card.logits,
            padded_side=card.padded_side if kind is modelrepo.ModelKind.IMAGE else 0,
        )

    @property
    def rows(self) -> formats.RowShape:
        """What one input row must be: the model's row shape and its rule on values, as the server checks it."""
        return formats.RowShape(
            self.row_shape,
            pixels=self.kind is modelrepo.ModelKind.IMAGE,
            value_range=self.value_range,
            padded_side=self.padded_side,
        )

    @property
    def layout(self) -> formats.Layout:
        """Output record fields, in order, and the length of a classifier's probabilities."""
        if self.kind is modelrepo.ModelKind.REGRESSION:
            fields: tuple[str, ...] = ("y",)
        elif self.kind is modelrepo.ModelKind.BINARY:
            fields = ("label", "probability")
        else:
            fields = ("label", "probabilities")
        return formats.Layout(("row", *fields, "error"), self.classes)

    def records(self, out: np.ndarray) -> list[dict[str, Any]]:
        """One record per row of the model's output."""
        if self.kind is modelrepo.ModelKind.REGRESSION:
            return [{"y": y} for y in out.reshape(-1).tolist()]
        if self.kind is modelrepo.ModelKind.BINARY:
            p = out.reshape(-1)
            return [
                {"label": label, "probability": q}
                for label, q in zip((p > 0.5).astype(int).tolist(), p.tolist(), strict=True)
            ]
        probabilities = modelrepo.softmax(out) if self.logits else out
        return [
            {"label": label, "probabilities": row}
            for label, row in zip(probabilities.argmax(axis=1).tolist(), probabilities.tolist(), strict=True)
        ]

    def json_request(self, x: np.ndarray) -> bytes:
        """The typed route's body for the rows of `x` (the model's input array)."""
        if self.kind is modelrepo.ModelKind.IMAGE:
            return json.dumps({"images": x[:, 0].tolist()}).encode()
        return json.dumps({"x": (x[:, 0] if x.shape[1:] == (1,) else x).tolist()}).encode()

    def json_records(self, answer: dict[str, Any]) -> list[dict[str, Any]]:
        """One record per row of the typed route's answer."""
        if self.kind is modelrepo.ModelKind.REGRESSION:
            return [{"y": y} for y in answer["y"]]
        field = "probability" if self.kind is modelrepo.ModelKind.BINARY else "probabilities"
        return [{"label": a, field: p} for a, p in zip(answer["labels"], answer["probabilities"], strict=True)]


class Backend(Protocol):
    model: Model

    def predict(self, x: np.ndarray) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...


def default_models_dir() -> Path:
    """The repository the service serves: TINYSERVE_MODELS_DIR, else models/ beside this package."""
    configured = os.environ.get("TINYSERVE_MODELS_DIR")
    return Path(configured) if configured else Path(__file__).resolve().parents[1] / "models"


class LocalBackend:
    """ONNX Runtime in process on a model repository: no server."""

    def __init__(self, model: str, models_dir: Path, threads: int = 0) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise RuntimeError("--local needs onnxruntime: pip install onnxruntime") from e
        entries = modelrepo.latest(modelrepo.discover(models_dir))
        if model not in entries:
            raise ValueError(f"unknown model {model!r}: {models_dir} has {', '.join(entries)}")
        self.entry = entry = entries[model]
        modelrepo.verify(entry)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads  # 0: ONNX Runtime's default, one per core
        self.session = ort.InferenceSession(str(entry.model_path), options, providers=["CPUExecutionProvider"])
        self.model = Model.from_card(entry.card)

    def predict(self, x: np.ndarray) -> list[dict[str, Any]]:
        (out,) = self.session.run([self.model.output], {self.model.input: x})
        return self.model.records(out)

    def close(self) -> None:
        pass


def _retryable(error: BaseException) -> bool:
    if isinstance(error, httpx.TransportError):  # refused, reset, timed out
        return True
    if isinstance(error, RpcFailed):
        return error.code in RETRY_CODES
    return isinstance(error, httpx.HTTPStatusError) and error.response.status_code in RETRY_STATUS


def _wait(state: RetryCallState) -> float:
    """Exponential backoff with full jitter; a server's Retry-After is a floor."""
    base = getattr(state.retry_object, "backoff", 0.5)
    ceiling = min(30.0, base * 2 ** (state.attempt_number - 1))
    wait = random.uniform(0, ceiling)
    error = state.outcome.exception() if state.outcome else None
    if isinstance(error, httpx.HTTPStatusError):
        after = error.response.headers.get("retry-after", "")
        if after.isdigit():
            wait = max(wait, float(after))
    return wait


class RemoteBackend:
    """A tinyserve server: V2 binary tensors (default), V2 over gRPC, or the typed JSON routes."""

    def __init__(
        self,
        model: str,
        url: str,
        *,
        protocol: str,
        timeout: float,
        retries: int,
        backoff: float = 0.5,
        token: str | None = None,
        http: httpx.Client | None = None,
        grpc_port: int = 8001,
        connections: int = 1,  # gRPC connections: as many as requests in flight, spread over the server's workers
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.owned = http is None  # a client handed in (e.g. one bound to an app in process) stays its owner's
        self.http = http or httpx.Client(base_url=url.rstrip("/"), timeout=timeout, headers=headers)
        self.protocol = protocol
        retrying = retry(
            retry=retry_if_exception(_retryable), stop=stop_after_attempt(retries + 1), wait=_wait, reraise=True
        )
        self._send = retrying(self._send_once)
        self._send.retry.backoff = backoff  # type: ignore[attr-defined]
        self.rpc: GrpcTransport | None = None
        if protocol == "grpc":  # the card still comes over HTTP: the protocol's metadata has no task or rule
            self.rpc = GrpcTransport(
                f"{self.http.base_url.host}:{grpc_port}", timeout=timeout, token=token, connections=connections
            )
            self._infer_rpc = retrying(self.rpc.infer)
            self._infer_rpc.retry.backoff = backoff  # type: ignore[attr-defined]
        try:
            card = self.send("GET", f"/v1/models/{model}", None, {}).json()["card"]
        except ClientFault as e:
            raise ValueError(str(e)) from None
        self.model = Model.from_card(modelrepo.ModelCard.from_dict(card))

    def _send_once(self, method: str, path: str, content: bytes | None, headers: dict[str, str]) -> httpx.Response:
        response = self.http.request(method, path, content=content, headers=headers)
        if response.status_code in RETRY_STATUS or response.status_code >= 500:
            response.raise_for_status()
        if response.status_code >= 400:
            try:
                message = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:200]
            if response.status_code in (401, 403):
                raise AuthenticationFailed(
                    f"{self.http.base_url} refused the API token ({response.status_code}): {message}; "
                    "give the right one with --token or TINYSERVE_SCORE_TOKEN"
                )
            raise ClientFault(f"the server refused it ({response.status_code}): {message}")
        return response

    def send(self, method: str, path: str, content: bytes | None, headers: dict[str, str]) -> httpx.Response:
        try:
            return self._send(method, path, content, headers)
        except (httpx.TransportError, httpx.HTTPStatusError) as e:
            raise ServerUnavailable(f"{self.http.base_url}{path}: {_describe(e)}") from e

    def predict(self, x: np.ndarray) -> list[dict[str, Any]]:
        model = self.model
        if self.protocol == "json":
            body, headers = model.json_request(x), {"Content-Type": "application/json"}
            return model.json_records(self.send("POST", f"/v1/{model.name}/predict", body, headers).json())
        if self.rpc is not None:
            return model.records(self._predict_grpc(x))
        body, headers = v2.binary_request(x, [model.output], input_name=model.input)
        response = self.send("POST", f"/v2/models/{model.name}/infer", body, headers)
        return model.records(v2.read_answer(response.content, response.headers)[model.output])

    def _predict_grpc(self, x: np.ndarray) -> np.ndarray:
        assert self.rpc is not None
        try:
            out: np.ndarray = self._infer_rpc(self.model.name, self.model.output, x, input_name=self.model.input)
            return out
        except RpcFailed as e:
            if e.code in AUTH_CODES:
                raise AuthenticationFailed(
                    f"{self.rpc.address} refused the API token ({e.code}): {e.details}; "
                    "give the right one with --token or TINYSERVE_SCORE_TOKEN"
                ) from None
            if e.code in RETRY_CODES or e.code in ("INTERNAL", "UNKNOWN"):
                raise ServerUnavailable(f"gRPC {self.rpc.address}: {e} after every retry") from e
            raise ClientFault(f"the server refused it ({e.code}): {e.details}") from None

    def close(self) -> None:
        if self.owned:
            self.http.close()
        if self.rpc is not None:
            self.rpc.close()


def _describe(error: BaseException) -> str:
    if isinstance(error, httpx.HTTPStatusError):
        return f"HTTP {error.response.status_code} after every retry"
    return f"{type(error).__name__}: {error or 'no answer'} after every retry"
