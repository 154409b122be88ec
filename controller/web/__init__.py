"""The browser dashboard: static files served at ``/`` (``index.html``) and ``/static/``.

No build step: ``static/`` holds plain ES modules and CSS, shipped as package data (setup.py)
and served as they are. Fetching them needs no token; every data call they make does
(``/ws`` hello, ``Authorization: Bearer`` on the REST API), so a page without a token shows
the sign-in form and nothing else.

Every response of these routes carries :func:`security_headers`: a strict
Content-Security-Policy (scripts and styles only from this origin, never inline; network only
to this origin over HTTP and WebSocket), ``X-Content-Type-Options: nosniff``, no framing and
no referrer. The scripts build the DOM with ``textContent`` only, so nothing a node sends
(labels, output, monitor packets) is ever parsed as HTML.
"""

from __future__ import annotations

import re
from pathlib import Path

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC_DIR = Path(__file__).resolve().parent / "static"
# A Host header as a browser sends it (name or address, optional port). Anything else is
# left out of connect-src rather than copied into a header.
_HOST_RE = re.compile(r"[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?")


def security_headers(host: str | None) -> dict[str, str]:
    """The headers every dashboard response carries. ``connect-src`` names this host's
    ``ws:``/``wss:`` explicitly besides ``'self'`` (older browsers do not map ``'self'`` to
    WebSocket schemes); a Host header that is not a plain host[:port] adds nothing."""
    connect = "'self'"
    if host and _HOST_RE.fullmatch(host):
        connect += f" ws://{host} wss://{host}"
    csp = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
           f"connect-src {connect}; font-src 'self'; manifest-src 'self'; "
           "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
    return {"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache"}


class _SecureHeaders:
    """ASGI wrapper adding :func:`security_headers` to every HTTP response of ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in security_headers(host).items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_secured)


async def index(request: Request) -> Response:
    """``GET /``: the single page; its routes live in the URL fragment (``#/node/<id>``),
    so this is the only HTML the server serves."""
    response = FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8")
    response.headers.update(security_headers(request.headers.get("host")))
    return response


def routes() -> list[BaseRoute]:
    """``/`` and ``/static/...`` (both without a token), for app.py to mount."""
    return [Route("/", index, methods=["GET", "HEAD"]),
            Mount("/static", app=_SecureHeaders(StaticFiles(directory=STATIC_DIR)),
                  name="static")]
