"""`tinyserve-score --engine ray`: the client's chunks scored by a pool of Ray actors, on Ray Data.

One run, four steps:
1. Here, on the driver: list the input files (a file, a directory, a glob, or URIs that Ray's file
   systems read), count each file's rows so that rows are numbered across files, look the model up.
2. Read tasks (`client.ray_tasks.ChunkSource`) parse each file with the client's readers into the
   client's chunks: one dataset row per chunk of --chunk-size input rows, bad rows already marked.
3. An actor pool turns each chunk into its output lines with `client.scorer.chunk_records`, the
   function the threads engine uses: ONNX Runtime sessions (--local) or clients of servers (--url).
4. Here again: the chunks come back in input order (Ray Data's `preserve_order`), each checked to
   follow on from the one before, and this process alone writes OUTPUT, aside, then renamed into place.

An actor that dies is restarted and its chunk retried by Ray; a retried chunk gives the same lines and
only the driver writes, so no row is lost or written twice. The output has the same bytes as the
threads engine's for the same input. A local Ray (the default) listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import modelrepo
from client import formats
from client.backends import LocalBackend, ServerUnavailable
from client.scorer import Scorer, Summary, _Progress

logger = logging.getLogger("tinyserve.client")
RAY_MISSING = "--engine ray needs Ray: pip install -e '.[ray]' in the tinyserve checkout"


class RayRunError(RuntimeError):
    """The run failed as a whole: Ray missing or unreachable, or a chunk that failed on every retry."""


# An actor that dies (killed, out of memory, node lost) comes back, and the chunk it held is retried up
# to this many times: enough for lost machines, few enough that a chunk that crashes every actor
# it meets stops the run instead of looping.
CHUNK_RETRIES = 3


@dataclass
class RayEngine:
    """Scores like `scorer` (its model, backend options, chunk size, columns, quiet), on Ray."""

    scorer: Scorer
    urls: list[str] = field(default_factory=list)  # servers to share the chunks; default: scorer.url
    address: str | None = None  # a Ray cluster to join; None: start a local Ray in this process
    actors: int | None = None  # default: one per CPU of the cluster with --local, --concurrency with --url

    def score(self, source: str, output: Path) -> Summary:
        """Score `source` (a file, directory, glob or URI) into the local file `output`."""
        scorer = self.scorer
        model = scorer.backend().model  # the model's card, from the repository or the first server
        shape = model.rows
        formats._suffix(output, formats.OUTPUTS, "output")  # refuse a bad extension before any work
        paths = input_paths(source)
        with _native_stderr_aside() as ray_log:
            started_ray = connect(self.address)
            try:
                from client import ray_tasks

                chunks = _new_source(ray_tasks, paths, shape, scorer._chunk_rows(model), scorer.columns, source)
                total = chunks.number_rows()
                dataset = self._scored(ray_tasks, chunks)
                started = time.perf_counter()
                summary = _write(dataset, output, model.layout, total, scorer.quiet)
                summary.seconds = time.perf_counter() - started
                return summary
            except Exception as e:
                raise _user_error(e, ray_log) from None
            finally:
                if started_ray:
                    import ray

                    ray.shutdown()

    def _scored(self, ray_tasks: Any, chunks: Any) -> Any:
        import ray
        import ray.data

        cpus = int(ray.cluster_resources().get("CPU", 1))  # type: ignore[no-untyped-call]
        if self.scorer.local:
            # One ONNX Runtime thread per actor and one CPU each: the pool fills the cluster's cores.
            local = self.scorer.backend()
            assert isinstance(local, LocalBackend)
            entry = local.entry
            files = {p.name: p.read_bytes() for p in (entry.directory / modelrepo.CARD_FILE, entry.model_path)}
            backend: Any = ray_tasks.LocalModel(entry.name, entry.version, ray.put(files), threads=1)
            actors = self.actors or cpus
            actor_cpus = min(1.0, cpus / actors)  # more actors than CPUs, when asked for: they share them
        else:
            s = self.scorer
            urls = tuple(self.urls or [str(s.url)])
            backend = ray_tasks.Servers(s.model, urls, s.protocol, s.timeout, s.retries, s.backoff, s.token)
            # Clients mostly wait on their servers: a quarter of a CPU each, so that --concurrency of them fit.
            actors, actor_cpus = self.actors or s.concurrency, 0.25
        actors = max(1, min(actors, chunks.chunks))  # an actor with no chunk to score only costs its start
        # Reads ask for no CPU of their own: with every CPU held by an actor they could not be scheduled
        # (a deadlock); they are bounded by `concurrency` instead.
        dataset = ray.data.read_datasource(chunks, num_cpus=0, concurrency=max(1, min(cpus, len(chunks.files))))
        with warnings.catch_warnings():  # Ray 2.60 deprecates passing these with no replacement yet
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            return dataset.map(
                ray_tasks.ChunkScorer,
                fn_constructor_args=(backend,),
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=actor_cpus,
                max_restarts=-1,
                max_task_retries=CHUNK_RETRIES,
            )


def input_paths(source: str) -> list[str]:
    """INPUT as paths for Ray: a URI as it is; a local file or directory, absolute; a glob, its matches."""
    if "://" in source:
        return [source]
    matches = sorted(glob.glob(source, recursive=True)) if glob.has_magic(source) else [source]
    paths = [Path(match) for match in matches if Path(match).exists()]
    if not paths:
        raise formats.FormatError(f"{source}: no such file or directory")
    for path in paths:
        if path.is_file():
            formats._suffix(path, formats.INPUTS, "input")
    return [str(path.resolve()) for path in paths]  # read tasks may run in another working directory


def connect(address: str | None) -> bool:
    """Join the cluster at `address`, or start a local Ray with this machine's cores; quiet either way.
    True when this call started Ray (and the caller shuts it down)."""
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        _quiet()
        return False
    if address is None:  # a local Ray binds to 127.0.0.1 only (read once, when Ray is imported)
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise RayRunError(RAY_MISSING) from None
    started = time.perf_counter()
    ray.init(
        address=address or "local",
        include_dashboard=False,
        log_to_driver=False,  # the actors' own output stays in Ray's log files
        logging_level=logging.ERROR,
    )
    _quiet()
    cpus = int(ray.cluster_resources().get("CPU", 0))  # type: ignore[no-untyped-call]
    where = f"joined the Ray cluster at {address}" if address else "started a local Ray"
    logger.info("%s (%d CPUs) in %.1f s", where, cpus, time.perf_counter() - started)
    return True


def _quiet() -> None:
    """Ray Data's progress bars and per-run log lines off: the client prints its own progress and summary."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.execution_options.preserve_order = True  # chunks come out in input order: the output's row order
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler):  # the console; Ray's session log file keeps everything
            handler.setLevel(logging.ERROR)


