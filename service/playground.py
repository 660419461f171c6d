"""The browser playground: static files under /ui/ (service/ui/), mounted into the BentoML service.

Code only, no data: the page calls the same public routes any client calls (/v1/...), with the token
the user types, so these files are served without one. A strict Content-Security-Policy lets the page
talk to this server alone: nothing is fetched from, or sent to, anywhere else.
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import compat

UI_DIR = Path(__file__).resolve().parent / "ui"
PATH = "/ui"
HEADERS = {
    b"content-security-policy": (
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
    b"cache-control": b"no-cache",  # revalidate: a new release's page never runs against stale scripts
}


class _SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS.items()]
            await send(message)

        await self.app(scope, receive, with_headers)


app = _SecurityHeaders(
    Starlette(routes=[Mount("/", StaticFiles(directory=UI_DIR, html=True, check_dir=False), name="ui")])
)


def banner() -> str:
    """The start-up line that names the page's address (the worker's socket, when it can be read)."""
    url = _listening_url()
    where = f"{url}{PATH}/" if url else f"{PATH}/ on this server"
    return f"playground: draw a digit and try every model in a browser at {where}"


def _listening_url() -> str | None:
    address = compat.listening_address()
    if address is None:
        return None
    host, port = address
    if host in ("0.0.0.0", "::"):
        host = "localhost"
    return f"http://{host}:{port}"
