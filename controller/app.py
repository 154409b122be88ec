"""Controller wiring: the :class:`Controller` (services and their lifetimes) and the Starlette
app that exposes it (edge gateway, /ws hub, REST API, /metrics)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from tether.common import __version__
from tether.common.sqlitedb import Database
from tether.protocol.liveness import Liveness, liveness

from .api import routes as api
from .browser import browser_endpoint
from .config import ControllerConfig
from .gateway import EdgeConnection, edge_endpoint, edge_session
from .services.admission import Admission, HelloGate
from .services.events import EventHub
from .services.monitor import MonitorStore
from .services.registry import SessionRegistry
from .store.controller_store import ControllerStore
from .store.records import LogChunk, NodeRecord
from .store.schema import MIGRATIONS
from .views import iso, log_item

if TYPE_CHECKING:
    from tether.common.http_deadlines import DeadlineH11Protocol

logger = logging.getLogger(__name__)


class Controller:
    """Owns the store, the session registry, the event hub and the sweeper task."""

    def __init__(self, config: ControllerConfig) -> None:
        self.config = config
        self.db = Database(config.db_path, migrations=MIGRATIONS,
                           durability=config.durability)
        self.store = ControllerStore(
            self.db, quotas=config.store_quotas,
            max_dead_letters_per_node=config.max_dead_letters_per_node)
        self.registry = SessionRegistry()
        self.hub = EventHub()
        self.monitor = MonitorStore(max_bytes_per_node=config.max_monitor_bytes_per_node,
                                    max_bytes_total=config.max_monitor_bytes_total)
        self.connections: set[EdgeConnection] = set()
        self.admission = Admission(slots=config.max_concurrent_handshakes,
                                   max_waiting=config.max_waiting_handshakes,
                                   max_wait_s=config.max_handshake_wait_s,
                                   hello=HelloGate(
                                       timeout_s=config.handshake_timeout_s,
                                       min_timeout_s=config.min_hello_timeout_s,
                                       pressure_at=config.hello_pressure_at,
                                       max_per_address=config.max_prehello_per_address,
                                       max_waiting=config.max_prehello))
        # the HTTP protocol class serving this controller (server.py), for its counters
        self.http_protocol: type[DeadlineH11Protocol] | None = None
        self.stopping = False  # set first thing on shutdown: new edge sessions get 1001
        self.loop_lag_ms = 0.0
        self.loop_lag_max_ms = 0.0
        self.controller_id = ""
        self.started_at = time.time()
        self._sweeper: asyncio.Task[None] | None = None
        # node_id -> (monotonic close time, closed by goodbye): nodes that are stale now and
        # will turn offline after offline_after_s (for pushing the transition).
        self._recently_closed: dict[str, tuple[float, bool]] = {}

    async def start(self) -> None:
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        await self.db.open()
        self.controller_id = await self.store.controller_id()
        await self._ensure_admin_token()
        orphans = await self.store.close_orphan_sessions()
        if orphans:
            logger.info("closed sessions left open by the previous run",
                        extra={"count": orphans})
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="liveness-sweeper")
        logger.info("controller started", extra={"controller_id": self.controller_id,
                                                 "data_dir": str(self.config.data_dir)})

    async def stop(self) -> None:
        """Close every edge session with 1001, stop the sweeper, close the store."""
        self.stopping = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.close_sessions()
        await self.db.close()

    async def close_sessions(self) -> None:
        """Close every edge session with 1001 and wait (5 s at most) until each has
        recorded its end."""
        for conn in list(self.connections):
            await conn.shutdown()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                while self.connections:
                    await asyncio.sleep(0.01)

    async def _ensure_admin_token(self) -> None:
        path = self.config.admin_token_path
        current = path.read_text().strip() if path.exists() else None
        token = await self.store.ensure_admin_token(current or None)
        if token is not None:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(token + "\n")
            os.chmod(path, 0o600)
            logger.info("admin token written", extra={"path": str(path)})

    # -- events ---------------------------------------------------------------------------

    def node_changed(self, node_id: str, kind: str, data: dict[str, Any]) -> None:
        if kind == "session.closed":
            goodbye = data.get("reason") == "goodbye"
            self._recently_closed.pop(node_id, None)  # keep the dict in closing order
            self._recently_closed[node_id] = (time.monotonic(), goodbye)
        elif kind == "session.opened":
            self._recently_closed.pop(node_id, None)
        payload = {"node_id": node_id, **data, "liveness": self.live_liveness(node_id)}
        self.hub.publish("nodes", kind, payload)
        self.hub.publish(f"node:{node_id}", kind, payload)

    def command_changed(self, command_id: str, state: str, node_id: str) -> None:
        data = {"command_id": command_id, "node_id": node_id, "state": state}
        self.hub.publish(f"command:{command_id}", "command.updated", data)
        self.hub.publish(f"commands:{node_id}", "command.updated", data)

    def log_appended(self, command_id: str, row: LogChunk) -> None:
        item = log_item(row)
        self.hub.publish(f"logs:{command_id}", "log.chunk", item)  # sized by the hub

    def live_liveness(self, node_id: str) -> str:
        conn = self.registry.get(node_id)
        th = self.config.thresholds
        if conn is not None and isinstance(conn, EdgeConnection):
            return liveness(session_open=True,
                            last_frame_age_s=time.monotonic() - conn.last_frame_mono,
                            runtime_state=conn.runtime.get("state"), closed_age_s=None,
                            closed_by_goodbye=False, thresholds=th).value
        closed = self._recently_closed.get(node_id)
        if closed is None:
            return Liveness.OFFLINE.value
        return liveness(session_open=False, last_frame_age_s=None, runtime_state=None,
                        closed_age_s=time.monotonic() - closed[0], closed_by_goodbye=closed[1],
                        thresholds=th).value

    # -- views ----------------------------------------------------------------------------

    def node_view(self, row: NodeRecord) -> dict[str, Any]:
        """The API shape of a node: its stored row joined with its live session, if any.
        Total: the record's JSON was decoded by the store (never raises, JSON-safe), and
        the live values come from typed bodies."""
        node_id = row.node_id
        conn = self.registry.get(node_id)
        th = self.config.thresholds
        now = time.time()
        session = None
        last_seen = row.last_seen_at
        runtime = {"state": row.runtime_state, "version": row.runtime_version}
        transport: dict[str, Any] | None = None
        resources: dict[str, Any] = {}
        if isinstance(conn, EdgeConnection) and conn.session_id is not None:
            age = time.monotonic() - conn.last_frame_mono
            last_seen = now - age
            runtime = dict(conn.runtime)
            live = liveness(session_open=True, last_frame_age_s=age,
                            runtime_state=runtime.get("state"), closed_age_s=None,
                            closed_by_goodbye=False, thresholds=th)
            session = {"session_id": conn.session_id,
                       "opened_at": iso(now - (time.monotonic() - conn.opened_mono)),
                       "remote": conn.remote, "resumed": conn.resumed}
            transport = {"sidecar": conn.sidecar, "outbox": conn.outbox,
                         "rtt_ms": conn.transport.get("rtt_ms"),
                         "reconnects": conn.transport.get("reconnects"),
                         "clock_offset_ms": conn.transport.get("clock_offset_ms"),
                         "logs_dropped_total": conn.logs_dropped_total}
            resources = conn.resources
        else:
            # Without a session nobody knows the runtime's state: the stored one is only
            # what it was when the session ended.
            runtime = {"state": "unknown", "version": row.runtime_version,
                       "last_state": row.runtime_state}
            closed_at = row.closed_at
            live = liveness(session_open=False, last_frame_age_s=None, runtime_state=None,
                            closed_age_s=None if closed_at is None else now - closed_at,
                            closed_by_goodbye=bool(row.closed_by_goodbye), thresholds=th)
        return {
            "node_id": node_id,
            "labels": row.labels,
            "enabled": bool(row.enabled),
            "liveness": live.value,
            "session": session,
            "runtime": runtime,
            "transport": transport,
            "resources": resources,
            "last_seen_at": iso(last_seen),
            "capabilities": row.capabilities,
            "policy": row.policy,
            "apps": row.apps,
            "enrolled_at": iso(row.created_at),
        }

    # -- sweeper ---------------------------------------------------------------------------

    async def _sweep_loop(self) -> None:
        """Expires overdue queued commands, closes live sessions silent past
        stale_after_s (4408), persists last-seen times, pushes stale -> offline
        transitions."""
        touch_every = max(1, round(self.config.touch_interval_s / self.config.sweep_interval_s))
        hourly = max(1, round(3600 / self.config.sweep_interval_s))
        tick = 0
        while True:
            slept_from = time.monotonic()
            await asyncio.sleep(self.config.sweep_interval_s)
            # How late the loop woke us: the event loop's lag, as the sweeper sees it.
            lag_ms = max(0.0, (time.monotonic() - slept_from
                               - self.config.sweep_interval_s) * 1000)
            self.loop_lag_ms = round(lag_ms, 3)
            self.loop_lag_max_ms = max(self.loop_lag_max_ms, self.loop_lag_ms)
            tick += 1
            try:
                for command_id in await self.store.expire_due():
                    self.hub.publish(f"command:{command_id}", "command.updated",
                                     {"command_id": command_id, "state": "expired"})
                now_mono = time.monotonic()
                for conn in self.connections:
                    conn.expire_if_idle(now_mono)
                offline_after = self.config.thresholds.offline_after_s
                expired = []
                for node_id, (closed_mono, _) in self._recently_closed.items():
                    if now_mono - closed_mono < offline_after:
                        break  # in closing order: the rest closed later
                    expired.append(node_id)
                for node_id in expired:
                    del self._recently_closed[node_id]
                    self.hub.publish("nodes", "liveness.changed",
                                     {"node_id": node_id, "liveness": "offline"})
                if tick % hourly == 0:
                    await self.store.prune_idempotency_keys()
                if tick % touch_every == 0:
                    await self.store.touch_nodes(self._changed_since_touch(now_mono))
            except Exception:
                logger.exception("sweep failed; will retry")


    def _changed_since_touch(self, now_mono: float) -> dict[str, tuple[float, str | None]]:
        """Last-seen time and runtime state of each live session that heard a frame or
        changed state since its last touch: an idle fleet costs no writes, and a busy one
        at most one row per node per touch interval."""
        now = time.time()
        seen: dict[str, tuple[float, str | None]] = {}
        for c in self.connections:
            if c.session_id is None:
                continue
            state = c.runtime.get("state")
            if c.last_frame_mono != c.touched_frame_mono or state != c.touched_state:
                seen[c.node_id] = (now - (now_mono - c.last_frame_mono), state)
                c.touched_frame_mono, c.touched_state = c.last_frame_mono, state
        return seen


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    controller: Controller = app.state.controller
    await controller.start()
    try:
        yield
    finally:
        await controller.stop()


EDGE_PATH = "/v1/edge/connect"


def edge_fast_path(app: Starlette) -> ASGIApp:
    """``app`` with edge sessions dispatched straight to :func:`edge_session`, past
    Starlette's middleware and router: each idle session otherwise keeps about ten more
    suspended coroutine frames and their closures alive (~3 KiB, at 10,000 sessions ~30 MiB).
    Everything else, lifespan included, goes to ``app``."""
    controller: Controller = app.state.controller

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == EDGE_PATH:
            await edge_session(WebSocket(scope, receive, send), controller)
        else:
            await app(scope, receive, send)

    return asgi


def create_app(config: ControllerConfig) -> Starlette:
    routes = [
        WebSocketRoute(EDGE_PATH, edge_endpoint),
        WebSocketRoute("/ws", browser_endpoint),
        Route("/v1/edge/enroll", api.enroll, methods=["POST"]),
        *api.ROUTES,
    ]
    app = Starlette(routes=routes, lifespan=_lifespan,
                    exception_handlers=api.EXCEPTION_HANDLERS)
    app.state.controller = Controller(config)
    app.state.version = __version__
    return app