@contextlib.contextmanager
def _native_stderr_aside() -> Iterator[Path]:
    """Ray's C++ core writes its log lines at ERROR straight to this process's file descriptor 2, past
    Python's logging: among them a notice about actor restarts that every Ray Data actor pool raises
    (ray-project/ray#53727). While Ray runs, descriptor 2 goes to a file and Python's stderr (progress,
    warnings) to a copy of the real one. The file stays only when a run fails, and has something to say."""
    fd, name = tempfile.mkstemp(prefix="tinyserve-ray-", suffix=".log")
    log = Path(name)
    sys.stderr.flush()
    terminal = os.dup(2)
    python_stderr = sys.stderr
    stream = open(terminal, "w", encoding=python_stderr.encoding, errors="backslashreplace", closefd=False)  # noqa: SIM115
    handlers = [h for h in logging.getLogger().handlers if getattr(h, "stream", None) is python_stderr]
    os.dup2(fd, 2)
    os.close(fd)
    sys.stderr = stream
    for handler in handlers:
        handler.setStream(stream)  # type: ignore[attr-defined]
    failed = True
    try:
        yield log
        failed = False
    finally:
        stream.flush()
        os.dup2(terminal, 2)
        os.close(terminal)
        sys.stderr = python_stderr
        for handler in handlers:
            handler.setStream(python_stderr)  # type: ignore[attr-defined]
        if not failed or not log.stat().st_size:
            log.unlink()


def _new_source(
    ray_tasks: Any, paths: list[str], shape: formats.RowShape, chunk_rows: int, columns: list[str] | None, source: str
) -> Any:
    try:
        return ray_tasks.ChunkSource(paths, shape, chunk_rows, columns)
    except ray_tasks.NoInputFiles:
        suffixes = ", ".join(formats.INPUTS)
        raise formats.FormatError(f"{source}: no input files ({suffixes}) found") from None


def _write(dataset: Any, output: Path, layout: formats.Layout, total: int, quiet: bool) -> Summary:
    """Every chunk's lines, in row order, into `output` via a temporary file and an atomic rename."""
    summary = Summary()
    progress: _Progress | None = None  # from the first chunk on: its rate is the pool's, not its start-up's

    def lines() -> Iterator[bytes]:
        nonlocal progress
        expected = 0
        for chunk in dataset.iter_rows():
            progress = progress or _Progress(total, quiet)
            if chunk["start"] != expected:  # Ray keeps the order; this proves it, chunk by chunk
                raise RuntimeError(f"the chunk of row {chunk['start']} came where row {expected} was due")
            expected += chunk["rows"]
            summary.rows_failed += chunk["failed"]
            summary.rows_ok += chunk["rows"] - chunk["failed"]
            progress.update(chunk["rows"])
            yield chunk["lines"]
        if expected != total:
            raise RuntimeError(f"{expected} rows came back, {total} were read")

    tmp = output.with_name(output.name + ".tmp")
    try:
        if output.suffix.lower() == ".jsonl":  # the lines are the output's bytes already
            with tmp.open("wb") as f:
                for block in lines():
                    f.write(block)
        else:
            records = (json.loads(line) for block in lines() for line in block.splitlines())
            formats.write_output(tmp, layout, records, total)
        os.replace(tmp, output)
    finally:
        if progress is not None:
            progress.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return summary


def _user_error(error: Exception, ray_log: Path) -> Exception:
    """The client's own error from inside Ray's wrappers (a task's exception arrives wrapped, with its
    traceback in the message), or a one-line RayRunError naming what failed and where Ray's log is."""
    seen: BaseException | None = error
    while seen is not None:
        ours = not type(seen).__module__.startswith("ray.")  # Ray's wrappers subclass the error they wrap
        if isinstance(seen, ServerUnavailable | formats.FormatError | RayRunError) and ours:
            return seen
        seen = getattr(seen, "cause", None) or seen.__cause__
    first_line = (str(error).strip().splitlines() or [""])[0]
    return RayRunError(f"the Ray run failed: {type(error).__name__}: {first_line} (Ray's own log: {ray_log})")
