"""A small status HTTP server on loopback only, for the node runtime and the sidecar.

Rule: it binds only to a loopback address; anything else is refused before binding. It runs
inside its owner's event loop and task group (uvicorn without its own signal handling) and,
once listening, writes its URL to ``url_file`` so local tools can find an ephemeral port.
Requests have header and body deadlines (:mod:`.http_deadlines`); handlers read bodies
through :mod:`.bodies`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from starlette.applications import Starlette

from tether.protocol.errors import TetherError

from .http_deadlines import deadline_protocol

logger = logging.getLogger(__name__)


class NotLoopback(TetherError):
    default_code = "invalid_request"


def check_loopback(host: str) -> None:
    """Raise NotLoopback unless ``host`` is a loopback address or ``localhost``."""
    if host == "localhost":
        return
    try:
        ok = ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise NotLoopback(f"status endpoints bind to loopback only (127.0.0.1, ::1); "
                          f"refusing {host!r}")


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, url_file: Path | None) -> None:
        super().__init__(config)
        self.url_file = url_file
        self.url: str | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the owning process handles its signals itself

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.should_exit or not self.servers:
            return
        host, port = self.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
        if self.url_file is not None:
            tmp = self.url_file.with_suffix(".tmp")
            tmp.write_text(self.url + "\n")
            tmp.replace(self.url_file)


async def serve_loopback(app: Starlette, *, host: str, port: int,
                         url_file: Path | None) -> None:
    """Serve ``app`` until cancelled. Raises NotLoopback for a non-loopback ``host``."""
    check_loopback(host)
    server = _Server(uvicorn.Config(app, host=host, port=port, log_config=None,
                                    access_log=False, lifespan="off", loop="none",
                                    http=deadline_protocol()), url_file)
    # uvicorn closes its sockets only when it leaves its main loop by itself: on
    # cancellation, ask it to exit and wait for that, then re-raise.
    serving = asyncio.ensure_future(server.serve())
    try:
        await asyncio.shield(serving)
    except asyncio.CancelledError:
        server.should_exit = True
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await serving
        raise
    finally:
        _remove(url_file)


def _remove(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)
