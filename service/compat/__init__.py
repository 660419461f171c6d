"""Every reach into another project's internals, in one place, checked against the versions it was written for.

This package is the fence: `service.compat` (here) for BentoML's and circus's sockets and workers and
uvicorn's request cycle, `service.compat.connections` for uvicorn's connection limits (header size and
time, idle connections, the file limit). Nothing else in the service touches a private name.

BentoML 1.4, its circus arbiter and uvicorn offer no public way to do these things a serving system needs:

1. One listening socket per worker (SO_REUSEPORT), so that connections spread over the workers.

   BentoML's server process binds one socket and every worker accepts from it. The worker that wakes first
   takes every pending connection (its event loop accepts until the queue is empty), so a client that opens
   its connections at once (a pool of 32, an ingress's keep-alive pool) lands whole on one worker while the
   others idle. Measured on 2 cores, 2 workers, 32 connections: 32 on one worker, 0 on the other, and the
   same requests/s as one worker; with a socket per worker 17 and 15, and 1.5x the requests/s (BentoML
   issue #5426).

   With SO_REUSEPORT every worker listens on a socket of its own on the same address and Linux hashes each
   new connection to one of them. Two hooks, one per process kind:

   - The server process binds the address itself, before circus would: first with a plain probe, so that
     an address in use is one line and a refused start (not circus's traceback, and not a second server
     silently sharing the port), then with SO_REUSEPORT on the socket BentoML made. That socket never
     listens: it holds the address and takes no connection.
   - Each worker, once its models are loaded and just before uvicorn serves the socket it inherits
     (`--fd N`), puts a listening SO_REUSEPORT socket on the same address in its place (dup2 onto N). It
     joins only when ready: a worker still loading (or restarted by circus) would otherwise get its share of
     new connections and hold them until then.

   Where SO_REUSEPORT does not spread connections (not Linux), with one worker, or with
   `TINYSERVE_REUSE_PORT=false`, BentoML's shared socket is left as it is.

2. Prompt TCP acknowledgements while a request body is read.

   A client that keeps Nagle's algorithm on (Triton's `tritonclient.http` does) holds the last, partial
   segment of a large body until everything sent before it is acknowledged. On a kept-alive connection
   Linux treats the server as interactive and delays its ACKs by up to 40 ms, hoping to piggyback them on a
   response: the client waits for the ACK, the server for the rest of the body. Measured on 16 cores,
   most 4 MB requests from that client stalled ~40 ms (52 ms instead of 9 ms).

   `TCP_QUICKACK`, set on the connection each time the server reads from a body that has not all
   arrived yet, leaves that interactive mode and sends an ACK the kernel is holding at once. A body that is
   already whole when the application asks for it (every small request) is left alone: the system call on
   every request cost 6% of a worker's single-image requests/s. ASGI does not expose the socket; uvicorn's
   `receive` is a method of its request cycle, which holds the transport and knows whether more body is
   due, and that is where both are found. Where it is not (another server, or `receive` wrapped by another
   middleware), nothing changes.

Both lean on private names: `bentoml._internal.utils.circus.create_standalone_arbiter`, the circus socket's
`bind_and_listen`, the socket name `_bento_api_server`, BentoML's worker argv (`--fd`, `--backlog`), and
uvicorn's request cycle (`receive.__self__`, `.transport`, `.more_body`) behind BentoML's middleware
closures. `check()` runs at start: where the installed versions are not the ones below, both are turned
off (BentoML's shared socket and the kernel's ACKs still work) and one line says so;
tests/fast/test_compat.py fails loudly on an upgrade that breaks them.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from importlib import metadata
from typing import Any

from service.runtime import StartRefused, refuse_start

logger = logging.getLogger("bentoml.tinyserve")

WRITTEN_FOR = {"bentoml": "1.4.39", "uvicorn": "0.54.0"}


def mismatches() -> list[str]:
    """`name installed-version (written for X)` for each package whose version differs."""
    found = []
    for package, version in WRITTEN_FOR.items():
        try:
            installed = metadata.version(package)
        except metadata.PackageNotFoundError:
            installed = "missing"
        if installed != version:
            found.append(f"{package} {installed} (written for {version})")
    return found


def check() -> bool:
    """True where the internals below are the ones they were written for; else log once what is off."""
    differ = mismatches()
    if differ and worker_fd() is None:  # the server process says it, not each worker again
        logger.warning(
            "compat: %s: one socket per worker and prompt ACKs are off (BentoML's shared socket is used)",
            ", ".join(differ),
        )
    return not differ


def worker_fd(argv: Sequence[str] = sys.argv) -> int | None:
    """The listening socket BentoML hands a worker (`--fd N` on its command line), or None outside one."""
    fd = _option(argv, "--fd")
    return int(fd) if fd is not None and fd.isdigit() else None


def listening_address(argv: Sequence[str] = sys.argv) -> tuple[str, int] | None:
    """The (host, port) this worker serves on, read off its inherited socket."""
    fd = worker_fd(argv)
    if fd is None:
        return None
    try:
        with socket.socket(fileno=os.dup(fd)) as listening:
            host, port = listening.getsockname()[:2]
    except OSError:
        return None
    return str(host), int(port)


# -- 1. one listening socket per worker

API_SOCKET = "_bento_api_server"  # the name BentoML gives its HTTP socket among circus's sockets
SPREADS = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def hold_address_per_worker(
    *, per_worker: bool, argv: Sequence[str] = sys.argv, also: Callable[[str], None] | None = None
) -> None:
    """In the server process: hook the binding of BentoML's API socket (a worker joins once ready);
    `also(host)` then checks the server's other addresses (the gRPC port) before any worker starts."""
    if _option(argv, "--fd") is not None:
        return  # a worker: it joins once ready (`join`)
    from bentoml._internal.utils import circus  # the server process (or `bentoml build`, which starts none)

    create_arbiter: Callable[..., Any] = circus.create_standalone_arbiter
    if getattr(create_arbiter, "tinyserve", False):
        return

    def create_standalone_arbiter(*args: Any, sockets: list[Any] | None = None, **kwargs: Any) -> Any:
        for sock in sockets or []:
            if sock.name == API_SOCKET:
                hold_address(sock, per_worker=per_worker and SPREADS)
                if also is not None:
                    also(str(sock.host))
        return create_arbiter(*args, sockets=sockets, **kwargs)

    create_standalone_arbiter.tinyserve = True  # type: ignore[attr-defined]
    circus.create_standalone_arbiter = create_standalone_arbiter


