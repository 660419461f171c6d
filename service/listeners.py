"""One listening socket per worker (SO_REUSEPORT), so that connections spread over the workers.

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
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

from service.runtime import StartRefused, refuse_start

logger = logging.getLogger("bentoml.tinyserve")

API_SOCKET = "_bento_api_server"  # the name BentoML gives its HTTP socket among circus's sockets
SPREADS = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def install(*, per_worker: bool, argv: Sequence[str] = sys.argv) -> None:
    """Called on import of the service: in the server process, hook the binding of BentoML's API socket."""
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
        return create_arbiter(*args, sockets=sockets, **kwargs)

    create_standalone_arbiter.tinyserve = True  # type: ignore[attr-defined]
    circus.create_standalone_arbiter = create_standalone_arbiter


def join(*, per_worker: bool, argv: Sequence[str] = sys.argv) -> None:
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
