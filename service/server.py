"""The BentoML service: the platform ring around the data plane.

`create_service(start)` makes the service class from the start-up decision (service.runtime.start_up):
the worker count BentoML reads, the front doors it mounts (typed /v1, V2, the playground) and the guard
in front of them. Each worker's `__init__` loads the registry and binds the data plane the front doors
call. Nothing here runs on import.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from typing import Any

import bentoml

from service import compat, grpc_server, metrics, playground, repository_api, v1, v2
from service.admission import Admission
from service.control import Controller
from service.dataplane import Batching, DataPlane
from service.errors import Unavailable
from service.fastpath import FastPath
from service.lifecycle import LIFECYCLE, log_exit
from service.middleware import GuardMiddleware
from service.registry import Registry
from service.runtime import StartUp, prepare_onnxruntime, tune_gc, tune_malloc
from service.settings import Settings

logger = logging.getLogger("bentoml.tinyserve")


def traffic_timeout(settings: Settings) -> float:
    """BentoML's own request timeout, in front of the guard: its 504 is neither in the error envelope nor counted.

    It starts when a request arrives and stops when the answer begins, so it is set a second above the longest
    the guard lets that take (the body within TINYSERVE_BODY_TIMEOUT, then the answer within
    TINYSERVE_REQUEST_TIMEOUT): the guard's 408 or 504 always comes first, whatever the two settings are.
    """
    return settings.body_timeout + settings.request_timeout + 1


class PlaneHolder:
    """The data plane of this worker, once it has loaded its models."""

    def __init__(self) -> None:
        self._plane: DataPlane | None = None

    def bind(self, plane: DataPlane) -> None:
        self._plane = plane

    def __call__(self) -> DataPlane:
        if self._plane is None:
            raise Unavailable("the server is starting: its models are not loaded yet")
        return self._plane

    def served(self) -> set[tuple[str, str]] | None:
        """(name, version) of every version this worker serves; None while it starts."""
        if self._plane is None:
            return None
        return {(m.name, m.version) for m in self._plane.registry.models()}


def create_service(start: StartUp) -> Any:
    settings, entries, runtime = start.settings, start.entries, start.runtime
    fenced = compat.check()  # the internals compat reaches into are the ones it was written for
    per_worker_sockets = fenced and settings.reuse_port and runtime.shape.workers > 1
    if fenced:
        grpc_check = functools.partial(grpc_server.check_port, port=settings.grpc_port) if settings.grpc_port else None
        compat.hold_address_per_worker(per_worker=per_worker_sockets, also=grpc_check)
        compat.watch_workers(log_exit)
    plane = PlaneHolder()
    admission = Admission(settings.max_concurrency, LIFECYCLE)  # this worker's slots, over HTTP and gRPC
    batching = Batching(settings.batching, settings.max_batch_rows, settings.max_latency_ms / 1000)

    @bentoml.service(
        name="tinyserve",
        workers=runtime.shape.workers,
        traffic={"timeout": traffic_timeout(settings)},
        # BentoML's request metrics label the raw path (a series per unknown URL); the guard counts requests by
        # route template and serves /metrics (every worker's series, BentoML's and ours) behind its token.
        metrics={"enabled": False},
        logging={"access": {"enabled": settings.access_log}},
        tracing={} if settings.tracing else {"excluded_urls": [".*"]},  # off: every URL skips the span work
    )
    @bentoml.asgi_app(playground.app, path=playground.PATH)
    @bentoml.asgi_app(v1.create(plane), path="/v1")
    @bentoml.asgi_app(
        v2.create(plane, server_timing=settings.server_timing, max_body_bytes=settings.max_body_bytes), path="/"
    )
    class TinyServe:
        def __init__(self) -> None:
            prepare_onnxruntime(runtime)
            registry = Registry()
            control = Controller(settings, runtime, batching, registry)
            control.start(entries)  # the current state: a restarted worker serves what its peers serve now
            self.plane = DataPlane(registry, runtime, LIFECYCLE, control)
            self.grpc: Any = None  # this worker's gRPC server (service.grpc_server), started once it is ready
            plane.bind(self.plane)
            logger.info("ready: %s", ", ".join(f"{m.name}/{m.version}" for m in registry.models()))
            logger.info(playground.banner())
            tune_gc()
            if threading.current_thread() is threading.main_thread():  # a served worker (not an in-process test)
                LIFECYCLE.install(settings.drain_seconds)
                tune_malloc(settings.malloc_keep_mib)
            control.watch()
            compat.join_listeners(per_worker=per_worker_sockets)  # from now on this worker gets connections

        @bentoml.on_startup  # type: ignore[untyped-decorator]
        async def serve_grpc(self) -> None:
            """The gRPC front door, once this worker's models are loaded (a served worker only)."""
            if settings.grpc_port and threading.current_thread() is threading.main_thread():
                self.grpc = grpc_server.create(
                    self.plane,
                    loop=asyncio.get_running_loop(),
                    admission=admission,
                    max_message_bytes=settings.max_body_bytes,
                    request_timeout=settings.request_timeout,
                    token=settings.api_token.get_secret_value() if settings.api_token else None,
                )
                host = (compat.listening_address() or ("0.0.0.0", 0))[0]
                grpc_server.serve(self.grpc, host, settings.grpc_port)

        @bentoml.on_shutdown  # type: ignore[untyped-decorator]
        async def stop_grpc(self) -> None:
            if self.grpc is not None:
                stopped = self.grpc.stop(grace=settings.request_timeout)  # calls in flight finish; new: UNAVAILABLE
                await asyncio.to_thread(stopped.wait)  # the loop turns meanwhile: those calls run on it

        def __is_ready__(self) -> bool:
            return self.plane.ready()

    if settings.repository_api:
        TinyServe.mount_asgi_app(repository_api.create(plane), path="/")  # type: ignore[attr-defined]
    TinyServe.add_asgi_middleware(metrics.UnservedSeriesFilter, served=plane.served)  # type: ignore[attr-defined]
    TinyServe.add_asgi_middleware(  # type: ignore[attr-defined]
        GuardMiddleware,
        settings=settings,
        lifecycle=LIFECYCLE,
        quick_ack=fenced and settings.quick_ack,
        plane=plane,
        admission=admission,
    )
    TinyServe.add_asgi_middleware(  # type: ignore[attr-defined]
        FastPath, plane=plane, server_timing=settings.server_timing, max_body_bytes=settings.max_body_bytes
    )
    return TinyServe
