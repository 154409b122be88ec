"""The node's side of the controller's relay (docs/protocol.md "The relay"): the ``file``
subflow over ``rtc.relay`` frames, node <-> node, when ICE found no direct path.

One :class:`RelayChannel` per granted ``peer_session_id`` is a :class:`FileChannel`
(node/rtc/filechannel.py) carrying filexfer messages, one message per ``rtc.relay``
frame's ``data``: a chunk as is (its first byte is ``0x01``), a control message as its
UTF-8 JSON text (first byte ``{``). Each direction is a windowed, ordered stream as the
controller expects: ``protocol/iostream.IoSender`` numbers and windows what this node
sends (go-back-N re-send when acks stall), the receiver applies ``seq == applied + 1``
only and acks with ``ack`` + ``window``.

Rules:
1. Grants: a node keeps the ``rtc.link`` grants it was sent (at most :data:`MAX_GRANTS`,
   least recently used dropped); a relay frame is taken only for a granted
   ``peer_session_id`` from the granted node with the granted ``node_id``: anything else
   gets ``error`` ``forbidden`` (``to`` = its sender) and is dropped. The controller checks
   the same at both sessions: this is the node's own boundary.
2. The node end of the grant serves: the first data for a granted peer opens a channel
   whose endpoint takes uploads into the workspace (``serve``: true). The end that
   opens a relay (:meth:`RelayManager.open`) serves nothing.
3. Bounded: at most :data:`MAX_CHANNELS` channels; the endpoint sends a chunk only once
   the channel's queue is empty (``buffered_amount`` 0, its ``bufferedamountlow`` rule), so
   a channel queues at most one chunk beyond the relay window, plus control messages
   (at most 4 KiB each, one per ack the incoming data earns); received data is fed to
   the endpoint as it arrives (nothing queued).
4. Every task (a channel's pump and re-send timer) is owned by the manager's task group
   (:meth:`RelayManager.run`), cancelled when its channel closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tether.protocol.errors import BadFrame, LocalProtocolError
from tether.protocol.frames import Frame
from tether.protocol.iostream import IoSender
from tether.protocol.rtc import MAX_RELAY_DATA, RtcClose, RtcLink, RtcRelay, valid_address

from .filexfer import FileEndpoint, FileLimits

logger = logging.getLogger(__name__)

MAX_GRANTS = 16
MAX_CHANNELS = 8
RECEIVE_WINDOW = 1 << 20  # what a receiver announces (the controller's cap)
ACK_EVERY = RECEIVE_WINDOW // 4  # bytes applied between acks
ACK_DELAY_S = 0.02  # an ack for less than ACK_EVERY goes out this soon
RETRANSMIT_S = 1.0
TICK_S = 0.25
# filexfer chunk header: 0x01, n, id (<= 64), offset (8): a 16 KiB chunk is well inside
RELAY_LIMITS = FileLimits(chunk_bytes=16 << 10)

SendFrame = Callable[[Frame], Awaitable[bool]]


@dataclass(slots=True)
class RelayGrant:
    """An ``rtc.link`` this node was sent: it may relay with ``peer`` for the peer."""

    peer: str  # node:<id>
    node_id: str  # the node end
    expires_at_ms: int


class RelayChannel:
    """:class:`~.filechannel.FileChannel` over ``rtc.relay`` (module docstring)."""

    def __init__(self, manager: RelayManager, peer_session_id: str, grant: RelayGrant
                 ) -> None:
        self.manager = manager
        self.peer_session_id = peer_session_id
        self.grant = grant
        self.sender = IoSender(retransmit_s=RETRANSMIT_S)
        self.applied = 0  # the last seq fed to the endpoint
        self._acked_sent = 0  # the last ack this end sent
        self._unacked_in = 0  # bytes applied since that ack
        self._ack_timer: asyncio.TimerHandle | None = None
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._wake = asyncio.Event()
        self._low = asyncio.Event()
        self.closed = False
        self.endpoint: FileEndpoint | None = None
        self.frames_in = self.frames_out = self.resent_total = 0
        self._task: asyncio.Task[None] | None = None

    # -- FileChannel --------------------------------------------------------------------

    def send(self, message: bytes | str) -> None:
        if self.closed:
            raise ConnectionError("the relay channel is closed")
        data = message.encode("utf-8") if isinstance(message, str) else message
        if len(data) > MAX_RELAY_DATA:
            raise ConnectionError(f"a relay message is at most {MAX_RELAY_DATA} bytes")
        self._queue.append(data)
        self._queued += len(data)
        self._low.clear()
        self._wake.set()

    @property
    def buffered_amount(self) -> int:
        return self._queued

    async def wait_buffered_low(self) -> None:
        while self._queued > 0:
            if self.closed:
                raise ConnectionError("the relay channel is closed")
            await self._low.wait()
        if self.closed:
            raise ConnectionError("the relay channel is closed")

    def close(self) -> None:
        self.manager.drop(self.peer_session_id)

    # -- the pump -----------------------------------------------------------------------

    async def run(self) -> None:
        """Send what is queued as the window allows; re-send when acks stall."""
        loop = asyncio.get_running_loop()
        while not self.closed:
            now = loop.time()
            if self.sender.due(now):
                self.resent_total += 1
                for item in self.sender.unacked():
                    await self._send_data(item.seq, item.data)
                self.sender.resent(now)
            while self._queue and (len(self._queue[0]) <= self.sender.room()
                                   or self.sender.unacked_bytes == 0):
                data = self._queue.popleft()
                self._queued -= len(data)
                if self.sender.room() < len(data):  # one frame always fits (the rule)
                    self.sender.window = len(data)
                item = self.sender.push(data, now)
                await self._send_data(item.seq, data)
            if not self._queue:
                self._low.set()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK_S):
                    await self._wake.wait()

    async def _send_data(self, seq: int, data: bytes) -> None:
        self.frames_out += 1
        await self.manager.send(RtcRelay(node_id=self.grant.node_id,
                                         peer_session_id=self.peer_session_id,
                                         to=self.grant.peer, seq=seq, data=data))

    # -- frames in ----------------------------------------------------------------------

    def on_relay(self, body: RtcRelay) -> None:
        """One relay frame from the other node (its grant checked)."""
        self.frames_in += 1
        if body.ack is not None and body.window is not None:
            try:
                if self.sender.on_ack(body.ack, body.window, asyncio.get_running_loop()
                                      .time()):
                    self._wake.set()
            except LocalProtocolError as exc:
                logger.warning("relay ack refused", extra={"detail": exc.message})
        if not body.seq:
            return
        if body.seq != self.applied + 1:  # a duplicate or a gap: say where we are
            self._ack_now()
            return
        self.applied = body.seq
        self._unacked_in += len(body.data)
        if self.endpoint is not None:
            data = body.data
            self.endpoint.feed(data if data[:1] == b"\x01" else
                               data.decode("utf-8", "replace"))
        if self._unacked_in >= ACK_EVERY:
            self._ack_now()
        elif self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(ACK_DELAY_S,
                                                                    self._ack_now)

    def _ack_now(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        if self.closed:
            return
        self._unacked_in = 0
        self._acked_sent = self.applied
        self.manager.spawn(self.manager.send(RtcRelay(
            node_id=self.grant.node_id, peer_session_id=self.peer_session_id,
            to=self.grant.peer, ack=self.applied, window=RECEIVE_WINDOW)))

    def shut(self) -> None:
        """The channel ends: the endpoint's transfers fail, the pump stops."""
        if self.closed:
            return
        self.closed = True
        if self._ack_timer is not None:
            self._ack_timer.cancel()
        self._low.set()
        self._wake.set()
        if self.endpoint is not None:
            self.endpoint.connection_lost()
        if self._task is not None:
            self._task.cancel()

    def status(self) -> dict[str, Any]:
        return {"peer_session_id": self.peer_session_id, "peer": self.grant.peer,
                "frames_in": self.frames_in, "frames_out": self.frames_out,
                "sent_seq": self.sender.last_seq, "acked_seq": self.sender.acked,
                "applied_seq": self.applied, "resent_total": self.resent_total,
                "file": self.endpoint.status() if self.endpoint is not None else None}


