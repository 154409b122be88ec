"""The edge gateway: one :class:`EdgeConnection` per ``/v1/edge/connect`` WebSocket.

Where a frame enters (``_read_loop``), where it is persisted (``_apply_loop`` ->
``ControllerStore.apply_evt``) and where it is acked (right after that commit) are all here.

:class:`EdgeConnection` is the I/O shell of a sans-I/O core,
:class:`~tether.protocol.edge_session.EdgeSession`: the core steps the handshake table for
every event (each frame, the deadline, the close) and keeps both streams' cursors; the shell
reads and writes the socket, runs the timers and tasks, calls the store, and executes what
the core returns. Steady-state frames go to the handler registered for their type
(:func:`handles`).

Rule 1: a class A ``evt`` frame is acked only after the commit that holds its effect and the
cursor. Rule 2: once fenced (superseded or closing), nothing this connection received is
applied. Rule 3: every task of a connection lives in its TaskGroup and ends with it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from starlette.types import Message
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from tether.common import failpoints
from tether.protocol.classes import CMD_STREAM, EVT_STREAM, FRAME_STREAM, delivery_class
from tether.protocol.codec import (
    BATCH_TYPE,
    MAX_BATCH_FRAMES,
    MSGPACK_SUBPROTOCOL,
    decode_msgpack,
    encode_msgpack,
    unbatch,
)
from tether.protocol.edge_session import HANDLE, Close, EdgeSession, End
from tether.protocol.errors import (
    BadFrame,
    CloseCode,
    FrameTooLarge,
    RemoteProtocolError,
    StoreError,
    TetherError,
    close_reason,
)
from tether.protocol.excerpt import excerpt
from tether.protocol.frames import (
    PROTOCOL_VERSION,
    Ack,
    Body,
    BundleStatusReport,
    Challenge,
    ErrorBody,
    Frame,
    Heartbeat,
    HeartbeatAck,
    Hello,
    IoAck,
    IoOutput,
    LogChunk,
    MonitorPacket,
    NodeEvent,
    NodeResources,
    RuntimeState,
    Welcome,
    parse_body,
    valid_node_id,
)
from tether.protocol.handshake import Action
from tether.protocol.health import HEALTH_KIND
from tether.protocol.rtc import NodeRtcReport
from tether.protocol.signing import verify_hello
from tether.protocol.streams import Verdict
from tether.tools.soak import recorder

from .config import ControllerConfig
from .services.admission import Admission
from .services.bus import EventBus
from .services.events import data_size
from .services.metrics import EdgeCounters, code_label
from .services.monitor import MonitorStore
from .services.presence import SessionSnapshot
from .services.registry import SessionRegistry
from .services.router import Router
from .services.rtc import NODE_TYPES, RtcService
from .services.rtc_state import SessionRoutes
from .services.topics import command_changed, io_published, log_appended
from .store.controller_store import ControllerStore, Fenced, Poisoned
from .store.rollouts import bundle_entry

logger = logging.getLogger(__name__)

# Log chunks per session awaiting storage, in count and bytes. Overflow policy: the reader
# waits (stops reading the socket, as for pending evt frames) until the apply task takes
# them, so the node's pipe readers wait in turn and an attached operator loses nothing.
# Drops happen only at the store's per-command cap, where they are counted.
MAX_LOG_QUEUE = 1024
MAX_LOG_QUEUE_BYTES = 1 << 20
SEND_TIMEOUT_S = 10.0
# One close reason for an unknown node id and for a signature that does not verify (4401).
HELLO_REFUSED = ("hello refused: node id not enrolled with the key that signed it; check the "
                 "node id or enroll again")
# A valid public key (RFC 8032 §7.1 test 1) to verify against when the id is unknown, so
# that both refusals take about the same time; the refusal never depends on its result.
_DUMMY_KEY = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
MAX_PENDING_ERRORS = 64


class _Close(Exception):
    """End the connection with ``code``; raised anywhere in a connection's tasks."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _store_failed(exc: StoreError, where: str, **context: object) -> _Close:
    """The close for a store failure, with the error table's code: ``unavailable`` (the
    store cannot be reached: PostgreSQL down or failing over) is 1013, for the node to back
    off and retry, and one warning line; anything else stays a logged, traced 1011."""
    if exc.code == "unavailable":
        logger.warning(f"{where} ended: the store is unavailable",
                       extra={**context, "detail": exc.message})
        return _Close(exc.close_code, "store unavailable")
    logger.error(f"{where} failed", exc_info=exc, extra=context)
    return _Close(exc.close_code, "internal error")


class _Timeout(_Close):
    """The phase's deadline ran out: the core steps TIMEOUT (close 4408)."""

    def __init__(self, reason: str) -> None:
        super().__init__(CloseCode.TIMEOUT, reason)


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True, eq=False)
class EdgeServices:
    """What every edge session uses, and nothing else (built once, by app.py).

    ``node_changed(node_id, kind, data)`` records and pushes a session's open and close and
    its runtime's changes (services/liveness.py); ``stopping()`` is true once the controller
    began to stop (new sessions get 1001); ``controller_id()`` is this controller's id,
    known once the store is open."""

    store: ControllerStore
    registry: SessionRegistry
    bus: EventBus
    monitor: MonitorStore
    admission: Admission
    config: ControllerConfig
    node_changed: Callable[[str, str, dict[str, Any]], None]
    stopping: Callable[[], bool]
    controller_id: Callable[[], str]
    replica_id: str | None = None  # this replica's, recorded with each session it opens
    # tells the replica whose session a hello here superseded to close it (4409)
    router: Router | None = None
    # frames, sessions and handshakes counted for /metrics (services/metrics.py)
    counters: EdgeCounters = field(default_factory=EdgeCounters)
    rtc: RtcService | None = None  # the media plane's signalling relay (services/rtc.py)
    # wakes this process's rollout engine after a bundle.status (services/rollouts.py)
    bundle_reported: Callable[[], None] = lambda: None


class EdgeGateway:
    """The edge connections of this process, handshaking or live (the sweeper, diag and the
    shutdown walk them)."""

    def __init__(self, services: EdgeServices) -> None:
        self.services = services
        self.connections: set[EdgeConnection] = set()

    def pending_bytes(self) -> tuple[int, int]:
        """Bytes awaiting the store over all sessions: (evt frames, log chunks)."""
        conns = self.connections
        return (sum(c.pending_evt_bytes for c in conns),
                sum(c.pending_log_bytes for c in conns))

    def outbox_frames(self) -> tuple[int, int]:
        """Over this process's sessions: (class A frames the nodes report unacked in their
        outboxes, as of their last heartbeat; downlink frames sent and not yet acked)."""
        conns = self.connections
        return (sum(c.outbox.get("depth") or 0 for c in conns),
                sum(c.core.cmd.sent - c.core.cmd.acked for c in conns))

    async def close_sessions(self) -> None:
        """Close every edge session with 1001 and wait (5 s at most) until each has
        recorded its end."""
        for conn in list(self.connections):
            await conn.shutdown()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                while self.connections:
                    await asyncio.sleep(0.01)


