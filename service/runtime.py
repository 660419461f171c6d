"""ONNX Runtime sessions: the start-up decisions, verification and warm-up, and `run` itself.

`preflight` decides once, before any worker starts: the model files match their cards, the provider
runs (CUDA is proven by a probe), and the worker/thread shape fits the cores. Every worker then loads
its sessions with that decision. `ModelSession.run` is the only place where `session.run` is called.
"""

from __future__ import annotations

import ctypes
import gc
import itertools
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import onnxruntime as ort
from pydantic import ValidationError

import modelrepo
import provenance
from service import cuda, metrics
from service.kinds import contract
from service.machine import Cores, Shape, available_cores, choose_shape
from service.settings import Settings
from service.tensors import ONNX_TYPES

logger = logging.getLogger("bentoml.tinyserve")  # a child of bentoml's logger: its handlers, its format

CPU = "CPUExecutionProvider"
CUDA = cuda.CUDA
# The parent's decision, handed to the workers it starts (they inherit its environment): the workers
# then neither probe again nor log again.
DECISION_ENV = "TINYSERVE_RUNTIME_DECISION"


class StartRefused(RuntimeError):
    """The server must not start: the message says why, in one line."""


class ProviderUnavailable(StartRefused):
    """`providers=cuda` was asked for, and this onnxruntime build or machine cannot give it."""


def choose_providers(setting: str, available: Sequence[str]) -> list[str]:
    """The providers to ask ONNX Runtime for, by name (it also lists e.g. Azure: never take the list)."""
    if setting == "cpu":
        return [CPU]
    has_cuda = CUDA in available
    if setting == "cuda" and not has_cuda:
        raise ProviderUnavailable(
            f"TINYSERVE_PROVIDERS=cuda, but this onnxruntime build offers only {', '.join(available)}; "
            "install onnxruntime-gpu on a machine with a CUDA GPU, or use auto/cpu"
        )
    if setting not in ("auto", "cuda"):
        raise ValueError(f"providers setting must be auto, cpu or cuda, got {setting!r}")
    return [CUDA, CPU] if has_cuda else [CPU]


@dataclass(frozen=True)
class Runtime:
    """Decided once at start-up: the cores, the worker/thread shape, the provider and its options."""

    cores: Cores
    shape: Shape
    provider: str
    provider_options: dict[str, str]  # as asked; each session reports what ONNX Runtime took
    fallback: str = ""  # why providers=auto serves on the CPU although this build has CUDA
    chunk_bytes: int = 0  # Settings.run_chunk_bytes; 0: one ONNX Runtime call per batch
    bulk_threads: int = 1  # Settings.bulk_threads, resolved: threads a chunked batch's calls are spread over

    def chunk_rows(self, spec: modelrepo.TensorSpec) -> int | None:
        """Rows per ONNX Runtime call for a model taking `spec`, or None: the whole batch in one call.

        Only on the CPU with one intra-op thread a session: a big batch's intermediate tensors (LeNet's first
        convolution, ~19 KB an image) then outgrow the core's cache, and 1024 images ran ~1.4x faster in process
        as calls of 16 (bit for bit the same answers). With more threads a session parallelises over the
        batch, and small calls were slower; on a GPU a call is worth more the larger it is.
        """
        if not self.chunk_bytes or self.provider != CPU or self.shape.threads != 1:
            return None
        try:
            dtype = np.dtype(spec.dtype)
        except TypeError:
            return None
        if dtype.kind not in "biuf" or any(side < 1 for side in spec.shape[1:]):
            return None  # rows of no fixed size in bytes (strings, a dynamic axis): one call per batch
        return max(1, self.chunk_bytes // (int(np.prod(spec.shape[1:])) * dtype.itemsize))

    def spread(self, spec: modelrepo.TensorSpec) -> int:
        """Threads a batch of `spec` cut into calls (`chunk_rows`) may run them on: 1 where it is not cut."""
        return self.bulk_threads if self.chunk_rows(spec) else 1

    def describe(self) -> str:
        options = "".join(f", {k}={v}" for k, v in self.provider_options.items())
        workers = f"{self.shape.workers} worker{'s' if self.shape.workers > 1 else ''}"
        return (
            f"{self.cores.describe()} -> {workers} x {self.shape.threads} intra-op threads, "
            f"spinning {'on' if self.shape.spinning else 'off'}; {self.provider}{options}"
        )

    def providers(self) -> list[Any]:
        return [(CUDA, self.provider_options), CPU] if self.provider == CUDA else [CPU]

    def session_options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = self.shape.threads
        options.inter_op_num_threads = 1
        # Idle pool threads spin by default; measured on 16 cores, a worker that runs the model 3 ms in
        # every 9 then keeps every core busy, and turning it off gave 2.1x on bulk, 1.4x on single images.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.shape.spinning else "0")
        return options

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, text: str) -> Runtime:
        data = json.loads(text)
        return cls(Cores(**data.pop("cores")), Shape(**data.pop("shape")), **data)


