"""A real uvicorn (uvloop and httptools, as BentoML runs it) on a 127.0.0.1 socket, in a thread."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


@contextmanager
def uvicorn_serving(app: Any, backlog: int = 8) -> Iterator[int]:
    """Serve `app` until the block ends; yields the port. Connections wait in the backlog until it serves."""
    config = uvicorn.Config(app, loop="uvloop", http="httptools", lifespan="off", log_level="error")
    server = uvicorn.Server(config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