async def edge_endpoint(websocket: WebSocket) -> None:
    """Starlette endpoint for ``/v1/edge/connect`` (the server reaches :func:`edge_session`
    without Starlette's routing; this route serves an app mounted some other way)."""
    await edge_session(websocket, websocket.app.state.edge)


async def edge_session(websocket: WebSocket, gateway: EdgeGateway) -> None:
    """One edge connection, from the sub-protocol check to the end of its session."""
    offered = websocket.scope.get("subprotocols") or []
    if MSGPACK_SUBPROTOCOL not in offered:
        await websocket.accept()
        await websocket.close(CloseCode.UNSUPPORTED_PROTOCOL,
                              f"offer sub-protocol {MSGPACK_SUBPROTOCOL}")
        return
    await websocket.accept(subprotocol=MSGPACK_SUBPROTOCOL)
    if gateway.services.stopping():
        await websocket.close(CloseCode.GOING_AWAY, "controller going away")
        return
    conn = EdgeConnection(websocket, gateway.services)
    gateway.connections.add(conn)
    try:
        await conn.run()
    finally:
        gateway.connections.discard(conn)


_Handler = Callable[["EdgeConnection", Frame], Awaitable[None]]
_NO_RTC: Mapping[str, Any] = MappingProxyType({})  # shared: no memory per session
# Frame type -> its handler, filled by @handles on EdgeConnection's methods: a new frame type
# is one registration. _on_frame looks a type up once; a type nobody registered gets an
# error frame (_unhandled).
_HANDLERS: dict[str, _Handler] = {}


def handles(*frame_types: str) -> Callable[[_Handler], _Handler]:
    """Register the decorated method as the handler of ``frame_types`` (each type at most
    once: a second registration raises ValueError at import)."""
    def register(handler: _Handler) -> _Handler:
        for frame_type in frame_types:
            if frame_type in _HANDLERS:
                raise ValueError(f"frame type {frame_type!r} already has a handler")
            _HANDLERS[frame_type] = handler
        return handler
    return register


async def _unhandled(conn: EdgeConnection, frame: Frame) -> None:
    """A steady-state frame of a type with no handler: an error frame, and the session
    carries on (a newer node may speak types this controller does not)."""
    t = frame.t
    code = "unsupported_type" if delivery_class(t) is not None else "unknown_type"
    await conn._send(ErrorBody(code=code, message=f"frame type {t!r} is not handled by "
                               "this controller").frame(re=frame.id))



def hello_expirer(deadline: asyncio.Timeout) -> Callable[[], None]:
    """What the hello gate calls to cut a connection's wait short: its deadline, moved to
    now. A wait whose own allowance has just run out (its timeout expiring, its task not yet
    resumed) is late already and is left alone: rescheduling an expiring timeout raises,
    and that would fail the connection whose arrival made the gate cut (seen under load,
    with thousands of nodes dialling through one balancer address)."""
    def expire() -> None:
        if not deadline.expired():
            deadline.reschedule(asyncio.get_running_loop().time())
    return expire

