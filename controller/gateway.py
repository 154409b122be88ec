"""The edge gateway: one :class:`EdgeConnection` per ``/v1/edge/connect`` WebSocket.

Where a frame enters (``_read_loop``), where it is persisted (``_apply_loop`` ->
``ControllerStore.apply_evt``) and where it is acked (right after that commit) are all here.

Rule 1: a class A ``evt`` frame is acked only after the commit that holds its effect and the
cursor. Rule 2: once fenced (superseded or closing), nothing this connection received is
applied. Rule 3: every task of a connection lives in its TaskGroup and ends with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from starlette.types import Message
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from tether.protocol.classes import CMD_STREAM, EVT_STREAM, FRAME_STREAM, delivery_class
from tether.protocol.codec import (
    BATCH_TYPE,
    MAX_BATCH_FRAMES,
    MSGPACK_SUBPROTOCOL,
    decode_msgpack,
    encode_msgpack,
    unbatch,
)
from tether.protocol.errors import (
    BadFrame,
    FrameTooLarge,
    RemoteProtocolError,
    TetherError,
    close_reason,
)
from tether.protocol.excerpt import excerpt
from tether.protocol.frames import (
    PROTOCOL_VERSION,
    Ack,
    Body,
    Challenge,
    ErrorBody,
    Frame,
    Heartbeat,
    HeartbeatAck,
    Hello,
    LogChunk,
    MonitorPacket,
    NodeResources,
    RuntimeState,
    Welcome,
    parse_body,
    valid_node_id,
)
from tether.protocol.handshake import INITIAL, Event, Role, event_for, step
from tether.protocol.signing import verify_hello
from tether.protocol.streams import StreamReceiver, Verdict

from .services.events import data_size
from .store.controller_store import Fenced, Poisoned

if TYPE_CHECKING:
    from .app import Controller

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


def _now_ms() -> int:
    return int(time.time() * 1000)


async def edge_endpoint(websocket: WebSocket) -> None:
    """Starlette endpoint for ``/v1/edge/connect`` (the server reaches :func:`edge_session`
    without Starlette's routing; this route serves an app mounted some other way)."""
    await edge_session(websocket, websocket.app.state.controller)


async def edge_session(websocket: WebSocket, controller: Controller) -> None:
    """One edge connection, from the sub-protocol check to the end of its session."""
    offered = websocket.scope.get("subprotocols") or []
    if MSGPACK_SUBPROTOCOL not in offered:
        await websocket.accept()
        await websocket.close(4426, f"offer sub-protocol {MSGPACK_SUBPROTOCOL}")
        return
    await websocket.accept(subprotocol=MSGPACK_SUBPROTOCOL)
    if controller.stopping:
        await websocket.close(1001, "controller going away")
        return
    conn = EdgeConnection(websocket, controller)
    controller.connections.add(conn)
    try:
        await conn.run()
    finally:
        controller.connections.discard(conn)


class EdgeConnection:
    """One node's edge connection: handshake, then its session until the socket closes.

    Slotted: 10,000 idle sessions are 10,000 of these, and a ``__dict__`` of ~40 entries
    costs about 2 KiB each."""

    __slots__ = ("_apply_task", "_downlink_again", "_downlink_task", "_hello",
                 "_idle_deadline", "_msg_bytes", "_note_task",
                 "_pending_errors", "_remote_code", "_room", "_send_lock", "_sending", "_tg",
                 "closing",
                 "cmd_ack_seen", "cmd_acked", "cmd_epoch", "cmd_noted", "cmd_sent", "ctl", "evt",
                 "fenced",
                 "goodbye", "last_frame_mono", "logs_dropped_total", "max_frame", "node_id",
                 "opened_mono", "outbox", "pending_evt", "pending_evt_bytes", "pending_log_bytes",
                 "pending_logs",
                 "remote", "resources",
                 "resumed", "runtime", "session_id", "sidecar", "state", "touched_frame_mono",
                 "touched_state", "transport", "ws")

    def __init__(self, ws: WebSocket, controller: Controller) -> None:
        self.ws = ws
        self.ctl = controller
        cfg = controller.config
        self.max_frame = cfg.max_frame_bytes
        self.node_id: str = ""
        self.session_id: str | None = None
        self.remote = f"{ws.client.host}:{ws.client.port}" if ws.client else "unknown"
        self.state = INITIAL[Role.CONTROLLER]
        self.fenced = False
        self.goodbye = False
        self.closing: _Close | None = None
        self.opened_mono = time.monotonic()
        self.last_frame_mono = self.opened_mono
        self.touched_frame_mono = -1.0  # last_frame_mono / runtime state as last persisted
        self.touched_state: str | None = None
        self.runtime: dict[str, Any] = {"state": "attached", "version": None}
        self.sidecar: dict[str, Any] = {}
        self.resources: dict[str, Any] = {}
        self.outbox: dict[str, Any] = {}
        self.transport: dict[str, Any] = {}
        self.resumed = False
        # uplink (evt) receive side
        self.evt = StreamReceiver()
        # parsed once, on arrival; a body that broke the value rules is Poisoned
        self.pending_evt: list[tuple[Frame, Body | Poisoned]] = []
        # Their bytes as they arrived on the wire (a batch's bytes spread over its frames):
        # the read loop parks past max_pending_evt_frames or max_pending_evt_bytes.
        self.pending_evt_bytes = 0
        self._msg_bytes = 0  # the size of the WebSocket message being handled, per frame
        # downlink (cmd) send side: the outbox lives in the store
        self.cmd_epoch = 0
        self.cmd_acked = 0
        self.cmd_sent = 0
        self.cmd_noted = 0  # cmd_sent as last recorded in the store (the sent mark)
        self.cmd_ack_seen = 0
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

    # -- lifecycle -----------------------------------------------------------------------

    async def run(self) -> None:
        """Serve one edge connection. The challenge goes out at once (PROTOCOL.md §4: within
        1 s of accept); the hello is awaited in the admission's hello gate, which costs no
        slot (a silent socket holds nothing a node needs); the rest of the handshake runs
        under an admission slot, released exactly once. Past the admission limits the node
        is told when to come back (4429)."""
        adm = self.ctl.admission
        try:
            nonce = await self._challenge()
            if adm.saturated():  # the hello could not be served anyway: say so now
                adm.refuse()
                raise _Close(4429, f"overloaded; retry_after={adm.retry_after()}")
            self._hello = await self._await_hello()
            if self._hello is None:
                raise _Close(1000, "closed before hello")
        except _Close as exc:
            await self._finish(exc)
            return
        if not await self.ctl.admission.acquire():
            retry_after = self.ctl.admission.retry_after()
            await self._finish(_Close(4429, f"overloaded; retry_after={retry_after}"))
            return
        completed = False
        try:
            await self._handshake(nonce)
            completed = True
        except _Close as exc:
            await self._finish(exc)
            return
        except Exception:
            logger.exception("edge handshake failed", extra={"remote": self.remote})
            await self._finish(_Close(1011, "internal error"))
            return
        finally:
            self.ctl.admission.release(completed=completed)
        close: _Close | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                try:
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
            close = _Close(4409, "superseded")
        except* Exception as group:
            logger.error("edge session failed", exc_info=group.exceptions[0],
                         extra={"node_id": self.node_id, "session_id": self.session_id})
            close = _Close(1011, "internal error")
        await self._finish(close or self.closing)

    async def _finish(self, close: _Close | None) -> None:
        self.fenced = True
        if close is not None:
            await self._close_ws(close.code, close.reason)
        if self.node_id:
            self.ctl.registry.release(self.node_id, self)
        if self.session_id is None:
            return
        code = close.code if close else self._remote_code
        reason = close.reason if close else "connection closed by node"
        if self.goodbye:
            reason = "goodbye"
        if not (close and close.code == 4409):
            with contextlib.suppress(TetherError):
                if self.cmd_sent > self.cmd_noted:  # the sent mark, if its task was cut
                    await self.ctl.store.note_cmd_sent(self.node_id, self.session_id,
                                                       self.cmd_epoch, self.cmd_sent)
                await self.ctl.store.close_session(node_id=self.node_id,
                                                   session_id=self.session_id,
                                                   close_code=code, reason=reason,
                                                   goodbye=self.goodbye)
        self.ctl.node_changed(self.node_id, "session.closed",
                              {"session_id": self.session_id, "close_code": code,
                               "reason": reason})
        logger.info("edge session closed", extra={"node_id": self.node_id,
                                                  "session_id": self.session_id,
                                                  "code": code, "reason": reason})

    async def supersede(self) -> None:
        """A newer session took this node: fence, then close with 4409."""
        self.fenced = True
        self.closing = _Close(4409, "superseded by a newer session")
        await self._close_ws(4409, "superseded by a newer session")

    async def disable(self) -> None:
        """The operator disabled this node: fence and close with 4403."""
        self.fenced = True
        self.closing = _Close(4403, "node disabled by operator")
        await self._close_ws(4403, "node disabled by operator")

    async def shutdown(self) -> None:
        """The controller is stopping: close with 1001 (the node reconnects with backoff)."""
        self.closing = _Close(1001, "controller going away")
        await self._close_ws(1001, "controller going away")

    def wake_downlink(self) -> None:
        """There may be downlink work (commands queued, acks to record, errors to send)."""
        self._downlink_again = True
        if self._tg is not None and (self._downlink_task is None or self._downlink_task.done()):
            self._downlink_task = self._tg.create_task(self._downlink_run(),
                                                       name="edge-downlink")

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
            raise _Close(1006, f"send failed: {exc!r}") from None

    async def _send(self, frame: Frame) -> None:
        await self._send_bytes(encode_msgpack(frame, max_frame_bytes=self.max_frame))

    async def _receive(self, timeout_s: float) -> Frame | None:
        """The hello :meth:`_await_hello` read before the slot was taken; else the next
        frame within ``timeout_s``, or None when the peer closed. Raises _Close on bad input
        or silence."""
        if self._hello is not None:
            frame, self._hello = self._hello, None
            return frame
        try:
            async with asyncio.timeout(timeout_s):
                msg = await self.ws.receive()
        except TimeoutError:
            raise _Close(4408, f"no hello within {timeout_s:g} s") from None
        return self._frame_from(msg)

    async def _await_hello(self) -> Frame | None:
        """The first frame, an ``edge.hello`` by its type, or None when the peer closed
        first. Waits in the hello gate (services/admission.py): for its allowance, which
        tightens while many wait, and is cut short when newer connections from the same
        address, or in all, are past their caps. Raises _Close (4408 when silent, 4400 for
        a first frame that cannot be a hello)."""
        gate = self.ctl.admission.hello
        address = self.ws.client.host if self.ws.client else ""
        loop = asyncio.get_running_loop()
        timed_out = True
        entered = loop.time()
        try:
            async with asyncio.timeout(None) as deadline:
                allowance_s = gate.enter(self, address,
                                         lambda: deadline.reschedule(loop.time()))
                deadline.reschedule(entered + allowance_s)
                msg = await self.ws.receive()
                timed_out = False
        except TimeoutError:
            # cut short by the gate (pressure, caps) or its own allowance: either way late
            raise _Close(4408, f"no hello in time (waited {loop.time() - entered:.1f} s of "
                               f"at most {allowance_s:g} s)") from None
        finally:
            gate.leave(self, timed_out=timed_out)
        frame = self._frame_from(msg)
        if frame is not None and frame.t != Hello.TYPE:
            raise _Close(4400, f"expected edge.hello first, got {frame.t!r}")
        return frame

    def _frame_from(self, msg: Message) -> Frame | None:
        """Decode one ASGI receive event; None for the peer's close. Raises _Close."""
        if msg["type"] == "websocket.disconnect":
            self._remote_code = msg.get("code")
            return None
        data = msg.get("bytes")
        if data is None:
            raise _Close(4400, f"text frames are not allowed on {MSGPACK_SUBPROTOCOL}")
        self._msg_bytes = len(data)
        try:
            frame = decode_msgpack(data, max_frame_bytes=self.max_frame)
        except FrameTooLarge as exc:
            raise _Close(1009, exc.message) from None
        except BadFrame as exc:
            raise _Close(4400, exc.message) from None
        self.last_frame_mono = time.monotonic()
        return frame

    # -- handshake (PROTOCOL.md §4) --------------------------------------------------------

    async def _challenge(self) -> bytes:
        nonce = os.urandom(32)
        await self._send(Challenge(nonce=nonce, controller_id=self.ctl.controller_id,
                                   time_ms=_now_ms()).frame())
        return nonce

    async def _handshake(self, nonce: bytes) -> None:
        cid = self.ctl.controller_id
        frame = await self._receive(self.ctl.config.handshake_timeout_s)
        if frame is None:
            raise _Close(1000, "closed before hello")
        if frame.t != Hello.TYPE:
            raise _Close(4400, f"expected edge.hello first, got {frame.t!r}")
        try:
            hello = Hello.parse(frame)
        except BadFrame as exc:
            raise _Close(4400, exc.message) from None
        self.state, _ = step(Role.CONTROLLER, self.state, Event.HELLO)
        if hello.protocol != PROTOCOL_VERSION:
            raise _Close(4426, f"protocol {hello.protocol} is not supported; this controller "
                               f"speaks {PROTOCOL_VERSION}")
        # An unknown id and a bad signature look the same on the wire (code, reason and
        # roughly the time taken: an unknown id is verified against a dummy key), so that an
        # unauthenticated peer cannot learn which ids are enrolled; the log says which.
        known = (await self.ctl.store.node_key(hello.node_id)
                 if valid_node_id(hello.node_id) else None)
        public_key, enabled = known if known is not None else (_DUMMY_KEY, False)
        verified = verify_hello(public_key, hello.sig, nonce, cid, hello.node_id)
        if known is None or not verified:
            logger.info("edge hello refused", extra={
                "node_id": hello.node_id[:64], "remote": self.remote,
                "detail": "unknown node id" if known is None else
                "signature does not verify with the enrolled key (or the key is weak)"})
            raise _Close(4401, HELLO_REFUSED)
        if not enabled:
            raise _Close(4403, "node is disabled")
        self.node_id = hello.node_id
        if hello.max_frame is not None:  # the session's one cap, both ways (§4 Frame cap)
            self.max_frame = min(self.max_frame, hello.max_frame)
        self.runtime = {"state": hello.runtime.state or "attached",
                        "version": hello.runtime.version}
        self.sidecar = hello.sidecar.to_map()
        old = self.ctl.registry.claim(self.node_id, self)
        if old is not None:
            await old.supersede()
        if self.ctl.stopping:
            raise _Close(1001, "controller going away")
        opened = await self.ctl.store.open_session(
            node_id=self.node_id, remote=self.remote, previous_session=hello.session_id,
            evt_epoch=hello.epoch, cmd_acked=int(hello.acks.get("cmd", 0)),
            runtime=self.runtime, sidecar=self.sidecar, capabilities=hello.capabilities,
            labels=dict(hello.labels), max_frame=self.max_frame)
        if self.fenced:  # superseded while opening
            raise _Close(4409, "superseded by a newer session")
        self.session_id = opened.session_id
        self.resumed = opened.resumed
        self.evt = StreamReceiver(epoch=hello.epoch, applied=opened.evt_applied)
        self.cmd_epoch = opened.cmd_epoch
        acked = 0 if opened.cmd_epoch_rotated else int(hello.acks.get("cmd", 0))
        self.cmd_acked = self.cmd_sent = self.cmd_ack_seen = self.cmd_noted = acked
        th = self.ctl.config.thresholds
        await self._send(Welcome(
            session_id=opened.session_id, resumed=opened.resumed, epoch=opened.cmd_epoch,
            acks={EVT_STREAM: opened.evt_applied, CMD_STREAM: acked},
            heartbeat_s=th.heartbeat_s,
            stale_after_s=th.stale_after_s, offline_after_s=th.offline_after_s,
            max_frame=self.max_frame, max_batch=MAX_BATCH_FRAMES).frame())
        self._downlink_again = True  # the steady state's first pass replays from the cursor
        logger.info("edge session opened", extra={
            "node_id": self.node_id, "session_id": self.session_id, "resumed": self.resumed,
            "remote": self.remote})
        self.ctl.node_changed(self.node_id, "session.opened",
                              {"session_id": self.session_id, "resumed": self.resumed})

    # -- steady state (PROTOCOL.md §5) ------------------------------------------------------

    async def _read_loop(self) -> None:
        """Reads until the peer closes. Silence past ``stale_after_s`` closes with 4408: the
        sweeper calls :meth:`expire_if_idle`, which fires this loop's one deadline (no timer
        per frame, none per session while frames flow). One coroutine, no helpers: an idle
        session is this frame waiting on its next message."""
        idle_s = self.ctl.config.thresholds.stale_after_s
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
                            raise _Close(4400, exc.message) from None
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
                raise _Close(4408, f"node is not reading (a send waited over {idle_s:g} s)"
                             ) from None
            raise _Close(4408, f"no frame within {idle_s:g} s") from None
        finally:
            self._idle_deadline = None

    def expire_if_idle(self, now_mono: float) -> bool:
        """Close this session (4408) if no frame arrived for ``stale_after_s``; True if so."""
        if now_mono - self.last_frame_mono < self.ctl.config.thresholds.stale_after_s:
            return False  # the common case first: run for every session every second
        deadline = self._idle_deadline
        if deadline is None or deadline.expired():
            return False
        deadline.reschedule(asyncio.get_running_loop().time())
        return True

    async def _on_frame(self, frame: Frame) -> None:
        try:
            self.state, _ = step(Role.CONTROLLER, self.state, event_for(frame.t))
        except RemoteProtocolError as exc:
            raise _Close(4400, exc.message) from None
        if frame.t == "edge.goodbye":
            self.goodbye = True
            await self._flush_evt()
            raise _Close(1000, "goodbye")
        await self._handle(frame)

    async def _handle(self, frame: Frame) -> None:
        t = frame.t
        if FRAME_STREAM.get(t) == EVT_STREAM:
            await self._on_evt(frame)
        elif t == "edge.heartbeat":
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
            self._saw_cmd_ack(hb.acks.get(CMD_STREAM))
            await self._send(HeartbeatAck(time_ms=_now_ms(),
                                          acks={EVT_STREAM: self.evt.applied}).frame(re=frame.id))
        elif t == "edge.ack":
            self._saw_cmd_ack(self._check_cursors(frame).acks.get(CMD_STREAM))
        elif t == "edge.resume":
            self._on_resume(self._check_cursors(frame).acks.get(CMD_STREAM, 0))
        elif t == "edge.runtime":
            rt = self._parse_or_error(RuntimeState, frame)
            if rt is not None:
                self._set_runtime({"state": rt.state, "version": rt.version})
        elif t == "log.chunk":
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
        elif t == "node.resources":  # class B: latest wins, pushed to node:<id>
            resources = self._parse_or_error(NodeResources, frame)
            if resources is not None:
                self.resources = resources.to_body()
                self.ctl.hub.publish(f"node:{self.node_id}", "resources.updated",
                                     {"node_id": self.node_id, "resources": self.resources})
        elif t == "monitor.packet":  # class C: kept in memory within byte budgets (oldest
            packet = self._parse_or_error(MonitorPacket, frame)  # dropped), pushed to
            if packet is not None:  # monitor:<id> charged at its size
                item = {"node_id": self.node_id, **packet.to_body()}
                size = data_size(item)
                self.ctl.monitor.add(self.node_id, item, size=size)
                self.ctl.hub.publish(f"monitor:{self.node_id}", "monitor.packet", item,
                                     size=size)
        elif t == "error":  # logged, never answered (two peers must not trade errors)
            logger.warning("node reported an error", extra={
                "node_id": self.node_id, "code": excerpt(frame.b.get("code"), 64),
                "detail": excerpt(frame.b.get("message"), 200)})
        elif t == "cmd.deliver" or t in ("edge.challenge", "edge.welcome",
                                         "edge.heartbeat_ack"):
            raise _Close(4400, f"{t!r} is a controller-to-node frame")
        else:
            known = delivery_class(t) is not None
            await self._send(ErrorBody(
                code="unsupported_type" if known else "unknown_type",
                message=f"frame type {t!r} is not handled by this controller").frame(
                    re=frame.id))

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
            raise _Close(4400, exc.message) from None

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
            self.ctl.node_changed(self.node_id, "runtime.changed", dict(self.runtime))
            if state == "attached":
                self.wake_downlink()

    async def _on_evt(self, frame: Frame) -> None:
        """A class A frame on ``evt``. Without a stream and sequence it cannot be placed:
        4400. A body that breaks the value rules is a poison frame (docs/protocol.md §5):
        it takes its place in the stream as :class:`Poisoned`, is recorded as a dead letter
        instead of applied, and is acked like any other, so the stream moves on."""
        if frame.s != EVT_STREAM or frame.q is None:
            raise _Close(4400, f"{frame.t!r} must travel on stream 'evt' with a sequence")
        verdict = self.evt.classify(frame.q)
        if verdict is Verdict.APPLY:
            body: Body | Poisoned
            try:
                body = parse_body(frame)
            except BadFrame as exc:
                body = Poisoned(reason=exc.message, excerpt=excerpt(frame.b))
            self.pending_evt.append((frame, body))
            self.pending_evt_bytes += self._msg_bytes
            self._wake_apply()
            cfg = self.ctl.config
            if len(self.pending_evt) >= cfg.max_pending_evt_frames or \
                    self.pending_evt_bytes >= cfg.max_pending_evt_bytes:
                self._room = asyncio.get_running_loop().create_future()
                try:
                    await self._room  # backpressure: stop reading until a batch is taken
                finally:
                    self._room = None
        else:
            await self._send(Ack(acks={EVT_STREAM: self.evt.applied}).frame())

    def _saw_cmd_ack(self, n: int | None) -> None:
        """A cumulative ``cmd`` ack (edge.ack, heartbeat or resume). Rule: the node can only
        have applied what this session sent it (``cmd_sent``, moved before each send), so
        an ack beyond it is a protocol error (4400), never a reason to mark commands that
        were queued but never sent ``delivered``."""
        if n is None:
            return
        if n > self.cmd_sent:
            raise _Close(4400, f"ack for cmd q={n} is beyond q={self.cmd_sent}, the last "
                               "sent on this session")
        if n > self.cmd_ack_seen:
            self.cmd_ack_seen = n
            self.wake_downlink()

    def _on_resume(self, n: int) -> None:
        """The node's runtime re-attached having applied up to ``n``: re-send after it."""
        if n > self.cmd_sent:
            raise _Close(4400, f"resume from cmd q={n} is beyond q={self.cmd_sent}, the last "
                               "sent on this session")
        self._saw_cmd_ack(n)
        self.cmd_sent = max(n, self.cmd_acked)
        self.wake_downlink()

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
        self.pending_log_bytes = self.pending_evt_bytes = 0
        self._release_reader()
        try:
            if chunks:
                rows = await self.ctl.store.append_logs(
                    self.node_id, [(c.command_id, c.source, c.seq, c.data, c.dropped)
                                   for c in chunks])
                for row in rows:
                    if row.command_id:
                        self.ctl.log_appended(row.command_id, row)
            if not batch:
                return
            effects = await self.ctl.store.apply_evt(node_id=self.node_id,
                                                     session_id=self.session_id or "",
                                                     frames=batch)
        except BaseException:
            self.evt.rollback()
            raise
        self.evt.committed(batch[-1][0].q or 0)
        await self._send(Ack(acks={EVT_STREAM: self.evt.applied}).frame())
        for frame, body in batch:
            if isinstance(body, Poisoned):  # after the ack: the node may drop it now
                logger.warning("poison frame recorded as a dead letter", extra={
                    "node_id": self.node_id, "stream": frame.s, "q": frame.q,
                    "frame_type": frame.t, "detail": body.reason[:200]})
                await self._send(ErrorBody(code="poison_frame", message=body.reason[:512]
                                           ).frame(re=frame.id))
        for effect in effects:
            if effect.applied:
                self.ctl.command_changed(effect.command_id, effect.state, self.node_id)

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
        if self.cmd_ack_seen > self.cmd_acked:
            n = self.cmd_ack_seen
            delivered = await self.ctl.store.ack_cmd(self.node_id, self.session_id or "",
                                                     self.cmd_epoch, n)
            self.cmd_acked = n
            self.cmd_sent = max(self.cmd_sent, n)
            for command_id in delivered:
                self.ctl.command_changed(command_id, "delivered", self.node_id)
        if self.runtime.get("state") != "attached":
            return  # nobody to deliver to; edge.resume names the cursor on re-attach
        room = self.cmd_acked + self.ctl.config.cmd_window - self.cmd_sent
        if room <= 0:
            return
        rows = await self.ctl.store.downlink_after(self.node_id, self.cmd_epoch,
                                                   self.cmd_sent, room)
        for q, data in rows:
            if self.fenced:
                break
            # before the send: the node may ack it before this task runs again
            self.cmd_sent = q
            await self._send_bytes(data)
        if (self.cmd_sent > self.cmd_noted and self._tg is not None
                and (self._note_task is None or self._note_task.done())):
            self._note_task = self._tg.create_task(self._note_run(), name="edge-note-sent")

    async def _note_run(self) -> None:
        """Record the sent mark until it is current, off the delivery path (a crash before
        it is recorded only makes the node's next hello look ahead: an epoch reset)."""
        try:
            while self.cmd_sent > self.cmd_noted and not self.fenced:
                sent = self.cmd_sent
                await self.ctl.store.note_cmd_sent(self.node_id, self.session_id or "",
                                                   self.cmd_epoch, sent)
                self.cmd_noted = max(self.cmd_noted, sent)
        finally:
            self._note_task = None