def join_listeners(*, per_worker: bool, argv: Sequence[str] = sys.argv) -> None:
    """In a worker whose models are loaded: listen on a socket of its own in place of the inherited one."""
    fd = _option(argv, "--fd")
    if fd is not None and per_worker and SPREADS and _inherited_holds_address(int(fd)):
        listen_in_place(int(fd), backlog=int(_option(argv, "--backlog") or 2048))


def hold_address(sock: Any, *, per_worker: bool) -> None:
    """Bind BentoML's API socket (a circus socket, not yet bound) or refuse to start if the address is taken."""
    address = (sock.host, sock.port)
    with socket.socket(sock.family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as circus: TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                taken = f"{_where(address)} is already in use: stop what listens there or pick another --port"
                refuse_start(StartRefused(taken))
            refuse_start(StartRefused(f"cannot listen on {_where(address)}: {e.strerror}"))
    if not per_worker:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    sock.bind_and_listen = lambda: None  # bound above; listening would take a share of the connections
    logger.info("connections: one listening socket per worker on %s (SO_REUSEPORT)", _where(address))


def listen_in_place(fd: int, *, backlog: int) -> None:
    """Replace the inherited socket on `fd` by a listening SO_REUSEPORT socket on the same address."""
    with socket.socket(fileno=os.dup(fd)) as inherited:
        family, address = inherited.family, inherited.getsockname()
    own = socket.socket(family, socket.SOCK_STREAM)
    try:
        own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        own.bind(address)
        own.listen(backlog)
        os.dup2(own.fileno(), fd)
    except OSError as e:  # the shared socket still works: uvicorn listens on it as before
        logger.warning("connections: keeping the shared socket on %s: %s", _where(address), e.strerror)
    finally:
        own.close()


def _inherited_holds_address(fd: int) -> bool:
    """The inherited socket is the server's bound, non-listening one (not a shared listener, not a UNIX socket)."""
    with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as inherited:
        listening = inherited.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        reuse_port = inherited.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        return inherited.family in (socket.AF_INET, socket.AF_INET6) and not listening and bool(reuse_port)
    return False


def _option(argv: Sequence[str], name: str) -> str | None:
    """`--name value` in a BentoML worker's command line."""
    args = list(argv)
    return args[args.index(name) + 1] if name in args[:-1] else None


def _where(address: tuple[Any, ...]) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def watch_workers(on_exit: Callable[..., bool], argv: Sequence[str] = sys.argv) -> None:
    """In the server process: call `on_exit` for each worker circus reaps (BentoML restarts one silently).

    circus calls a watcher's `after_reap` hook with the exit status of each process it reaps; the hook is
    added to every watcher as BentoML hands them to circus.
    """
    if _option(argv, "--fd") is not None:
        return  # a worker: the server process watches
    from bentoml._internal.utils import circus

    create_arbiter: Callable[..., Any] = circus.create_standalone_arbiter
    if getattr(create_arbiter, "watches_workers", False):
        return

    def create_standalone_arbiter(watchers: list[Any], *args: Any, **kwargs: Any) -> Any:
        for watcher in watchers:
            watcher.hooks["after_reap"] = on_exit
            watcher.ignore_hook_failure.append("after_reap")
        return create_arbiter(watchers, *args, **kwargs)

    create_standalone_arbiter.watches_workers = True  # type: ignore[attr-defined]
    circus.create_standalone_arbiter = create_standalone_arbiter
    logger.info("workers: each exit is logged with its cause")


# -- 2. prompt ACKs while a request body is read

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


def request_cycle(receive: Receive) -> Any:
    """uvicorn's request cycle (uvloop or asyncio) behind `receive`, with its transport; else None.

    Middlewares in front of ours (BentoML's metrics) wrap `receive` in closures: follow the closed-over
    `...receive` callables down to uvicorn's own.
    """
    for _ in range(8):
        cycle = getattr(receive, "__self__", None)
        if getattr(cycle, "transport", None) is not None:
            return cycle
        inner = [cell.cell_contents for cell in getattr(receive, "__closure__", None) or () if _is_receive(cell)]
        if not inner:
            return None
        receive = inner[0]
    return None


def _is_receive(cell: Any) -> bool:
    try:
        return callable(cell.cell_contents) and getattr(cell.cell_contents, "__name__", "").endswith("receive")
    except ValueError:  # an empty cell
        return False


class QuickAck:
    """Wraps `receive` so that reading a body acknowledges promptly; reports once whether it can."""

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.reported = False

    def __call__(self, receive: Receive) -> Receive:
        cycle = request_cycle(receive) if self.enabled and QUICKACK is not None else None
        if not self.reported:
            self.reported = True
            where = "on" if cycle is not None else "off"
            if self.enabled and cycle is None:
                where += " (no TCP_QUICKACK on this system, or the socket is out of reach)"
            logger.info("prompt ACKs while reading request bodies: %s", where)
        if cycle is None or not getattr(cycle, "more_body", True):
            return receive  # the whole body is already here: nothing of it waits for an ACK
        sock = cycle.transport.get_extra_info("socket")

        async def acknowledging() -> MutableMapping[str, Any]:
            if getattr(cycle, "more_body", True):
                # A connection closed meanwhile raises (uvloop: ValueError for its fd -1); receive() says so
                with contextlib.suppress(OSError, ValueError):
                    sock.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)
            return await receive()

        return acknowledging