class EdgeConnection:
    """One node's edge connection: handshake, then its session until the socket closes.

    Slotted: 10,000 idle sessions are 10,000 of these, and a ``__dict__`` of ~40 entries
    costs about 2 KiB each."""

    __slots__ = ("_apply_task", "_downlink_again", "_downlink_task", "_evt_first_mono", "_hello",
                 "_idle_deadline", "_msg_bytes", "_note_task",
                 "_pending_errors", "_remote_code", "_room", "_send_lock", "_sending",
                 "_superseded", "_tg",
                 "closing", "core",
                 "fenced",
                 "last_frame_mono", "logs_dropped_total", "max_frame", "node_id",
                 "opened_mono", "outbox", "pending_evt", "pending_evt_bytes", "pending_log_bytes",
                 "pending_logs",
                 "remote", "resources",
                 "resumed", "rtc", "rtc_report", "runtime", "session_id", "sidecar", "svc",
                 "transport", "update", "ws")

    def __init__(self, ws: WebSocket, services: EdgeServices) -> None:
        self.ws = ws
        self.svc = services
        cfg = services.config
        self.max_frame = cfg.max_frame_bytes
        self.node_id: str = ""
        self.session_id: str | None = None
        self.remote = f"{ws.client.host}:{ws.client.port}" if ws.client else "unknown"
        # the protocol state (handshake table, evt and cmd streams): this class is its shell
        self.core = EdgeSession(cmd_window=cfg.cmd_window)
        self.fenced = False
        self.closing: _Close | None = None
        self.opened_mono = time.monotonic()
        self.last_frame_mono = self.opened_mono
        self.runtime: dict[str, Any] = {"state": "attached", "version": None}
        self.sidecar: dict[str, Any] = {}
        self.resources: dict[str, Any] = {}
        self.rtc_report: Mapping[str, Any] = _NO_RTC
        self.outbox: dict[str, Any] = {}
        self.transport: dict[str, Any] = {}
        # heartbeat `update`: a runtime self-update in progress (its stage), else empty
        self.update: Mapping[str, Any] = {}
        self.resumed = False
        # parsed once, on arrival; a body that broke the value rules is Poisoned
        self.pending_evt: list[tuple[Frame, Body | Poisoned]] = []
        # Their bytes as they arrived on the wire (a batch's bytes spread over its frames):
        # the read loop parks past max_pending_evt_frames or max_pending_evt_bytes.
        self.pending_evt_bytes = 0
        self._evt_first_mono = 0.0  # when the first of pending_evt arrived (apply latency)
        self._msg_bytes = 0  # the size of the WebSocket message being handled, per frame
        # class C: stored by the apply task before any evt frame that came after them
        self.pending_logs: list[LogChunk] = []
        self.pending_log_bytes = 0
        self.logs_dropped_total = 0
        self._send_lock = asyncio.Lock()
        self._remote_code: int | None = None
        self._idle_deadline: asyncio.Timeout | None = None  # set while the read loop runs
        self._sending = False  # a send is waiting on the transport
        # The apply and downlink tasks exist only while they have work: an idle session is
        # its read loop alone. Both run in the session's task group (self._tg), which
        # cancels and awaits them when the session ends.
        self._tg: asyncio.TaskGroup | None = None
        self._apply_task: asyncio.Task[None] | None = None
        self._downlink_task: asyncio.Task[None] | None = None
        self._downlink_again = False  # work arrived for the downlink since its last pass
        self._note_task: asyncio.Task[None] | None = None  # records the cmd sent mark
        self._room: asyncio.Future[None] | None = None  # the reader waits here when full
        # error frames answering bad non-sequenced frames, sent by the downlink task
        self._pending_errors: list[Frame] = []
        self._hello: Frame | None = None  # read before the admission slot, see run()
        # the session another replica held, fenced by this one's open (told in run())
        self._superseded: str | None = None
        self.rtc: SessionRoutes | None = None  # whom the node may address, from its first rtc.*

    # -- lifecycle -----------------------------------------------------------------------

    async def run(self) -> None:
        """Serve one edge connection. The challenge goes out at once (PROTOCOL.md §4: within
        1 s of accept); the hello is awaited in the admission's hello gate, which costs no
        slot (a silent socket holds nothing a node needs); the rest of the handshake runs
        under an admission slot, released exactly once. Past the admission limits the node
        is told when to come back (4429)."""
        adm = self.svc.admission
        try:
            nonce = await self._challenge()
            if adm.saturated():  # the hello could not be served anyway: say so now
                adm.refuse()
                raise _Close(CloseCode.RATE_LIMITED, f"overloaded; retry_after={adm.retry_after()}")
            self._hello = await self._await_hello()
            if self._hello is None:
                raise _Close(CloseCode.NORMAL_CLOSURE, "closed before hello")
        except _Close as exc:
            await self._finish(exc)
            return
        if not await self.svc.admission.acquire():
            retry_after = self.svc.admission.retry_after()
            await self._finish(_Close(CloseCode.RATE_LIMITED,
                                      f"overloaded; retry_after={retry_after}"))
            return
        completed = False
        try:
            await self._handshake(nonce)
            completed = True
        except _Close as exc:
            await self._finish(exc)
            return
        except StoreError as exc:
            await self._finish(_store_failed(exc, "edge handshake", remote=self.remote))
            return
        except Exception:
            logger.exception("edge handshake failed", extra={"remote": self.remote})
            await self._finish(_Close(CloseCode.INTERNAL_ERROR, "internal error"))
            return
        finally:
            self.svc.admission.release(completed=completed)
        close: _Close | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                try:
                    if self._superseded is not None:
                        tg.create_task(self._supersede_elsewhere(self._superseded),
                                       name="edge-supersede")
                        self._superseded = None
                    self.wake_downlink()
                    await self._read_loop()
                finally:
                    self._tg = None
                    for task in (self._apply_task, self._downlink_task, self._note_task):
                        if task is not None:
                            task.cancel()
        except* _Close as group:
            first = group.exceptions[0]
            close = first if isinstance(first, _Close) else None
        except* Fenced:
            close = _Close(CloseCode.SUPERSEDED, "superseded")
        except* StoreError as group:
            first_error = group.exceptions[0]
            assert isinstance(first_error, StoreError)
            close = _store_failed(first_error, "edge session", node_id=self.node_id,
                                  session_id=self.session_id)
        except* Exception as group:
            logger.error("edge session failed", exc_info=group.exceptions[0],
                         extra={"node_id": self.node_id, "session_id": self.session_id})
            close = _Close(CloseCode.INTERNAL_ERROR, "internal error")
        await self._finish(close or self.closing)

    async def _finish(self, close: _Close | None) -> None:
        """The connection ends (called once): the core steps the ending, TIMEOUT for a
        deadline and CLOSE otherwise (nothing more after a goodbye, which ended it already),
        and this executes the effects it returns: the close, then the end's record."""
        self.fenced = True
        core = self.core
        if close is None:
            core.closed(self._remote_code, "connection closed by node", by_peer=True)
        elif isinstance(close, _Timeout):
            core.timeout(close.reason)
        else:
            core.closed(close.code, close.reason, by_peer=False)
        effects = core.take_effects()
        counters = self.svc.counters
        for effect in effects:
            if isinstance(effect, Close):
                await self._close_ws(effect.code, effect.reason)
                if self.session_id is None and effect.code != CloseCode.NORMAL_CLOSURE:
                    # refused before a welcome (1000: the node left before its hello)
                    counters.handshakes_refused[code_label(effect.code)] += 1
            elif self.session_id is not None:
                counters.sessions_closed[code_label(effect.code)] += 1
        if self.node_id:
            self.svc.registry.release(self.node_id, self)
        for effect in effects:
            if isinstance(effect, End):
                await self._record_end(effect)

    async def _record_end(self, end: End) -> None:
        """Record the session's end (the table's END): in the store unless a newer session
        took the node (its hello closed this one in the history), then pushed and logged."""
        if self.session_id is None:
            return
        code, reason = end.code, end.reason
        if code != CloseCode.SUPERSEDED:
            with contextlib.suppress(TetherError):
                sent = self.core.cmd_sent_to_store()
                if sent is not None:  # the sent mark, if its task was cut
                    await self.svc.store.note_cmd_sent(self.node_id, self.session_id,
                                                       self.core.cmd_epoch, sent)
                await self.svc.store.close_session(node_id=self.node_id,
                                                   session_id=self.session_id,
                                                   close_code=code, reason=reason,
                                                   goodbye=end.goodbye)
                if recorder.ARMED:  # the store's fence from here on (a superseded session
                    # is fenced by the newer one's claim, which records ``claimed``)
                    recorder.record("fenced", node=self.node_id, session=self.session_id,
                                    replica=self.svc.replica_id)
        self.svc.node_changed(self.node_id, "session.closed",
                              {"session_id": self.session_id, "close_code": code,
                               "reason": reason})
        logger.info("edge session closed", extra={"node_id": self.node_id,
                                                  "session_id": self.session_id,
                                                  "code": code, "reason": reason})

    async def supersede(self) -> None:
        """A newer session took this node: fence, end the core's session (no frame read
        after this is handled), then close with 4409; ``_finish`` records the end."""
        self.fenced = True
        self.core.closed(CloseCode.SUPERSEDED, "superseded by a newer session", by_peer=False)
        self.closing = _Close(CloseCode.SUPERSEDED, "superseded by a newer session")
        await self._close_ws(CloseCode.SUPERSEDED, "superseded by a newer session")

    async def _supersede_elsewhere(self, session_id: str) -> None:
        """This session's open fenced ``session_id``, held by another replica, in the store:
        tell that replica to close it with 4409 (services/router.py), off the handshake so
        a slow or partitioned replica never delays a welcome. Best effort: should the word
        not arrive, the old session's next class A write is refused by the store's fence
        (Fenced), which ends it with 4409 too. Never raises."""
        router = self.svc.router
        if router is None:
            return
        try:
            done = await router.supersede(self.node_id, session_id)
        except Exception:
            logger.warning("telling another replica of a superseded session failed",
                           exc_info=True, extra={"node_id": self.node_id,
                                                 "superseded": session_id})
            return
        logger.info("superseded a session held by another replica", extra={
            "node_id": self.node_id, "session_id": self.session_id,
            "superseded": session_id, "closed": done})

    async def disable(self) -> None:
        """The operator disabled this node: fence, end the core's session and close with
        4403; ``_finish`` records the end."""
        self.fenced = True
        self.core.closed(CloseCode.FORBIDDEN, "node disabled by operator", by_peer=False)
        self.closing = _Close(CloseCode.FORBIDDEN, "node disabled by operator")
        await self._close_ws(CloseCode.FORBIDDEN, "node disabled by operator")

    async def shutdown(self) -> None:
        """The controller is stopping: close with 1001 (the node reconnects with backoff)."""
        self.closing = _Close(CloseCode.GOING_AWAY, "controller going away")
        await self._close_ws(CloseCode.GOING_AWAY, "controller going away")

    async def send_ephemeral(self, frame: Frame) -> bool:
        """Send a class E frame (PROTOCOL.md §3; services/router.py checked its class) if
        this session is welcomed and not closing. False when it is not, or when the send
        failed or waited over SEND_TIMEOUT_S (the read loop ends the session then). Raises
        LocalProtocolError, sending nothing, for a frame over the session's cap."""
        if self.session_id is None or self.fenced or self.closing is not None:
            return False
        if frame.t.startswith("rtc.") and self.svc.rtc is not None:
            self.rtc = self.rtc or SessionRoutes()
            if not self.svc.rtc.delivering(self.rtc, frame):
                return True  # dropped and counted there (a relay frame past its window)
        data = encode_msgpack(frame, max_frame_bytes=self.max_frame)
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):
                await self._send_bytes(data)
        except (_Close, TimeoutError):
            return False
        self.svc.counters.frames_out[frame.t] += 1
        return True

    def snapshot(self) -> SessionSnapshot:
        """This session as a value (services/presence.py). Its mappings are the session's
        own, which it replaces and never changes in place."""
        mono = time.monotonic()
        return SessionSnapshot(
            node_id=self.node_id, session_id=self.session_id,
            last_frame_age_s=mono - self.last_frame_mono,
            opened_at=time.time() - (mono - self.opened_mono), runtime=self.runtime,
            remote=self.remote, resumed=self.resumed, max_frame=self.max_frame,
            sidecar=self.sidecar, outbox=self.outbox, transport=self.transport,
            resources=self.resources, logs_dropped_total=self.logs_dropped_total,
            rtc=self.rtc_report, update=self.update)

    def wake_downlink(self) -> None:
        """There may be downlink work (commands queued, acks to record, errors to send)."""
        self._downlink_again = True
        if self._tg is not None and (self._downlink_task is None or self._downlink_task.done()):
            self._downlink_task = self._tg.create_task(self._downlink_run(),
                                                       name="edge-downlink")

    def check_downlink(self, epoch: int, last_q: int) -> bool:
        """The periodic downlink check (services/sweeper.py), against a lost nudge: the
        store holds this node's downlink frames up to ``last_q`` in ``epoch``. Wakes the
        downlink if this session could send some and has not (welcomed, not ending, in
        that epoch, its runtime attached, room in the window); True if it did. Touches
        nothing but memory: the sweeper asked the store once for every session."""
        if self.session_id is None or self.fenced or self.closing is not None:
            return False
        core = self.core
        if (epoch != core.cmd_epoch or last_q <= core.cmd.sent or core.cmd.room() <= 0
                or self.runtime.get("state") != "attached"):
            return False
        self.wake_downlink()
        return True

    def _wake_apply(self) -> None:
        if self._tg is not None and (self._apply_task is None or self._apply_task.done()):
            self._apply_task = self._tg.create_task(self._apply_run(), name="edge-apply")

    async def _close_ws(self, code: int, reason: str) -> None:
        if self.ws.application_state == WebSocketState.DISCONNECTED:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(SEND_TIMEOUT_S):
                await self.ws.close(code, close_reason(reason))

    # -- I/O helpers ---------------------------------------------------------------------

    async def _send_bytes(self, data: bytes) -> None:
        """Send one message. No timer per send: a node that stops reading stalls a send
        (uvicorn waits for the transport to drain), then through the send lock the read
        loop, whose idle deadline closes the session with 4408 within ``stale_after_s``."""
        try:
            async with self._send_lock:
                self._sending = True
                try:
                    await self.ws.send_bytes(data)
                finally:
                    self._sending = False
        except (RuntimeError, OSError, WebSocketDisconnect) as exc:
            # WebSocketDisconnect: the node closed while it was still owed frames (errors,
            # acks, commands). Its own ending, not an internal error of this session.
            raise _Close(CloseCode.CONNECTION_LOST, f"send failed: {exc!r}") from None

    async def _send(self, frame: Frame) -> None:
        await self._send_bytes(encode_msgpack(frame, max_frame_bytes=self.max_frame))
        self.svc.counters.frames_out[frame.t] += 1

    async def _await_hello(self) -> Frame | None:
        """The first frame, an ``edge.hello`` by its type, or None when the peer closed
        first. Waits in the hello gate (services/admission.py): for its allowance, which
        tightens while many wait, and is cut short when newer connections from the same
        address, or in all, are past their caps. Raises _Close (4408 when silent, 4400 for
        a first frame that cannot be a hello)."""
        gate = self.svc.admission.hello
        address = self.ws.client.host if self.ws.client else ""
        loop = asyncio.get_running_loop()
        timed_out = True
        entered = loop.time()
        try:
            async with asyncio.timeout(None) as deadline:
                allowance_s = gate.enter(self, address, hello_expirer(deadline))
                deadline.reschedule(entered + allowance_s)
                msg = await self.ws.receive()
                timed_out = False
        except TimeoutError:
            # cut short by the gate (pressure, caps) or its own allowance: either way late
            raise _Timeout(f"no hello in time (waited {loop.time() - entered:.1f} s of at "
                           f"most {allowance_s:g} s)") from None
        finally:
            gate.leave(self, timed_out=timed_out)
        frame = self._frame_from(msg)
        if frame is None:
            return None
        try:
            actions = self.core.receive(frame.t)
        except RemoteProtocolError:
            actions = ()
        if Action.VERIFY_HELLO not in actions:  # anything but a hello first (handshake.py)
            raise _Close(CloseCode.PROTOCOL_ERROR, f"expected edge.hello first, got {frame.t!r}")
        self.svc.counters.frames_in[frame.t] += 1
        return frame

    def _frame_from(self, msg: Message) -> Frame | None:
        """Decode one ASGI receive event; None for the peer's close. Raises _Close."""
        if msg["type"] == "websocket.disconnect":
            self._remote_code = msg.get("code")
            return None
        data = msg.get("bytes")
        if data is None:
            raise _Close(CloseCode.PROTOCOL_ERROR,
                         f"text frames are not allowed on {MSGPACK_SUBPROTOCOL}")
        self._msg_bytes = len(data)
        try:
            frame = decode_msgpack(data, max_frame_bytes=self.max_frame)
        except FrameTooLarge as exc:
            raise _Close(CloseCode.FRAME_TOO_LARGE, exc.message) from None
        except BadFrame as exc:
            raise _Close(CloseCode.PROTOCOL_ERROR, exc.message) from None
        self.last_frame_mono = time.monotonic()
        return frame

    # -- handshake (PROTOCOL.md §4) --------------------------------------------------------

    async def _challenge(self) -> bytes:
        nonce = os.urandom(32)
        await self._send(Challenge(nonce=nonce, controller_id=self.svc.controller_id(),
                                   time_ms=_now_ms()).frame())
        return nonce

    async def _handshake(self, nonce: bytes) -> None:
        """The table's VERIFY_HELLO for the hello :meth:`_await_hello` read: welcome the
        node, or raise _Close (4400 unparsable, 4426 protocol, 4401 unknown id or bad
        signature, 4403 disabled, 4409 superseded while opening, 1001 stopping)."""
        cid = self.svc.controller_id()
        frame, self._hello = self._hello, None
        assert frame is not None  # run() does not come here without one
        try:
            hello = Hello.parse(frame)
        except BadFrame as exc:
            raise _Close(CloseCode.PROTOCOL_ERROR, exc.message) from None
        if hello.protocol != PROTOCOL_VERSION:
            raise _Close(CloseCode.UNSUPPORTED_PROTOCOL, f"protocol {hello.protocol} is not "
                         f"supported; this controller speaks {PROTOCOL_VERSION}")
        # An unknown id and a bad signature look the same on the wire (code, reason and
        # roughly the time taken: an unknown id is verified against a dummy key), so that an
        # unauthenticated peer cannot learn which ids are enrolled; the log says which.
        known = (await self.svc.store.node_key(hello.node_id)
                 if valid_node_id(hello.node_id) else None)
        public_key, enabled = known if known is not None else (_DUMMY_KEY, False)
        verified = verify_hello(public_key, hello.sig, nonce, cid, hello.node_id)
        if known is None or not verified:
            logger.info("edge hello refused", extra={
                "node_id": hello.node_id[:64], "remote": self.remote,
                "detail": "unknown node id" if known is None else
                "signature does not verify with the enrolled key (or the key is weak)"})
            raise _Close(CloseCode.AUTH_FAILED, HELLO_REFUSED)
        if not enabled:
            raise _Close(CloseCode.FORBIDDEN, "node is disabled")
        self.node_id = hello.node_id
        if hello.max_frame is not None:  # the session's one cap, both ways (§4 Frame cap)
            self.max_frame = min(self.max_frame, hello.max_frame)
        self.runtime = {"state": hello.runtime.state or "attached",
                        "version": hello.runtime.version}
        self.sidecar = hello.sidecar.to_map()
        old = self.svc.registry.claim(self.node_id, self)
        if old is not None:
            await old.supersede()
        if self.svc.stopping():
            raise _Close(CloseCode.GOING_AWAY, "controller going away")
        opened = await self.svc.store.open_session(
            node_id=self.node_id, remote=self.remote, previous_session=hello.session_id,
            evt_epoch=hello.epoch, cmd_acked=int(hello.acks.get("cmd", 0)),
            runtime=self.runtime, sidecar=self.sidecar, capabilities=hello.capabilities,
            labels=dict(hello.labels), max_frame=self.max_frame,
            replica_id=self.svc.replica_id)
        if recorder.ARMED:  # the ownership compare-and-set committed
            recorder.record("claimed", node=self.node_id, replica=self.svc.replica_id or "",
                            session=opened.session_id)
            # the cursor as of the claim, which fenced every older session: applies a
            # killed replica committed and never recorded
            recorder.record("recovered", node=self.node_id, stream="evt", epoch=hello.epoch,
                            cursor=opened.evt_applied)
            if opened.cmd_epoch_rotated:
                recorder.record("epoch", node=self.node_id, stream="cmd",
                                epoch=opened.cmd_epoch)
        if failpoints.ARMED:  # claimed; the old owner not yet told
            failpoints.hit("gateway.after_claim")
        if self.fenced:  # superseded while opening
            raise _Close(CloseCode.SUPERSEDED, "superseded by a newer session")
        if (opened.superseded_session is not None
                and opened.superseded_replica != self.svc.replica_id):
            self._superseded = opened.superseded_session  # held elsewhere: told in run()
        self.session_id = opened.session_id
        self.resumed = opened.resumed
        acked = 0 if opened.cmd_epoch_rotated else int(hello.acks.get("cmd", 0))
        self.core.welcomed(evt_epoch=hello.epoch, evt_applied=opened.evt_applied,
                           cmd_epoch=opened.cmd_epoch, cmd_acked=acked)
        th = self.svc.config.thresholds
        await self._send(Welcome(
            session_id=opened.session_id, resumed=opened.resumed, epoch=opened.cmd_epoch,
            acks={EVT_STREAM: opened.evt_applied, CMD_STREAM: acked},
            heartbeat_s=th.heartbeat_s,
            stale_after_s=th.stale_after_s, offline_after_s=th.offline_after_s,
            max_frame=self.max_frame, max_batch=MAX_BATCH_FRAMES).frame())
        self._downlink_again = True  # the steady state's first pass replays from the cursor
        self.svc.counters.sessions_opened += 1
        self.svc.counters.sessions_resumed += opened.resumed
        logger.info("edge session opened", extra={
            "node_id": self.node_id, "session_id": self.session_id, "resumed": self.resumed,
            "remote": self.remote})
        self.svc.node_changed(self.node_id, "session.opened",
                              {"session_id": self.session_id, "resumed": self.resumed})

    # -- steady state (PROTOCOL.md §5) ------------------------------------------------------

    async def _read_loop(self) -> None:
        """Reads until the peer closes. Silence past ``stale_after_s`` closes with 4408: the
        sweeper calls :meth:`expire_if_idle`, which fires this loop's one deadline (no timer
        per frame, none per session while frames flow). One coroutine, no helpers: an idle
        session is this frame waiting on its next message."""
        idle_s = self.svc.config.thresholds.stale_after_s
        try:
            async with asyncio.timeout(None) as self._idle_deadline:
                while True:
                    frame = self._frame_from(await self.ws.receive())
                    if frame is None or self.fenced:
                        return
                    if frame.t != BATCH_TYPE:
                        await self._on_frame(frame)
                    else:  # a transport envelope: its frames count as if each came alone
                        try:
                            frames = unbatch(frame, max_frames=MAX_BATCH_FRAMES)
                        except BadFrame as exc:
                            raise _Close(CloseCode.PROTOCOL_ERROR, exc.message) from None
                        # each frame is charged its share of the message (no re-encoding)
                        self._msg_bytes = self._msg_bytes // max(1, len(frames)) + 1
                        for each in frames:
                            if self.fenced:
                                return
                            await self._on_frame(each)
                        del frames, each
                    del frame  # an idle session does not keep its last frame while it waits
        except TimeoutError:
            if self._sending:
                raise _Timeout(f"node is not reading (a send waited over {idle_s:g} s)") from None
            raise _Timeout(f"no frame within {idle_s:g} s") from None
        finally:
            self._idle_deadline = None

    def expire_if_idle(self, now_mono: float) -> bool:
        """Close this session (4408) if no frame arrived for ``stale_after_s``; True if so."""
        if now_mono - self.last_frame_mono < self.svc.config.thresholds.stale_after_s:
            return False  # the common case first: run for every session every second
        deadline = self._idle_deadline
        if deadline is None or deadline.expired():
            return False
        deadline.reschedule(asyncio.get_running_loop().time())
        return True

    async def _on_frame(self, frame: Frame) -> None:
        """Step the core's table for ``frame`` and act on its answer: HANDLE dispatches to
        the handler registered for the type (one lookup, :func:`handles`); a goodbye lets
        the apply task commit and ack what was accepted, then ends the session (the core
        queued its close and end); a frame the table refuses closes with 4400."""
        try:
            actions = self.core.receive(frame.t)
        except RemoteProtocolError as exc:
            raise _Close(CloseCode.PROTOCOL_ERROR, exc.message) from None
        if actions is HANDLE:
            handler = _HANDLERS.get(frame.t)
            if handler is not None:  # the one count per frame (services/metrics.py)
                self.svc.counters.frames_in[frame.t] += 1
                await handler(self, frame)
            else:
                self.svc.counters.frames_in["other"] += 1
                await _unhandled(self, frame)
        elif Action.CLOSE_NORMAL in actions:
            self.svc.counters.frames_in[frame.t] += 1
            await self._flush_evt()
            raise _Close(CloseCode.NORMAL_CLOSURE, "goodbye")

    @handles("edge.heartbeat")
    async def _on_heartbeat(self, frame: Frame) -> None:
        self._check_cursors(frame)
        hb = self._parse_or_error(Heartbeat, frame)
        if hb is None:
            return
        if hb.runtime.state:
            self._set_runtime(hb.runtime.to_map())
        self.outbox = hb.outbox.to_map()
        transport = hb.transport.to_map()
        if transport:
            self.transport = transport
        update = hb.update.to_map()
        if update != self.update:  # shown as liveness `updating` (protocol/liveness.py)
            self.update = update
            self.svc.node_changed(self.node_id, "runtime.changed",
                                  {**self.runtime, "update": update or None})
        self._saw_cmd_ack(hb.acks.get(CMD_STREAM))
        await self._send(HeartbeatAck(time_ms=_now_ms(),
                                      acks={EVT_STREAM: self.core.evt.applied}).frame(re=frame.id))

    @handles("edge.ack")
    async def _on_ack(self, frame: Frame) -> None:
        self._saw_cmd_ack(self._check_cursors(frame).acks.get(CMD_STREAM))

    @handles("edge.resume")
    async def _on_resume(self, frame: Frame) -> None:
        """The node's runtime re-attached having applied up to its cursor: re-send after
        it (4400 for a cursor beyond what this session sent)."""
        try:
            self.core.on_resume(self._check_cursors(frame).acks.get(CMD_STREAM, 0))
        except RemoteProtocolError as exc:
            raise _Close(CloseCode.PROTOCOL_ERROR, exc.message) from None
        self.wake_downlink()

    @handles("edge.runtime")
    async def _on_runtime(self, frame: Frame) -> None:
        rt = self._parse_or_error(RuntimeState, frame)
        if rt is not None:
            self._set_runtime({"state": rt.state, "version": rt.version})

    @handles("log.chunk")
    async def _on_log_chunk(self, frame: Frame) -> None:
        chunk = self._parse_or_error(LogChunk, frame)
        if chunk is not None:
            self.pending_logs.append(chunk)
            self.pending_log_bytes += len(chunk.data)
            self._wake_apply()
            if len(self.pending_logs) >= MAX_LOG_QUEUE or \
                    self.pending_log_bytes >= MAX_LOG_QUEUE_BYTES:
                self._room = asyncio.get_running_loop().create_future()
                try:
                    await self._room  # backpressure: stop reading until they are taken
                finally:
                    self._room = None

    @handles("node.resources")
    async def _on_resources(self, frame: Frame) -> None:
        """Class B: latest wins, pushed to node:<id>."""
        resources = self._parse_or_error(NodeResources, frame)
        if resources is not None:
            self.resources = resources.to_body()
            self.svc.bus.publish(f"node:{self.node_id}", "resources.updated",
                                 {"node_id": self.node_id, "resources": self.resources})

    @handles("node.rtc")
    async def _on_rtc_report(self, frame: Frame) -> None:
        """Class B: the node's media plane (its peers and subflows), latest wins, pushed to
        node:<id>. Kept apart from readiness: nothing here changes the node's liveness."""
        report = self._parse_or_error(NodeRtcReport, frame)
        if report is not None:
            self.rtc_report = report.to_body()
            self.svc.bus.publish(f"node:{self.node_id}", "rtc.updated",
                                 {"node_id": self.node_id, "rtc": self.rtc_report})

    @handles("monitor.packet")
    async def _on_monitor_packet(self, frame: Frame) -> None:
        """Class C: kept in memory within byte budgets (oldest dropped), pushed to
        monitor:<id> charged at its size."""
        packet = self._parse_or_error(MonitorPacket, frame)
        if packet is not None:
            item = {"node_id": self.node_id, **packet.to_body()}
            size = data_size(item)
            self.svc.monitor.add(self.node_id, item, size=size)
            self.svc.bus.publish(f"monitor:{self.node_id}", "monitor.packet", item, size=size)

    @handles("io.output", "io.ack")
    async def _on_io(self, frame: Frame) -> None:
        """Class E, node -> operator: parsed once, then to the command's io topic, where
        the io endpoint (api/io.py) that relays the stream reads it on whichever replica
        (bytes as base64url: bus events are plain data). Nothing is kept here; the stream's
        own window bounds what is in flight (docs/protocol.md "Interactive io")."""
        body = self._parse_or_error(IoOutput if frame.t == "io.output" else IoAck, frame)
        if body is None:
            return
        data = body.to_body()
        if isinstance(body, IoOutput):
            data["data"] = base64.urlsafe_b64encode(body.data).rstrip(b"=").decode()
        io_published(self.svc.bus, self.node_id, frame.t, data,
                     size=len(body.data) * 4 // 3 + 128 if isinstance(body, IoOutput) else 128)

    @handles(*NODE_TYPES)
    async def _on_rtc(self, frame: Frame) -> None:
        """Class E, node -> a /ws client or another node: checked against what this
        session may address and relayed by services/rtc.py; a refusal is an error frame
        and the session carries on."""
        if self.svc.rtc is None:
            await _unhandled(self, frame)
            return
        self.rtc = self.rtc or SessionRoutes()
        refusal = await self.svc.rtc.from_node(self.node_id, self.rtc, frame)
        if refusal is not None:
            await self._send(ErrorBody(code=refusal[0], message=refusal[1]).frame(re=frame.id))

    @handles("error")
    async def _on_error(self, frame: Frame) -> None:
        """Never answered (two peers must not trade errors). A node's error about a
        ``/ws`` client's rtc frame goes back to that client when this session may
        address it (services/rtc.py ``error_from_node``); any other is logged."""
        if self.svc.rtc is not None and self.rtc is not None and \
                self.svc.rtc.error_from_node(self.node_id, self.rtc, frame):
            return
        logger.warning("node reported an error", extra={
            "node_id": self.node_id, "code": excerpt(frame.b.get("code"), 64),
            "detail": excerpt(frame.b.get("message"), 200)})

    # edge.challenge and edge.welcome never come here: the table refuses them (4400)
    @handles("cmd.deliver", "edge.heartbeat_ack")
    async def _on_downlink_frame(self, frame: Frame) -> None:
        raise _Close(CloseCode.PROTOCOL_ERROR, f"{frame.t!r} is a controller-to-node frame")

    @staticmethod
    def _check_cursors(frame: Frame) -> Ack:
        """The frame's ``acks``, or 4400: a cursor that is not a sequence number (negative,
        bool, float, 2^63 and above, too many streams) is outside anything this session
        sent, the same protocol error as an ack beyond it (docs/protocol.md §5), never a
        ``bad_frame`` the session carries on after."""
        acks = frame.b.get("acks")
        if acks is None and frame.t == "edge.heartbeat":  # optional there, required in
            acks = {}                                       # edge.ack and edge.resume
        try:
            return Ack.from_body({"acks": acks})
        except BadFrame as exc:
            raise _Close(CloseCode.PROTOCOL_ERROR, exc.message) from None

    def _parse_or_error(self, cls: Any, frame: Frame) -> Any:
        try:
            return cls.parse(frame)
        except BadFrame as exc:
            if len(self._pending_errors) < MAX_PENDING_ERRORS:  # past it, drop: the peer
                self._pending_errors.append(  # is not reading its errors anyway
                    ErrorBody(code="bad_frame", message=exc.message).frame(re=frame.id))
                self.wake_downlink()
            return None

    def _set_runtime(self, runtime: dict[str, Any]) -> None:
        state = str(runtime.get("state"))
        if state not in RuntimeState.STATES:
            return
        changed = state != self.runtime.get("state")
        self.runtime = {"state": state, "version": runtime.get("version")
                        or self.runtime.get("version")}
        if changed:
            self.svc.node_changed(self.node_id, "runtime.changed", dict(self.runtime))
            if state == "attached":
                self.wake_downlink()

    @handles(*(t for t, stream in FRAME_STREAM.items() if stream == EVT_STREAM))
    async def _on_evt(self, frame: Frame) -> None:
        """A class A frame on ``evt``. Without a stream and sequence it cannot be placed:
        4400. A body that breaks the value rules is a poison frame (docs/protocol.md §5):
        it takes its place in the stream as :class:`Poisoned`, is recorded as a dead letter
        instead of applied, and is acked like any other, so the stream moves on."""
        if frame.s != EVT_STREAM or frame.q is None:
            raise _Close(CloseCode.PROTOCOL_ERROR,
                         f"{frame.t!r} must travel on stream 'evt' with a sequence")
        verdict = self.core.evt.classify(frame.q)
        if verdict is Verdict.APPLY:
            if not self.pending_evt:  # the batch's first frame: its latency starts here
                self._evt_first_mono = self.last_frame_mono
            body: Body | Poisoned
            try:
                body = parse_body(frame)
            except BadFrame as exc:
                body = Poisoned(reason=exc.message, excerpt=excerpt(frame.b))
            self.pending_evt.append((frame, body))
            self.pending_evt_bytes += self._msg_bytes
            self._wake_apply()
            cfg = self.svc.config
            if len(self.pending_evt) >= cfg.max_pending_evt_frames or \
                    self.pending_evt_bytes >= cfg.max_pending_evt_bytes:
                self._room = asyncio.get_running_loop().create_future()
                try:
                    await self._room  # backpressure: stop reading until a batch is taken
                finally:
                    self._room = None
        else:
            await self._send(Ack(acks={EVT_STREAM: self.core.evt.applied}).frame())

    def _saw_cmd_ack(self, n: int | None) -> None:
        """A cumulative ``cmd`` ack (edge.ack or heartbeat). Rule: the node can only have
        applied what this session sent it (the sender's ``sent``, moved before each send),
        so an ack beyond it is a protocol error (4400), never a reason to mark commands that
        were queued but never sent ``delivered``."""
        try:
            if self.core.on_cmd_ack(n):
                self.wake_downlink()
        except RemoteProtocolError as exc:
            raise _Close(CloseCode.PROTOCOL_ERROR, exc.message) from None

    async def _flush_evt(self) -> None:
        """Before closing on goodbye: let the apply task commit and ack everything that was
        accepted, including a batch already in flight (5 s at most)."""
        self._wake_apply()
        task = self._apply_task
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=5)

    async def _apply_run(self) -> None:
        """Apply until nothing is pending, then end (the next frame starts a new run)."""
        try:
            while (self.pending_evt or self.pending_logs) and not self.fenced:
                await self._apply_pending()
        finally:  # fenced or failed: never leave the reader parked on backpressure
            self._release_reader()
            self._apply_task = None  # a finished Task keeps its coroutine: let both go

    def _release_reader(self) -> None:
        """Wake the read loop if it is parked on backpressure (a full pending queue)."""
        if self._room is not None and not self._room.done():
            self._room.set_result(None)

    async def _apply_pending(self) -> None:
        """Store pending log chunks, then apply pending evt frames and ack them (logs
        first, so every chunk sent before a status is stored and pushed before it)."""
        # Both taken at one instant: every chunk taken arrived before every frame left
        # behind, and a chunk that arrives while these are stored arrived after this batch.
        chunks, self.pending_logs = self.pending_logs, []
        batch, self.pending_evt = self.pending_evt, []
        first_mono = self._evt_first_mono
        self.pending_log_bytes = self.pending_evt_bytes = 0
        self._release_reader()
        try:
            if chunks:
                rows = await self.svc.store.append_logs(
                    self.node_id, [(c.command_id, c.source, c.seq, c.data, c.dropped)
                                   for c in chunks])
                for row in rows:
                    if row.command_id:
                        log_appended(self.svc.bus, row.command_id, row)
            if not batch:
                return
            effects = await self.svc.store.apply_evt(
                node_id=self.node_id, session_id=self.session_id or "", frames=batch,
                on_commit=self._evt_applied_recorder(batch) if recorder.ARMED else None)
        except BaseException:
            self.core.evt.rollback()
            raise
        if failpoints.ARMED:  # committed; the edge.ack not yet sent
            failpoints.hit("gateway.before_ack")
        self.svc.counters.apply_seconds.observe(time.monotonic() - first_mono)
        evt = self.core.evt
        evt.committed(batch[-1][0].q or 0)
        await self._send(Ack(acks={EVT_STREAM: evt.applied}).frame())
        for frame, body in batch:
            if isinstance(body, Poisoned):  # after the ack: the node may drop it now
                logger.warning("poison frame recorded as a dead letter", extra={
                    "node_id": self.node_id, "stream": frame.s, "q": frame.q,
                    "frame_type": frame.t, "detail": body.reason[:200]})
                await self._send(ErrorBody(code="poison_frame", message=body.reason[:512]
                                           ).frame(re=frame.id))
        for effect in effects:
            if effect.applied:
                command_changed(self.svc.bus, effect.command_id, effect.state, self.node_id)
        health = [b for _, b in batch if isinstance(b, NodeEvent) and b.kind == HEALTH_KIND]
        if health:  # stored with the batch: push the latest (protocol/health.py)
            self.svc.bus.publish(f"node:{self.node_id}", "health.updated",
                                 {"node_id": self.node_id, "health": dict(health[-1].data)})
        bundles = {b.status.name: b.status for _, b in batch
                   if isinstance(b, BundleStatusReport)}
        if bundles:  # stored with the batch (store/rollouts.py): push each name's latest
            self.svc.bus.publish(f"node:{self.node_id}", "bundle.updated", {
                "node_id": self.node_id, "bundles": {name: bundle_entry(st)
                                                     for name, st in bundles.items()}})
            self.svc.bundle_reported()

    async def _downlink_run(self) -> None:
        """Passes until no wake-up arrived during the last one, then end."""
        try:
            while self._downlink_again:
                self._downlink_again = False
                await self._downlink_pass()
        finally:
            self._downlink_task = None  # a finished Task keeps its coroutine: let both go

    async def _downlink_pass(self) -> None:
        while self._pending_errors:
            await self._send(self._pending_errors.pop(0))
        if self.fenced:
            return
        core = self.core
        n = core.cmd_ack_to_store()
        if n is not None:
            delivered = await self.svc.store.ack_cmd(self.node_id, self.session_id or "",
                                                     core.cmd_epoch, n)
            if recorder.ARMED:
                recorder.record("acked", node=self.node_id, stream="cmd",
                                epoch=core.cmd_epoch, q=n, session=self.session_id)
            core.stored_cmd_ack(n)
            for command_id in delivered:
                command_changed(self.svc.bus, command_id, "delivered", self.node_id)
        if self.runtime.get("state") != "attached":
            return  # nobody to deliver to; edge.resume names the cursor on re-attach
        room = core.cmd.room()
        if room <= 0:
            return
        rows = await self.svc.store.downlink_after(self.node_id, core.cmd_epoch,
                                                   core.cmd.sent, room)
        for q, data in rows:
            if self.fenced:
                break
            core.cmd_sending(q)  # before the send: the node may ack it before this returns
            if recorder.ARMED:  # sequenced in the store; recorded at its first send here
                self._record_cmd_append(q, data)
            await self._send_bytes(data)
            self.svc.counters.frames_out["cmd.deliver"] += 1
        if (core.cmd_sent_to_store() is not None and self._tg is not None
                and (self._note_task is None or self._note_task.done())):
            self._note_task = self._tg.create_task(self._note_run(), name="edge-note-sent")

    def _evt_applied_recorder(self, batch: list[tuple[Frame, Body | Poisoned]]
                              ) -> Callable[[], None]:
        """History (recorder armed): ``applied`` per frame of ``batch``, written by the
        store's writer right after the COMMIT (a session cancelled while its batch
        commits, its node gone, must not leave a committed apply unrecorded)."""
        node, epoch, session = self.node_id, self.core.evt.epoch or 0, self.session_id or ""
        qs, replica = [frame.q or 0 for frame, _ in batch], self.svc.replica_id

        def record() -> None:
            for q in qs:
                recorder.record("applied", node=node, stream="evt", epoch=epoch, q=q,
                                session=session, replica=replica)
        return record

    def _record_cmd_append(self, q: int, data: bytes) -> None:
        """History (recorder armed): ``append`` of a ``cmd.deliver`` about to be sent, its
        frame id the command id. Recorded at the send rather than where it was sequenced
        (the store's ``_dispatch``): every frame a node can apply or ack is sent first."""
        try:
            command_id = decode_msgpack(data).b.get("command_id")
        except Exception:
            return
        recorder.record("append", node=self.node_id, stream="cmd", frame_id=str(command_id),
                        epoch=self.core.cmd_epoch, q=q)

    async def _note_run(self) -> None:
        """Record the sent mark until it is current, off the delivery path (a crash before
        it is recorded only makes the node's next hello look ahead: an epoch reset)."""
        try:
            core = self.core
            while (sent := core.cmd_sent_to_store()) is not None and not self.fenced:
                await self.svc.store.note_cmd_sent(self.node_id, self.session_id or "",
                                                   core.cmd_epoch, sent)
                core.stored_cmd_sent(sent)
        finally:
            self._note_task = None