class RelayManager:
    """This node's grants and relay channels (module docstring). Owned by the runtime:
    :meth:`run` holds the task group; cancelling it ends every channel."""

    def __init__(self, *, node_id: str, send: SendFrame, workspace_dir: Path,
                 clock: Callable[[], float] = time.time) -> None:
        self.node_id = node_id
        self._send = send
        self.workspace_dir = workspace_dir
        self._clock = clock
        self.grants: OrderedDict[str, RelayGrant] = OrderedDict()
        self.channels: dict[str, RelayChannel] = {}
        self.refused_total = 0
        self._tg: asyncio.TaskGroup | None = None
        self.ready = asyncio.Event()
        self._grant_seen = asyncio.Event()

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                self.ready.set()
                await asyncio.Event().wait()
        finally:
            self._tg = None
            self.ready.clear()
            for channel in list(self.channels.values()):
                channel.shut()
            self.channels.clear()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` in the manager's group (errors logged by nobody: a lost ack or
        close is recovered by the stream's re-send or the grant's end); dropped when the
        group is gone or shutting down."""
        wrapped = _quiet(coro)
        try:
            if self._tg is None:
                raise RuntimeError("not running")
            self._tg.create_task(wrapped)
        except RuntimeError:
            wrapped.close()
            coro.close()

    async def send(self, body: RtcRelay | RtcClose) -> bool:
        return await self._send(body.frame())

    # -- grants -------------------------------------------------------------------------

    def on_link(self, frame: Frame) -> None:
        """An ``rtc.link`` from the controller: remember the grant (a bad one is dropped:
        the controller built it)."""
        try:
            link = RtcLink.from_body(frame.b)
        except BadFrame as exc:
            self.refused_total += 1
            logger.warning("rtc.link dropped", extra={"detail": exc.message})
            return
        self.grants[link.peer_session_id] = RelayGrant(link.from_, link.node_id,
                                                       link.expires_at_ms)
        self.grants.move_to_end(link.peer_session_id)
        while len(self.grants) > MAX_GRANTS:
            self.grants.popitem(last=False)
        self._grant_seen.set()

    async def wait_grant(self, peer_session_id: str, peer: str, timeout_s: float
                         ) -> RelayGrant | None:
        """The grant for ``peer_session_id`` with ``peer``, waiting up to ``timeout_s`` for
        it to arrive (the controller sends it before it answers the link's POST, but on
        another path than a command)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while True:
                    grant = self.grants.get(peer_session_id)
                    if grant is not None and grant.peer == peer:
                        return grant
                    self._grant_seen.clear()
                    await self._grant_seen.wait()
        return None

    # -- channels -----------------------------------------------------------------------

    def open(self, peer_session_id: str) -> FileEndpoint:
        """A relay channel for the granted peer, opened by this node (it serves nothing:
        it sends with the endpoint's ``send_file``). Raises LookupError without a grant,
        RuntimeError past the bounds or when not running."""
        grant = self.grants.get(peer_session_id)
        if grant is None:
            raise LookupError(f"no grant for peer {peer_session_id!r}")
        return self._open(peer_session_id, grant, serve=False)

    def _open(self, peer_session_id: str, grant: RelayGrant, *, serve: bool) -> FileEndpoint:
        if self._tg is None:
            raise RuntimeError("the relay is not running")
        if len(self.channels) >= MAX_CHANNELS:
            raise RuntimeError(f"at most {MAX_CHANNELS} relay channels at once")
        old = self.channels.pop(peer_session_id, None)
        if old is not None:
            old.shut()
        if serve:
            self.workspace_dir.mkdir(parents=True, exist_ok=True)
        channel = RelayChannel(self, peer_session_id, grant)
        channel.endpoint = FileEndpoint(channel, self.workspace_dir, RELAY_LIMITS,
                                        serve=serve)
        self.channels[peer_session_id] = channel
        channel._task = self._tg.create_task(channel.run(), name=f"relay:{peer_session_id}")
        return channel.endpoint

    def drop(self, peer_session_id: str) -> None:
        """End the channel: its pump is cancelled and its endpoint closed, the endpoint's
        tasks awaited in the manager's group."""
        channel = self.channels.pop(peer_session_id, None)
        if channel is not None:
            channel.shut()
            if channel.endpoint is not None:
                self.spawn(channel.endpoint.aclose())

    async def close(self, peer_session_id: str, reason: str) -> None:
        """End the relay for this peer and tell the other node (``rtc.close``: the
        controller ends the grant at both sessions)."""
        self.drop(peer_session_id)
        grant = self.grants.pop(peer_session_id, None)
        if grant is not None:
            await self.send(RtcClose(node_id=grant.node_id, peer_session_id=peer_session_id,
                                     negotiation_id=0, from_=None, to=grant.peer,
                                     reason=reason[:200]))

    def on_close(self, body: RtcClose) -> bool:
        """An ``rtc.close`` from the other node: True when it ended a relay here."""
        channel = self.channels.get(body.peer_session_id)
        if channel is None or channel.grant.peer != body.from_:
            return False
        self.drop(body.peer_session_id)
        self.grants.pop(body.peer_session_id, None)
        return True

    async def receive(self, frame: Frame, *, on_first: Callable[[str], Awaitable[None]]
                      | None = None) -> None:
        """One ``rtc.relay`` frame: parsed once, checked against the grants (rule 1),
        handed to its channel (opened, serving, when this node is the grant's node end:
        ``on_first`` is then awaited with the peer's id, so the WebRTC peer the relay
        replaces can be closed)."""
        try:
            body = RtcRelay.from_body(frame.b)
        except BadFrame as exc:
            await self._refuse(frame, exc.code, exc.message, None)
            return
        grant = self.grants.get(body.peer_session_id)
        if body.from_ is None or grant is None or grant.peer != body.from_ \
                or grant.node_id != body.node_id:
            await self._refuse(frame, "forbidden", "no rtc.link grant for peer "
                               f"{body.peer_session_id!r} from {body.from_!r} on this node",
                               body)
            return
        self.grants.move_to_end(body.peer_session_id)
        channel = self.channels.get(body.peer_session_id)
        if channel is None:
            if grant.node_id != self.node_id or not body.seq:
                return  # an ack for a channel this end closed: nothing to do
            try:
                self._open(body.peer_session_id, grant, serve=True)
            except RuntimeError as exc:
                await self._refuse(frame, "unavailable", str(exc), body)
                return
            channel = self.channels[body.peer_session_id]
            if on_first is not None:
                await on_first(body.peer_session_id)
        channel.on_relay(body)

    async def _refuse(self, frame: Frame, code: str, message: str, body: RtcRelay | None
                      ) -> None:
        self.refused_total += 1
        b: dict[str, Any] = {"code": code, "message": message[:500]}
        sender = body.from_ if body is not None else (
            frame.b.get("from") if isinstance(frame.b, dict) else None)
        if isinstance(sender, str) and valid_address(sender):
            b["to"] = sender
        if body is not None:
            b.update(peer_session_id=body.peer_session_id, node_id=body.node_id)
        await self._send(Frame(t="error", b=b, re=frame.id))

    def status(self) -> dict[str, Any]:
        return {"grants": len(self.grants), "refused_total": self.refused_total,
                "channels": [c.status() for c in self.channels.values()]}


async def _quiet(coro: Coroutine[Any, Any, Any]) -> None:
    with contextlib.suppress(Exception):
        await coro


__all__ = ["RelayChannel", "RelayGrant", "RelayManager"]
