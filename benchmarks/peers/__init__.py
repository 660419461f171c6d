"""The servers `make bench-peers` measures: tinyserve and the frameworks a user would pick instead.

Each framework's app and pinned requirements live in benchmarks/peers/<name>/, installed by `make bench-peers`
into .venv-peers/<name>. A `Peer` says how one starts, when it is ready, and the forms its requests take: the
single-image forms and its fastest bulk form, each with how to read the logits (or probabilities) back.
`check` sends the same 8 digits through every form and compares the answers with ONNX Runtime in process.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import psutil

from benchmarks.server import REPO, family, free_port
from client.v2 import binary_request

HERE = REPO / "benchmarks" / "peers"
VENVS = REPO / ".venv-peers"
MODEL = REPO / "models" / "lenet" / "1" / "model.onnx"
DIGITS = REPO / "examples" / "digits.npy"
# Served logits against ONNX Runtime in process: the servers run other batch sizes (batching merges
# requests), whose kernels may sum in another order; the label must be the same.
RTOL = ATOL = 1e-5

Encoder = Callable[[np.ndarray], tuple[bytes, dict[str, str]]]
Decoder = Callable[[bytes, Mapping[str, str]], np.ndarray]
JSON = {"content-type": "application/json"}
OCTETS = {"content-type": "application/octet-stream"}


def _json(body: object) -> tuple[bytes, dict[str, str]]:
    return json.dumps(body).encode(), JSON


def typed_json(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """{"images": [32x32 rows]}: tinyserve's typed route, and the same body for the apps that take one."""
    return _json({"images": x[:, 0].tolist()})