class ModelSession:
    """One version's ONNX Runtime session; `run` is the only place where `session.run` is called."""

    def __init__(
        self,
        entry: modelrepo.ModelEntry,
        session: ort.InferenceSession,
        provider_options: dict[str, str],
        chunk_rows: int | None = None,
        threads: int = 1,
    ):
        self.entry = entry
        self.session = session
        self.provider = session.get_providers()[0]
        self.provider_options = provider_options  # the chosen options, as ONNX Runtime reports them
        self.input_name = entry.card.inputs[0].name
        self.output_names = [entry.card.outputs[0].name]
        self.chunk_rows = chunk_rows  # Runtime.chunk_rows: a longer batch runs as calls of this many rows
        self.threads = threads  # Runtime.spread: the threads those calls are taken by, this one included
        self.metrics = metrics.ModelMetrics(entry.name, entry.version)

    def run(self, x: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        rows = self.chunk_rows
        if rows is None or len(x) <= rows:
            (out,) = self.session.run(self.output_names, {self.input_name: x})
        else:
            out = np.concatenate(self._calls(x, rows))
        self.metrics.observe(rows=len(x), seconds=time.perf_counter() - started)
        result: np.ndarray = out
        return result

    def _calls(self, x: np.ndarray, rows: int) -> list[np.ndarray]:
        """x's answers as calls of `rows` rows, in order, taken in turn by this thread and its helpers.

        A session of one intra-op thread runs a call on the thread that makes it, and lets go of the GIL
        while it does: so a lone bulk request, which would otherwise keep one core busy while the others
        idle, runs its calls on as many threads as `threads` (the cores, by default). Each call is the same
        rows as in turn (a view of x: no copy in), so the answers are the same bits. Threads take the next
        call as they finish one: a thread the scheduler holds back (another worker busy on its core) takes
        fewer. At least two calls a thread, or a helper costs more than it gives.
        """
        count = -(-len(x) // rows)
        pieces: list[np.ndarray] = [_NOT_RUN] * count
        turns = itertools.count()  # next() on it is atomic under the GIL: each call is taken once
        failed: list[BaseException] = []

        def take_turns() -> None:
            while not failed and (i := next(turns)) < count:
                try:
                    pieces[i] = self.session.run(self.output_names, {self.input_name: x[i * rows : (i + 1) * rows]})[0]
                except BaseException as e:
                    failed.append(e)
                    raise

        helpers = [_helpers(self.threads - 1).submit(take_turns) for _ in range(min(self.threads, count // 2) - 1)]
        try:
            take_turns()
        finally:
            wait(helpers)  # x and the pieces are in use until every helper is done with them
        if failed:
            raise failed[0]
        return pieces


_NOT_RUN = np.empty(0)
_pool: ThreadPoolExecutor | None = None


def _helpers(size: int) -> ThreadPoolExecutor:
    """The process's threads that help run a long batch's calls (ModelSession._calls), made on first use."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max(1, size), thread_name_prefix="tinyserve-calls")
    return _pool


def _check_against_card(entry: modelrepo.ModelEntry, session: ort.InferenceSession) -> None:
    """The file's inputs and outputs are the card's (name, datatype, rank): the card speaks for the file."""
    for side, declared, actual in (
        ("input", entry.card.inputs, session.get_inputs()),
        ("output", entry.card.outputs, session.get_outputs()),
    ):
        got = [(a.name, ONNX_TYPES.get(a.type, a.type), len(a.shape)) for a in actual]
        want = [(d.name, d.datatype, len(d.shape)) for d in declared]
        if got != want:
            raise modelrepo.ModelRepositoryError(
                f"{entry.model_path}: the file's {side}s {got} do not match the card's {want}"
            )


def open_session(entry: modelrepo.ModelEntry, runtime: Runtime) -> ModelSession:
    """Verify the file against its card, open a session on the decided provider, warm it up."""
    modelrepo.verify(entry)
    session = ort.InferenceSession(str(entry.model_path), runtime.session_options(), providers=runtime.providers())
    active = session.get_providers()[0]
    if active != runtime.provider:  # the probe ran it on CUDA; this worker could not: refuse, loudly
        raise ProviderUnavailable(f"{entry.model_path}: the start-up probe ran on {runtime.provider}, got {active}")
    _check_against_card(entry, session)
    reported = session.get_provider_options().get(active, {})
    options = {key: reported.get(key, value) for key, value in runtime.provider_options.items()}
    spec_in, spec_out = entry.card.inputs[0], entry.card.outputs[0]
    model = ModelSession(entry, session, options, runtime.chunk_rows(spec_in), runtime.spread(spec_in))
    warm = np.zeros((1, *spec_in.shape[1:]), dtype=np.float32)
    out = session.run(None, {spec_in.name: warm})[0]
    if out.shape != (1, *spec_out.shape[1:]):
        raise modelrepo.ModelRepositoryError(
            f"{entry.model_path}: warm-up output shape {out.shape} does not match the card's {spec_out.shape}"
        )
    return model


def decide(settings: Settings, entries: list[modelrepo.ModelEntry]) -> Runtime:
    """The provider (CUDA proven by running every model once), the shape and the options."""
    cores = available_cores()
    shape = choose_shape(cores.available, settings.workers, settings.threads, spinning=settings.spinning)
    wanted = choose_providers(settings.providers, ort.get_available_providers())
    bulk_threads = settings.bulk_threads or cores.available
    if wanted[0] != CUDA:
        return Runtime(cores, shape, CPU, {}, chunk_bytes=settings.run_chunk_bytes, bulk_threads=bulk_threads)
    options = cuda.provider_options(
        device_id=settings.cuda_device, tf32=settings.cuda_tf32, conv_algo_search=settings.cuda_conv_algo_search
    )
    result = cuda.probe([entry.model_path for entry in entries], options)
    if result.ok:
        return Runtime(cores, shape, CUDA, options)
    if settings.providers == "cuda":
        raise ProviderUnavailable(f"TINYSERVE_PROVIDERS=cuda, but CUDA cannot run here: {result.reason}")
    return Runtime(
        cores, shape, CPU, {}, fallback=result.reason, chunk_bytes=settings.run_chunk_bytes, bulk_threads=bulk_threads
    )


def preflight(settings: Settings, *, inherited: str | None = None) -> tuple[list[modelrepo.ModelEntry], Runtime]:
    """Fail fast, before any worker starts: every model file matches its card and fits a kind, the provider runs.

    BentoML restarts a worker whose start-up fails, forever; decided here, `bentoml serve` (and
    `bentoml build`) stop at once with the reason instead. A worker gets its server's decision
    (`inherited`) and neither probes nor logs again.
    """
    entries = modelrepo.served_by_policy(settings.models_dir, modelrepo.discover(settings.models_dir))
    if not entries:
        raise modelrepo.ModelRepositoryError(f"{settings.models_dir}: no models found")
    keys = provenance.trusted_keys(settings.trusted_keys)
    for entry in entries:
        modelrepo.verify(entry)
        provenance.verify(entry, keys)  # signed by a trusted key, when TINYSERVE_TRUSTED_KEYS names any
        contract(entry.card)  # a card that fits no kind of model refuses the start here, not in every worker
    if inherited:
        return entries, Runtime.from_env(inherited)
    runtime = decide(settings, entries)
    if runtime.fallback:
        logger.warning("providers=auto: CUDA cannot run, serving on the CPU: %s", runtime.fallback)
    logger.info("runtime: %s", runtime.describe())
    return entries, runtime


def refuse_start(reason: Exception) -> NoReturn:
    """One line on stderr and a non-zero exit: no traceback, and no worker for BentoML to restart."""
    sys.stderr.write(f"tinyserve: refusing to start: {reason}\n")
    sys.stderr.flush()
    raise SystemExit(2)


def read_settings() -> Settings:
    """The TINYSERVE_ variables, or one line naming each bad one and a refused start."""
    try:
        return Settings()
    except ValidationError as e:
        refuse_start(
            StartRefused(
                "; ".join(f"TINYSERVE_{'_'.join(map(str, err['loc'])).upper()}: {err['msg']}" for err in e.errors())
            )
        )


@dataclass(frozen=True)
class StartUp:
    """Everything decided before any worker starts."""

    settings: Settings
    entries: list[modelrepo.ModelEntry]
    runtime: Runtime


def start_up(settings: Settings | None = None, *, serving: bool = True) -> StartUp:
    """Read the settings, check the repository, decide the runtime; or refuse to start in one line.

    `serving`: this is `bentoml serve`'s process or one of its workers, which inherit its environment:
    the server's decision reaches the workers there. In-process callers (tests) pass False and leave
    the environment alone.
    """
    settings = settings or read_settings()
    if serving and settings.model_control != "none" and settings.control_dir is None:  # one per server start
        os.environ["TINYSERVE_CONTROL_DIR"] = tempfile.mkdtemp(prefix="tinyserve-control-")
        settings = settings.model_copy(update={"control_dir": Path(os.environ["TINYSERVE_CONTROL_DIR"])})
    try:
        entries, runtime = preflight(settings, inherited=os.environ.get(DECISION_ENV) if serving else None)
    except (StartRefused, modelrepo.ModelRepositoryError) as reason:
        refuse_start(reason)
    if serving:
        os.environ[DECISION_ENV] = runtime.to_env()
    return StartUp(settings, entries, runtime)


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the request path.

    Measured (benchmarks, LeNet, 32 concurrent single-image requests): full collections stalled every
    request in flight for ~100 ms twice a second, p99 7x p50. Freezing the start-up objects (bentoml,
    pydantic, onnxruntime: they are never garbage) and collecting the young generation less often
    removed the stalls: p99 1.7x p50, and 1.3x the requests/s.
    """
    gc.freeze()
    gc.set_threshold(20_000, 20, 40)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # glibc's malloc.h
ARENAS = 2  # the main thread's heap and one the other threads share (tune_malloc)


def tune_malloc(keep_mib: int) -> bool:
    """Let glibc's malloc keep up to `keep_mib` MiB of freed memory for the next large body; True if it took it.

    A 1024-image LeNet body is 4 MiB, and the buffers it passes through (the socket's reads, gRPC's message,
    the joined body) are freed after each request. glibc gave them back to the kernel (an allocation over its
    mmap threshold is a mapping of its own; freed memory at the top of the heap beyond its trim threshold is
    returned), so the next request faulted ~1,000 fresh zeroed pages in for each: measured at one worker with
    1024-image gRPC requests, 6.2 us of system CPU an image, 2.7 with the buffers kept, and ~8% more images/s.
    Both thresholds fixed (glibc otherwise moves them): no allocation up to the keep size gets a mapping of its
    own, and a heap shrinks once more than that is free. glibc gives each thread that allocates at once with
    another a heap of its own (up to 8 a core), each of which would then keep as much: two heaps (the main
    thread's, and one the others share) bound what a worker keeps after a burst at about twice the keep size.
    Not glibc (musl, macOS): nothing to do.
    """
    if keep_mib <= 0 or not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    size = keep_mib * 1024 * 1024
    options = ((M_ARENA_MAX, ARENAS), (M_MMAP_THRESHOLD, size), (M_TRIM_THRESHOLD, size))
    return all([bool(libc.mallopt(option, value)) for option, value in options])


def prepare_onnxruntime(runtime: Runtime) -> None:
    """Once per worker, before its first session."""
    ort.set_default_logger_severity(3)  # errors only: e.g. CUDA's "some nodes were assigned to the CPU"
    if runtime.provider == CUDA:
        cuda.preload_libraries()
