"""Run the controller under uvicorn (uvloop, websockets) until SIGTERM/SIGINT.

Readiness: once listening, the controller writes its URL to ``<data-dir>/controller.url``
(so ``--port 0`` works for tests and tools) and logs it.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
from collections.abc import Iterator
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tether.common.http_deadlines import deadline_protocol
from tether.tools.soak import recorder

from .app import Controller, StartError, create_app, edge_fast_path
from .config import ControllerConfig
from .wsproto import LeanWebSocketProtocol

logger = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, controller_config: ControllerConfig,
                 controller: Controller) -> None:
        super().__init__(config)
        self.controller_config = controller_config
        self.controller = controller
        self.url: str | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """As uvicorn's, but a graceful stop on SIGTERM/SIGINT ends with exit status 0
        instead of re-raising the signal after shutdown."""
        with super().capture_signals():
            yield
            self._captured_signals.clear()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop accepting, then close edge sessions with 1001 (PROTOCOL.md §7) before
        uvicorn closes the rest of the connections (it would use 1012). In that order, a
        node that reconnects at once cannot be welcomed by a controller that is going."""
        self.controller.run.stopping = True
        for server in self.servers:
            server.close()
        await self.controller.gateway.close_sessions()
        await super().shutdown(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.should_exit or not self.servers:
            return
        port = self.servers[0].sockets[0].getsockname()[1]
        cfg = self.controller_config
        scheme = "https" if cfg.tls_cert else "http"
        host = cfg.host if ":" not in cfg.host else f"[{cfg.host}]"
        self.url = f"{scheme}://{host}:{port}"
        url_file = cfg.data_dir / "controller.url"
        tmp = url_file.with_suffix(".tmp")
        tmp.write_text(self.url + "\n")
        tmp.replace(url_file)
        logger.info("controller listening", extra={"url": self.url})


def start_errors_in_one_line(app: ASGIApp, controller: Controller) -> ASGIApp:
    """``app`` whose lifespan reports a :class:`StartError` (the store or NATS cannot be
    reached) as its one-line message instead of a traceback: uvicorn logs what
    ``lifespan.startup.failed`` carries, and the error itself is not re-raised to it."""
    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return

        async def send_plainly(message: Message) -> None:
            error = controller.run.start_error
            if message["type"] == "lifespan.startup.failed" and error is not None:
                message = {**message, "message": f"controller cannot start: {error}"}
            await send(message)
        try:
            await app(scope, receive, send_plainly)
        except StartError:
            pass  # reported through lifespan.startup.failed above
    return asgi


def build_server(config: ControllerConfig) -> _Server:
    kwargs: dict[str, Any] = {}
    if config.tls_cert:
        kwargs = {"ssl_certfile": str(config.tls_cert), "ssl_keyfile": str(config.tls_key)}
    app = create_app(config)
    # h11 with a deadline for each request's header and body (uvicorn has none); the
    # controller reads the class's counters for diag and the metrics
    http = deadline_protocol(header_timeout_s=config.header_timeout_s,
                             body_timeout_s=config.body_timeout_s,
                             max_pending_headers=config.max_pending_headers)
    app.state.controller.run.http_protocol = http
    uv_config = uvicorn.Config(
        start_errors_in_one_line(edge_fast_path(app), app.state.controller),
        host=config.host,
        port=config.port,
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        http=http,
        ws=LeanWebSocketProtocol,  # uvicorn's websockets-sansio, see wsproto.py
        ws_max_size=config.max_frame_bytes,
        ws_per_message_deflate=False,  # node sessions stay small
        ws_ping_interval=None,  # liveness is the protocol's heartbeat, not WS pings
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        backlog=config.listen_backlog,  # a reconnect storm arrives all at once
        **kwargs,
    )
    return _Server(uv_config, config, app.state.controller)


def raise_file_limit() -> int:
    """Lift this process's soft RLIMIT_NOFILE to its hard limit and return it: every
    connection is a file descriptor, and the usual soft limit (1,024) is reached by a
    thousand stalled sockets long before memory or CPU is."""
    try:
        import resource
    except ImportError:  # not on POSIX: nothing to raise
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the open-file limit",
                           extra={"soft": soft, "hard": hard, "error": str(exc)})
            return soft
        logger.info("open-file limit raised", extra={"from": soft, "to": hard})
        return hard
    logger.info("open-file limit", extra={"soft": soft, "hard": hard})
    return soft


def serve(config: ControllerConfig) -> int:
    """Serve until SIGTERM/SIGINT (uvicorn handles both gracefully); exit code."""
    recorder.set_role("controller")  # names this process's history file (soak)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    raise_file_limit()
    (config.data_dir / "controller.url").unlink(missing_ok=True)
    server = build_server(config)
    try:
        server.run()
    except SystemExit:  # uvicorn's exit on a failed lifespan start (its status 3)
        if server.controller.run.start_error is None:
            raise
    if server.controller.run.start_error is not None:
        return 1  # said in one line by the lifespan (start_errors_in_one_line)
    if server.url is None:
        logger.error("controller did not start; see the messages above",
                     extra={"port": config.port})
        return 1
    return 0