def v1_instances(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    return _json({"instances": x[:, 0].tolist()})


def bentoml_json(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    return _json({"images": x.tolist()})


def v2_json(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    return _json({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]})


def v2_binary(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """A V2 request with `x` as a binary tensor and the output asked for in binary."""
    body, headers = binary_request(x, ["logits"])
    return body, {k.lower(): v for k, v in headers.items()}


def raw(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    return np.ascontiguousarray(x, np.float32).tobytes(), OCTETS


def b64_json(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    return _json({"b64": base64.b64encode(np.ascontiguousarray(x, np.float32).tobytes()).decode()})


def json_field(key: str | None) -> Decoder:
    def decode(body: bytes, headers: Mapping[str, str]) -> np.ndarray:
        value = json.loads(body)
        return np.asarray(value if key is None else value[key], np.float32)

    return decode


def v2_json_output(body: bytes, headers: Mapping[str, str]) -> np.ndarray:
    (output,) = json.loads(body)["outputs"]
    return np.asarray(output["data"], np.float32).reshape(output["shape"])


def v2_binary_output(body: bytes, headers: Mapping[str, str]) -> np.ndarray:
    length = int(headers["inference-header-content-length"])
    (output,) = json.loads(body[:length])["outputs"]
    return np.frombuffer(body[length:], np.float32).reshape(output["shape"])


def raw_output(body: bytes, headers: Mapping[str, str]) -> np.ndarray:
    return np.frombuffer(body, np.float32).reshape(-1, 10)


def b64_output(body: bytes, headers: Mapping[str, str]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(json.loads(body)["b64"]), np.float32).reshape(-1, 10)


def grpc_infer(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """A ModelInferRequest (Triton's protobuf, as tritonclient.grpc sends it) with `x` as raw contents."""
    from tritonclient.grpc import service_pb2 as pb

    request = pb.ModelInferRequest(model_name="lenet")
    request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(np.ascontiguousarray(x, np.float32).tobytes())
    return request.SerializeToString(), {}


def grpc_output(body: bytes, headers: Mapping[str, str]) -> np.ndarray:
    from tritonclient.grpc import service_pb2 as pb

    response = pb.ModelInferResponse.FromString(body)
    return np.frombuffer(response.raw_output_contents[0], np.float32).reshape(list(response.outputs[0].shape))


@dataclass(frozen=True)
class Form:
    """One way of sending LeNet images (n, 1, 32, 32) to a server, and of reading its answer back."""

    name: str  # as the table shows it
    path: str  # the HTTP route, or the gRPC method
    encode: Encoder
    decode: Decoder
    probabilities: bool = False  # the answer is softmax(logits), not the logits
    grpc: bool = False  # sent over gRPC (the body is the request message) to the server's gRPC port


GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"


Command = Callable[[Path, int, int], list[str]]  # (python, port, workers) -> the command line


@dataclass(frozen=True)
class Peer:
    name: str  # its folder under benchmarks/peers/ and its virtualenv under .venv-peers/
    title: str
    command: Command
    ready: str  # a GET that answers 200 once the server takes requests
    single: tuple[Form, ...]  # one image a request; the first is the one the table leads with
    bulk: Form  # 1024 images a request, in the fastest form the framework documents
    env: Callable[[int, int, Path], dict[str, str]] = field(default=lambda port, workers, scratch: {})
    floor: bool = False  # BentoML's least (no checks, no batching): what tinyserve can reach, not a framework
    fixed: bool = False  # answers a fixed body: nothing to compare with ONNX Runtime
    home: str = ""  # its folder under benchmarks/peers/, where not its name (the floors share one)

    def pin(self) -> str:
        """The framework's line of its requirements.txt, e.g. "ray==2.60.0" ("" for tinyserve)."""
        if self.name == "tinyserve":
            return ""
        if self.floor:  # in tinyserve's environment
            return f"bentoml=={importlib.metadata.version('bentoml')}"
        package = {"ray_serve": "ray"}.get(self.name, self.name) + "=="
        pins = (self.folder / "requirements.txt").read_text().splitlines()
        (pin,) = [line for line in pins if line.startswith(package)]
        return pin

    @property
    def folder(self) -> Path:
        return REPO if self.name == "tinyserve" else HERE / (self.home or self.name)

    @property
    def python(self) -> Path:
        """tinyserve and BentoML's floor run in the benchmark's own environment, each framework in its own."""
        own = self.name == "tinyserve" or self.floor
        return Path(sys.executable) if own else VENVS / self.name / "bin" / "python"

    def installed(self) -> bool:
        return self.name == "tinyserve" or self.floor or (VENVS / self.name / ".installed").exists()


def _bin(python: Path, script: str) -> str:
    return str(python.parent / script)


def _mlserver_env(port: int, workers: int, scratch: Path) -> dict[str, str]:
    return {
        "MLSERVER_HTTP_PORT": str(port),
        "MLSERVER_PARALLEL_WORKERS": str(workers),
        "MLSERVER_GRPC_PORT": str(free_port()),
        "MLSERVER_METRICS_PORT": str(free_port()),
        "MLSERVER_METRICS_DIR": str(scratch / "mlserver-metrics"),
    }


def _bentoml_serve(target: str) -> Command:
    """`bentoml serve TARGET` on the port (the workers come from the service's config: PEER_WORKERS)."""
    return lambda python, port, workers: [
        *(_bin(python, "bentoml"), "serve", target, "--host", "127.0.0.1", "--port", str(port))
    ]


def _bentoml_env(port: int, workers: int, scratch: Path) -> dict[str, str]:
    return {"PEER_WORKERS": str(workers), "BENTOML_HOME": str(scratch / "bentoml-home"), "BENTOML_DO_NOT_TRACK": "True"}


PEERS = (
    Peer(
        "tinyserve",
        "tinyserve",
        _bentoml_serve("service.app:TinyServe"),
        "/readyz",
        (
            Form("typed JSON", "/v1/lenet/predict", typed_json, json_field("probabilities"), probabilities=True),
            Form("V2 JSON", "/v2/models/lenet/infer", v2_json, v2_json_output),
            Form("gRPC", GRPC_INFER, grpc_infer, grpc_output, grpc=True),
        ),
        Form("V2 binary", "/v2/models/lenet/infer", v2_binary, v2_binary_output),
        lambda port, workers, scratch: {
            "BENTOML_HOME": str(scratch / "bentoml-home"),
            "BENTOML_DO_NOT_TRACK": "True",
            "TINYSERVE_GRPC_PORT": str(free_port()),
        },
    ),
    Peer(
        "fastapi",
        "FastAPI + uvicorn",
        lambda python, port, workers: [
            *(str(python), "-m", "uvicorn", "app:app", "--workers", str(workers), "--host", "127.0.0.1"),
            *("--port", str(port), "--no-access-log", "--log-level", "warning"),
        ],
        "/readyz",
        (Form("JSON", "/predict", typed_json, json_field("logits")),),
        Form("raw bytes", "/predict/raw", raw, raw_output),
    ),
    Peer(
        "litserve",
        "LitServe",
        lambda python, port, workers: [str(python), "app.py", str(port)],
        "/health",
        (Form("JSON", "/predict", typed_json, json_field("logits")),),
        Form("base64 in JSON", "/predict", b64_json, b64_output),
        lambda port, workers, scratch: {"PEER_WORKERS": str(workers)},
    ),
    Peer(
        "mlserver",
        "MLServer",
        lambda python, port, workers: [_bin(python, "mlserver"), "start", "."],
        "/v2/models/lenet/ready",
        (Form("V2 JSON", "/v2/models/lenet/infer", v2_json, v2_json_output),),
        Form("V2 JSON", "/v2/models/lenet/infer", v2_json, v2_json_output),
        _mlserver_env,
    ),
    Peer(
        "kserve",
        "KServe Python server",
        lambda python, port, workers: [
            *(str(python), "app.py", "--http_port", str(port), "--workers", str(workers)),
            *("--enable_grpc", "false", "--enable_latency_logging", "false"),
        ],
        "/v2/models/lenet/ready",
        (
            Form("V1 JSON", "/v1/models/lenet:predict", v1_instances, json_field("predictions")),
            Form("V2 JSON", "/v2/models/lenet/infer", v2_json, v2_json_output),
        ),
        Form("V2 binary", "/v2/models/lenet/infer", v2_binary, v2_binary_output),
    ),
    Peer(
        "ray_serve",
        "Ray Serve",
        lambda python, port, workers: [str(python), "app.py", str(port)],
        "/",
        (Form("JSON", "/", typed_json, json_field("logits")),),
        Form("raw bytes", "/", raw, raw_output),
        lambda port, workers, scratch: {"PEER_WORKERS": str(workers), "RAY_USAGE_STATS_ENABLED": "0"},
    ),
    Peer(
        "bentoml",
        "BentoML, stock",
        _bentoml_serve("service:LeNet"),
        "/readyz",
        (Form("JSON", "/predict", bentoml_json, json_field(None)),),
        Form("JSON", "/predict", bentoml_json, json_field(None)),
        _bentoml_env,
    ),
    Peer(
        "bentoml_floor",
        "BentoML's own floor (a fixed answer, no model)",
        _bentoml_serve("service:Floor"),
        "/readyz",
        (Form("JSON", "/predict", typed_json, json_field("logits")),),
        Form("none: no model", "/predict", typed_json, json_field("logits")),
        _bentoml_env,
        floor=True,
        fixed=True,
    ),
    Peer(
        "bentoml_lean",
        "FastAPI's handler on BentoML (no checks)",
        _bentoml_serve("service:Lean"),
        "/readyz",
        (Form("JSON", "/predict", typed_json, json_field("logits")),),
        Form("JSON", "/predict", typed_json, json_field("logits")),
        _bentoml_env,
        floor=True,
        home="bentoml_floor",
    ),
)
BY_NAME = {peer.name: peer for peer in PEERS}


@dataclass
class Running:
    peer: Peer
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    cold_start_s: float = 0.0
    grpc: str = ""  # host:port of its gRPC door, where it has one the benchmark sends to

    def rss_mib(self) -> float:
        """The resident memory of the server's whole process tree (workers, replicas, Ray's daemons)."""
        total = 0
        for process in family(self.process.pid):
            with contextlib.suppress(psutil.NoSuchProcess):
                total += process.memory_info().rss
        return total / 2**20

    def stop(self) -> None:
        """SIGTERM to the server's group, SIGKILL to whatever of its tree is left after 20 s."""
        tree = family(self.process.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        _, alive = psutil.wait_procs(tree, timeout=20)
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        self.process.wait()


def start(peer: Peer, log: Path, *, python: Path | None = None, workers: int = 2, timeout: float = 180) -> Running:
    """Start `peer` on a free 127.0.0.1 port and wait until its ready route answers 200 (the cold start)."""
    port = free_port()
    scratch = log.parent
    # a framework's environment is its own: nothing of this one's path; tinyserve only its defaults
    foreign = ("TINYSERVE_",) if peer.name == "tinyserve" else ("TINYSERVE_", "PYTHONPATH", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if not k.startswith(foreign)}
    env.update(peer.env(port, workers, scratch))
    started = time.perf_counter()
    process = subprocess.Popen(
        peer.command(python or peer.python, port, workers),
        cwd=peer.folder,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    grpc = f"127.0.0.1:{env['TINYSERVE_GRPC_PORT']}" if "TINYSERVE_GRPC_PORT" in env else ""
    running = Running(peer, f"http://127.0.0.1:{port}", process, log, grpc=grpc)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{peer.title} exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(running.url + peer.ready, timeout=2).status_code == 200:
                break
        if time.monotonic() > deadline:
            running.stop()
            raise TimeoutError(f"{peer.title} not ready after {timeout:.0f} s:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)
    running.cold_start_s = time.perf_counter() - started
    return running


def digits(n: int = 8) -> np.ndarray:
    """The first `n` digits of examples/digits.npy, (n, 1, 32, 32) float32."""
    x: np.ndarray = np.load(DIGITS)[:n].astype(np.float32)
    return x


def reference(x: np.ndarray) -> np.ndarray:
    """LeNet's logits for `x` from ONNX Runtime in process."""
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    logits: np.ndarray = session.run(None, {"x": x})[0]
    return logits


def ask(client: httpx.Client, url: str, form: Form, x: np.ndarray, grpc_address: str = "") -> np.ndarray:
    body, headers = form.encode(x)
    if form.grpc:
        import grpc

        with grpc.insecure_channel(grpc_address) as channel:
            return form.decode(channel.unary_unary(form.path)(body, timeout=60), {})
    response = client.post(url + form.path, content=body, headers=headers)
    if response.status_code != 200:
        raise AssertionError(f"{form.name} {form.path} answered {response.status_code}: {response.text[:500]}")
    return form.decode(response.content, response.headers)


def check(running: Running, x: np.ndarray | None = None) -> None:
    """Each single-image form, one digit a request, and the bulk form, all at once, give ONNX Runtime's answers."""
    x = digits() if x is None else x
    expected = reference(x)
    softmax = np.exp(expected - expected.max(1, keepdims=True))
    softmax /= softmax.sum(1, keepdims=True)
    with httpx.Client(timeout=60) as client:
        answers = [
            (form, np.concatenate([ask(client, running.url, form, x[i : i + 1], running.grpc) for i in range(len(x))]))
            for form in running.peer.single
        ]
        answers.append((running.peer.bulk, ask(client, running.url, running.peer.bulk, x)))
    for form, got in answers:
        want = softmax if form.probabilities else expected
        what = f"{running.peer.title}, {form.name}"
        if got.shape != want.shape:
            raise AssertionError(f"{what}: answers of shape {got.shape}, expected {want.shape}")
        if not np.array_equal(got.argmax(1), expected.argmax(1)):
            raise AssertionError(f"{what}: labels {got.argmax(1).tolist()}, expected {expected.argmax(1).tolist()}")
        np.testing.assert_allclose(got, np.asarray(want), rtol=RTOL, atol=ATOL, err_msg=what)
