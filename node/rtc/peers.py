"""The node's peers: one aiortc ``RTCPeerConnection`` per ``peer_session_id``, long-lived,
negotiated through ``rtc.*`` frames (docs/protocol.md "Media plane (node side)").

Where an ``rtc.*`` frame enters: :meth:`RtcManager.receive` (parsed once with
``protocol/rtc.parse_rtc``); where it is applied: :meth:`Peer._apply`, one frame at a time
per peer (its bounded queue is the serialisation: one authority at a time).

Rules:

1. A peer belongs to the end that opened it (its ``from``): a frame naming a peer this
   node does not have with that end gets ``error`` ``rtc_unknown_peer``, never applied.
2. An offer for the current peer is a renegotiation on the same connection. A new
   ``peer_session_id`` from the same end replaces that end's peer; a peer whose connection
   failed or closed gets a new connection on its next offer. Every replacement is
   recorded with its reason (:attr:`RtcManager.history`).
3. A ``negotiation_id`` names one round: an offer reusing one, and an answer or candidate
   for a round that is not current, get ``error`` ``rtc_stale`` and change nothing.
4. Glare: the node is the polite end. aiortc has no rollback, so when a remote offer
   meets the node's own unanswered offer the node drops its offer with its connection
   (it never connected: the node offers only to open a peer) and answers on a new one;
   an answer to the dropped offer is then stale.
5. At most ``max_peers`` peers; an offer for one more gets ``error`` ``unavailable``.
6. Every task here (per-peer workers, control requests, media sinks) lives in a task
   group: the manager's, cancelled and awaited by :meth:`RtcManager.run`'s owner.
   aiortc's own tasks have no owner, so every connection is closed, and the close
   awaited, when its peer is replaced or closed and when the node stops.
7. Media failures stay here: nothing in this package feeds the node's readiness.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiortc import (
    MediaStreamTrack,
    RTCDataChannel,
    RTCPeerConnection,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaRelay
from aiortc.sdp import candidate_from_sdp

from tether.common.tasks import cancel_and_wait
from tether.protocol.errors import BadFrame
from tether.protocol.frames import Frame
from tether.protocol.rtc import (
    MAX_REPORT_HISTORY,
    MAX_REPORT_PEERS,
    RtcAnswer,
    RtcBody,
    RtcClose,
    RtcIce,
    RtcOffer,
    parse_rtc,
    valid_address,
)

from .control import CommandDispatcher, ControlChannel
from .filexfer import FileEndpoint, attach_file_channel
from .ice import IceSettings
from .media import LoopbackTrack, TestPatternTrack, VideoSource, describe
from .subflow import Subflow, new_subflows

logger = logging.getLogger(__name__)

MAX_PEERS = 16
MAX_QUEUED_FRAMES = 32  # per peer; one more is refused (rate_limited): the sender backs off
MAX_USED_NEGOTIATIONS = 256  # ids remembered per peer for rule 3 (oldest forgotten)
MAX_HISTORY = 32
NEGOTIATE_TIMEOUT_S = 20.0  # one offer/answer step, candidate gathering included
CLOSE_TIMEOUT_S = 10.0
STATS_INTERVAL_S = 2.0
# A peer whose connection failed or closed and got no new offer, or that never connected,
# is closed (the other end told) after this long: a vanished browser frees its slot.
LINGER_S = 60.0

SendFrame = Callable[[Frame], Awaitable[bool]]
# attach_file_channel(channel, workspace_dir): serves a ``file`` data channel
# (node/rtc/filexfer.py, the file subflow) and returns its endpoint, which the peer owns:
# closed, and its tasks awaited, when the peer's connection is replaced or the peer closes.
FileHook = Callable[[RTCDataChannel, Path], FileEndpoint]


def default_file_hook() -> FileHook:
    """``node.rtc.filexfer.attach_file_channel``: the node serves uploads into and
    downloads from its workspace."""
    return attach_file_channel


@dataclass(frozen=True, slots=True)
class Replacement:
    peer_session_id: str
    at: float
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"peer_session_id": self.peer_session_id, "at": self.at, "reason": self.reason}


def _pair_type(pc: RTCPeerConnection) -> str | None:
    """The selected candidate pair's type from aioice's nominated pair: ``relay`` when
    either end is relayed, ``srflx``/``prflx`` when either is reflexive, else ``host``."""
    transports = [t.receiver.transport.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        transports.append(pc.sctp.transport.transport)
    for ice in transports:
        nominated = getattr(ice._connection, "_nominated", {})
        for pair in nominated.values():
            types = {pair.local_candidate.type, pair.remote_candidate.type}
            for kind in ("relay", "srflx", "prflx"):
                if kind in types:
                    return kind
            return "host"
    return None


class Peer:
    """One peer session: its connection (replaced only per rule 2), its subflows and
    the queue of frames waiting to be applied."""

    def __init__(self, manager: RtcManager, peer_session_id: str, remote: str,
                 node_id: str) -> None:
        self.manager = manager
        self.peer_session_id = peer_session_id
        self.remote = remote
        self.node_id = node_id
        self.pc = self._new_pc()
        self.subflows = new_subflows()
        self.created_at = time.time()
        self.state_since = time.monotonic()  # when ``state`` last changed (the reaper's)
        self.negotiations_total = 0
        self.connections_total = 1
        self.current: str | int | None = None  # the round applied last
        self.local_offer: str | int | None = None  # the node's own unanswered offer
        self.used: deque[str | int] = deque(maxlen=MAX_USED_NEGOTIATIONS)
        # (body, frame id): the id is the ``re`` of an error about it
        self.queue: asyncio.Queue[tuple[RtcBody, str | None]] = asyncio.Queue(MAX_QUEUED_FRAMES)
        self._re: str | None = None
        self.closed = asyncio.Event()
        self.close_reason: str | None = None
        self.channels: dict[str, RTCDataChannel] = {}
        self.control: ControlChannel | None = None
        self.file: FileEndpoint | None = None  # the file subflow's endpoint (owned)
        self.received: dict[str, MediaStreamTrack] = {}
        self._relay = MediaRelay()
        self._tasks: set[asyncio.Task[None]] = set()
        self.last_error: str | None = None

    # -- connection ---------------------------------------------------------------------

    def _new_pc(self) -> RTCPeerConnection:
        pc = RTCPeerConnection(self.manager.ice.rtc_configuration())
        pc.on("datachannel", lambda channel: self._on_datachannel(pc, channel))
        pc.on("track", lambda track: self._on_track(pc, track))
        pc.on("connectionstatechange", lambda: self._on_state(pc))
        return pc

    async def _replace_pc(self, reason: str) -> None:
        """A new connection for this peer session (rule 2), recording why."""
        old, self.pc = self.pc, self._new_pc()
        self._stop_tasks()
        await self.close_file()
        await _close_pc(old)
        self.connections_total += 1
        self.state_since = time.monotonic()
        self.current = self.local_offer = None
        self.channels.clear()
        self.control = None
        self.received.clear()
        for flow in self.subflows.values():
            flow.set("idle")
        self.manager.record(self.peer_session_id, reason)

    @property
    def state(self) -> str:
        if self.closed.is_set():
            return "closed"
        state = self.pc.connectionState
        return state if state in ("new", "connecting", "connected", "failed", "closed") \
            else "connecting"

    def _on_state(self, pc: RTCPeerConnection) -> None:
        if pc is not self.pc:
            return
        self.state_since = time.monotonic()
        if pc.connectionState == "failed":
            for flow in self.subflows.values():
                if flow.state in ("open", "degraded"):
                    flow.error("the peer's connection failed", state="failed")
            self.manager.record(self.peer_session_id, "connection failed (ICE or DTLS); "
                                "the next offer gets a new connection")
        self.manager.changed()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the manager's task group, cancelled when this peer's connection
        is replaced or the peer closes."""
        task = self.manager.tg.create_task(self._guarded(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except Exception:  # one subflow's bug never takes the node's task group down
            logger.exception("peer task failed", extra={"peer_session_id":
                                                        self.peer_session_id})

    def _stop_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def wait_tasks(self) -> None:
        """Await the tasks :meth:`_stop_tasks` cancelled (never the caller itself)."""
        others = [t for t in self._tasks if t is not asyncio.current_task()]
        if others:
            await asyncio.gather(*others, return_exceptions=True)

    # -- channels and tracks ------------------------------------------------------------

    def _on_datachannel(self, pc: RTCPeerConnection, channel: RTCDataChannel) -> None:
        if pc is not self.pc:
            return
        label = channel.label
        if label in self.channels and self.channels[label].readyState == "open":
            channel.close()  # one channel per subflow: a second one is refused
            return
        self.channels[label] = channel
        if label == "control":
            flow = self.subflows["control"]
            flow.set("open")
            self.control = ControlChannel(channel, self.manager.dispatcher, flow,
                                          spawn=self.spawn)
            channel.on("close", lambda: self._channel_closed(channel, flow))
        elif label == "file":
            self._attach_file(channel)
        else:
            channel.close()  # an unknown subflow: closed, the peer stays

    def _attach_file(self, channel: RTCDataChannel, *, serve: bool = True) -> None:
        """Serve ``channel`` as the ``file`` subflow; an endpoint it replaces is closed
        (its tasks end with it: filexfer's ``close`` cancels them). ``serve`` false (the
        channel this node opened, node <-> node): the endpoint only sends, so the node it
        opened the peer to cannot fetch this node's files."""
        flow = self.subflows["file"]
        flow.set("open")
        channel.on("close", lambda: self._channel_closed(channel, flow))
        old, self.file = self.file, None
        if old is not None:
            old.close()
        try:
            self.file = (self.manager.file_hook(channel, self.manager.workspace_dir)
                         if serve else
                         attach_file_channel(channel, self.manager.workspace_dir,
                                             serve=False))
        except Exception as exc:
            flow.error(f"file channel failed to start: {exc}")
            channel.close()

    async def close_file(self) -> None:
        """Close the file subflow's endpoint and await its tasks (its counts are kept in
        the subflow)."""
        endpoint, self.file = self.file, None
        if endpoint is not None:
            self._sync_file(endpoint)
            await endpoint.aclose()

    def _sync_file(self, endpoint: FileEndpoint | None = None) -> None:
        """Copy the file endpoint's bytes, errors and transfers into the ``file``
        subflow (what status() and the node.rtc report show)."""
        endpoint = endpoint or self.file
        if endpoint is None:
            return
        flow = self.subflows["file"]
        view = endpoint.status()
        flow.bytes_in, flow.bytes_out = view["bytes_in"], view["bytes_out"]
        flow.errors_total = view["errors_total"]
        flow.last_error = view["last_error"]
        flow.detail["transfers"] = view["transfers"]
        flow.detail["completed"] = view["completed"]

    def _channel_closed(self, channel: RTCDataChannel, flow: Subflow) -> None:
        if self.channels.get(channel.label) is channel:
            # The peer lives: recovery is local (the other end opens a new channel).
            flow.set("closed" if self.closed.is_set() else "idle")
            self.manager.changed()

    def _on_track(self, pc: RTCPeerConnection, track: MediaStreamTrack) -> None:
        if pc is not self.pc or track.kind not in ("video", "audio"):
            return
        self.received[track.kind] = track
        # aiortc queues decoded frames without bound: something must read every track.
        self.spawn(self._sink(track.kind, self._relay.subscribe(track, buffered=False)))

    async def _sink(self, kind: str, track: MediaStreamTrack) -> None:
        flow = self.subflows[kind]
        frames = 0
        try:
            while True:
                await track.recv()
                frames += 1
                flow.detail["frames_in"] = frames
        except Exception:  # MediaStreamError: the remote track ended
            pass
        finally:
            track.stop()

    def _media_shape(self) -> None:
        """After a remote offer: send the node's video when the offer asks to receive it
        (pinned), stop it otherwise; audio is received only (looped back in ``loopback``
        mode). Start and stop are ``replaceTrack`` and direction changes, never a new
        connection, so the data channels stay up."""
        for transceiver in self.pc.getTransceivers():
            _count_inbound(transceiver, self.subflows[transceiver.kind])
            offered = transceiver._offerDirection or "inactive"  # our side's best
            may_send = offered in ("sendonly", "sendrecv")
            may_receive = offered in ("recvonly", "sendrecv")
            kind = transceiver.kind
            flow = self.subflows[kind]
            if kind == "video" and may_send:
                if transceiver.sender.track is None:
                    transceiver.sender.replaceTrack(self._video_track(flow))
                if isinstance(transceiver.sender.track, LoopbackTrack):
                    # loopback mode: the other end's video while this offer sends it
                    transceiver.sender.track.follow(
                        self.received.get("video") if may_receive else None, self._relay)
                flow.detail["sending"] = describe(transceiver.sender.track)
            elif kind == "audio" and may_send and self.manager.video.setting == "loopback" \
                    and "audio" in self.received:
                if transceiver.sender.track is None:
                    transceiver.sender.replaceTrack(
                        self._relay.subscribe(self.received["audio"]))
                flow.detail["sending"] = "loopback"
            else:
                may_send = False
                if transceiver.sender.track is not None:
                    transceiver.sender.track.stop()
                    transceiver.sender.replaceTrack(None)
                flow.detail.pop("sending", None)
            _set_direction(transceiver, may_send, may_receive)
            if flow.state != "degraded" or not (may_send or may_receive):
                flow.set("open" if may_send or may_receive else "idle")

    def _video_track(self, flow: Subflow) -> MediaStreamTrack:
        """The configured video, or the test pattern when the source fails (the video
        subflow degraded with the reason; the offer is still answered)."""
        try:
            return self.manager.video.track(self.received.get("video"))
        except Exception as exc:  # av/MediaPlayer: a missing file, a busy device...
            flow.error(f"video source {self.manager.video.setting!r} failed: {exc}")
            return TestPatternTrack()

    # -- negotiation --------------------------------------------------------------------

    async def work(self) -> None:
        """Apply this peer's frames in order, until it closes (rule 6: the manager's task
        group owns this loop)."""
        try:
            while not self.closed.is_set():
                body, self._re = await self.queue.get()
                try:
                    async with asyncio.timeout(NEGOTIATE_TIMEOUT_S):
                        await self._apply(body)
                except Exception as exc:  # aiortc refused it: the peer reports, lives on
                    self.last_error = f"{type(exc).__name__}: {exc}"[:200]
                    logger.warning("rtc frame could not be applied", extra={
                        "peer_session_id": self.peer_session_id, "detail": self.last_error})
                    await self.manager.error(body, "bad_frame", "the node could not apply "
                                             f"this {body.TYPE}: {self.last_error}",
                                             re=self._re)
                    if self.pc.signalingState not in ("stable", "closed"):
                        await self._replace_pc(f"negotiation failed: {self.last_error}")
                self.manager.changed()
        finally:
            self._stop_tasks()
            with contextlib.suppress(Exception):
                await asyncio.shield(_close_pc(self.pc))
            for flow in self.subflows.values():
                flow.set("closed")

    async def _apply(self, body: RtcBody) -> None:
        if isinstance(body, RtcOffer):
            await self._on_offer(body)
        elif isinstance(body, RtcAnswer):
            if self.local_offer is None or body.negotiation_id != self.local_offer:
                await self.manager.error(body, "rtc_stale", f"answer for negotiation "
                                         f"{body.negotiation_id!r}, which is not the node's "
                                         "outstanding offer", re=self._re)
                return
            await self.pc.setRemoteDescription(RTCSessionDescription(body.sdp, "answer"))
            self.current, self.local_offer = body.negotiation_id, None
            self.negotiations_total += 1
        elif isinstance(body, RtcIce):
            if body.negotiation_id not in (self.current, self.local_offer):
                await self.manager.error(body, "rtc_stale", f"candidate for negotiation "
                                         f"{body.negotiation_id!r}, which is not current",
                                         re=self._re)
                return
            await self.pc.addIceCandidate(_candidate(body))
        elif isinstance(body, RtcClose):
            await self.manager.finish(self, f"closed by {self.remote}: "
                                      f"{body.reason or 'no reason given'}")

    async def _on_offer(self, offer: RtcOffer) -> None:
        if offer.negotiation_id in self.used:
            await self.manager.error(offer, "rtc_stale",
                                     f"negotiation {offer.negotiation_id!r} was used already; "
                                     "offer with a new negotiation_id", re=self._re)
            return
        if self.pc.connectionState in ("failed", "closed"):
            await self._replace_pc(f"offer {offer.negotiation_id!r} after the connection "
                                   f"{self.pc.connectionState}")
        elif self.pc.signalingState == "have-local-offer":  # glare (rule 4)
            dropped = self.local_offer
            await self._replace_pc(f"glare: the remote offer {offer.negotiation_id!r} won "
                                   f"over the node's offer {dropped!r}")
        self.used.append(offer.negotiation_id)
        await self.pc.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
        self._media_shape()
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        self.current = offer.negotiation_id
        self.negotiations_total += 1
        await self.manager.send(RtcAnswer(
            node_id=offer.node_id, peer_session_id=self.peer_session_id,
            negotiation_id=offer.negotiation_id, from_=None, to=self.remote,
            sdp=self.pc.localDescription.sdp))

    async def offer(self, negotiation_id: str | int) -> None:
        """The node opens this peer: video and audio transceivers up front, the
        ``control`` and ``file`` channels, then ``rtc.offer`` (half-trickle: the
        candidates are in the SDP)."""
        pc = self.pc
        pc.addTransceiver("video", direction="sendrecv")
        pc.addTransceiver("audio", direction="recvonly")
        for label in ("control", "file"):
            self.channels[label] = pc.createDataChannel(label)
        self._attach_file(self.channels["file"], serve=False)
        self.used.append(negotiation_id)
        self.local_offer = negotiation_id
        await pc.setLocalDescription(await pc.createOffer())
        await self.manager.send(RtcOffer(
            node_id=self.node_id, peer_session_id=self.peer_session_id,
            negotiation_id=negotiation_id, from_=None, to=self.remote,
            sdp=pc.localDescription.sdp))

    async def refresh_stats(self) -> None:
        """Bytes sent per media subflow from aiortc's stats (read every STATS_INTERVAL_S;
        bytes received are counted as they arrive, :func:`_count_inbound`)."""
        pc = self.pc
        for transceiver in pc.getTransceivers():
            flow = self.subflows.get(transceiver.kind)
            if flow is None or transceiver.stopped:
                continue
            with contextlib.suppress(Exception):
                sent = await transceiver.sender.getStats()
                flow.bytes_out = sum(getattr(s, "bytesSent", 0) for s in sent.values()
                                     if s.type == "outbound-rtp")

    def status(self) -> dict[str, Any]:
        pc = self.pc
        self._sync_file()
        return {"peer_session_id": self.peer_session_id, "remote": self.remote,
                "state": self.state, "ice_state": pc.iceConnectionState,
                "signaling_state": pc.signalingState, "candidate_pair": _pair_type(pc),
                "negotiations_total": self.negotiations_total,
                "connections_total": self.connections_total,
                "negotiation_id": self.current, "created_at": self.created_at,
                "last_error": self.last_error,
                "subflows": {name: flow.as_dict() for name, flow in self.subflows.items()}}


def _count_inbound(transceiver: RTCRtpTransceiver, flow: Subflow) -> None:
    """Count the RTP payload bytes ``transceiver`` receives into ``flow`` (aiortc's
    inbound stats have no byte count): its DTLS transport hands every packet to the
    receiver's ``_handle_rtp_packet``, looked up on the instance, so a wrapper there sees
    them all. Installed once per receiver."""
    receiver = transceiver.receiver
    if "_handle_rtp_packet" in vars(receiver):
        return
    handle = receiver._handle_rtp_packet

    async def counted(packet: Any, arrival_time_ms: int) -> None:
        flow.bytes_in += len(packet.payload)
        await handle(packet, arrival_time_ms)

    receiver._handle_rtp_packet = counted  # type: ignore[method-assign]


def _set_direction(transceiver: RTCRtpTransceiver, send: bool, receive: bool) -> None:
    transceiver.direction = ("sendrecv" if send and receive else "sendonly" if send
                             else "recvonly" if receive else "inactive")


def _candidate(body: RtcIce) -> Any:
    """The aiortc candidate of a trickled ``rtc.ice`` (None: end of candidates)."""
    if not body.candidate:
        return None
    line = body.candidate
    if line.startswith("candidate:"):
        line = line[len("candidate:"):]
    try:
        candidate = candidate_from_sdp(line)
    except (ValueError, IndexError) as exc:
        raise BadFrame(f"candidate does not parse: {exc}") from None
    candidate.sdpMid = body.sdp_mid
    candidate.sdpMLineIndex = body.sdp_mline_index
    if candidate.sdpMid is None and candidate.sdpMLineIndex is None:
        candidate.sdpMLineIndex = 0
    return candidate


async def _close_pc(pc: RTCPeerConnection) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await pc.close()


class RtcManager:
    """Every peer of this node (rules in the module docstring). Owned by the runtime:
    :meth:`run` holds the task group; :meth:`close` ends every peer (and tells each
    other end), then the owner cancels :meth:`run`."""

    def __init__(self, *, node_id: str, send: SendFrame, dispatcher: CommandDispatcher,
                 ice: IceSettings | None = None, video: VideoSource | None = None,
                 workspace_dir: Path = Path("."), max_peers: int = MAX_PEERS,
                 file_hook: FileHook | None = None,
                 on_change: Callable[[], None] | None = None) -> None:
        self.node_id = node_id
        self._send = send
        self.dispatcher = dispatcher
        self.ice = ice or IceSettings()
        self.video = video or VideoSource()
        self.workspace_dir = workspace_dir
        self.max_peers = max_peers
        self.file_hook = file_hook or default_file_hook()
        self._on_change = on_change
        self.peers: dict[str, Peer] = {}
        self.history: deque[Replacement] = deque(maxlen=MAX_HISTORY)
        self.errors_total: dict[str, int] = {}
        self.frames_total = 0
        self._tg: asyncio.TaskGroup | None = None
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._offers_made = 0
        self._closing: set[Peer] = set()  # detached, their connection not closed yet
        self.tick_s = STATS_INTERVAL_S
        self.linger_s = LINGER_S
        self.ready = asyncio.Event()  # set once run() holds its task group

    @property
    def tg(self) -> asyncio.TaskGroup:
        if self._tg is None:
            raise RuntimeError("RtcManager.run() is not running")
        return self._tg

    async def run(self) -> None:
        """Own the peers' tasks until cancelled; every connection is closed on the way
        out (rule 6)."""
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                self.ready.set()
                while True:
                    await asyncio.sleep(self.tick_s)
                    for peer in list(self.peers.values()):
                        await peer.refresh_stats()
                        await self._reap(peer)
        finally:
            self._tg = None
            self.ready.clear()
            await asyncio.shield(self._close_all())

    async def _reap(self, peer: Peer) -> None:
        """Close a peer left failed, closed or never connected for ``linger_s``."""
        state = peer.state
        if state == "connected" or time.monotonic() - peer.state_since < self.linger_s:
            return
        why = (f"connection {state} and no new offer" if state in ("failed", "closed")
               else "never connected")
        await self.finish(peer, f"{why} within {self.linger_s:g} s", tell=True)

    async def _close_all(self) -> None:
        for peer in [*self.peers.values(), *self._closing]:
            with contextlib.suppress(Exception):
                await _close_pc(peer.pc)
                await peer.close_file()
        self.peers.clear()
        self._closing.clear()

    async def close(self, reason: str = "the node is stopping") -> None:
        """End every peer, telling each other end with ``rtc.close``."""
        for peer in list(self.peers.values()):
            await self.finish(peer, reason, tell=True)

    def changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    def record(self, peer_session_id: str, reason: str) -> None:
        self.history.append(Replacement(peer_session_id, time.time(), reason[:200]))
        logger.info("rtc peer replaced or closed", extra={
            "peer_session_id": peer_session_id, "detail": reason[:200]})
        self.changed()

    # -- frames in and out --------------------------------------------------------------

    async def send(self, body: RtcBody) -> bool:
        return await self._send(body.frame())

    async def error(self, body: RtcBody | None, code: str, message: str, *,
                    re: str | None = None, to: str | None = None) -> None:
        """An ``error`` frame to the end that sent ``body``: ``to`` and the ids ride with
        it so the controller can route it (docs/protocol.md)."""
        self.errors_total[code] = self.errors_total.get(code, 0) + 1
        b: dict[str, Any] = {"code": code, "message": message[:500]}
        if body is not None:
            b.update(peer_session_id=body.peer_session_id,
                     negotiation_id=body.negotiation_id, node_id=body.node_id)
            to = to or body.from_
        if to is not None:
            b["to"] = to
        await self._send(Frame(t="error", b=b, re=re))

    async def receive(self, frame: Frame) -> None:
        """One ``rtc.*`` frame from the link: parsed once; refused (an ``error`` frame
        back, ``re`` = its id) or queued to its peer. Never raises for what a peer sent."""
        self.frames_total += 1
        try:
            body = parse_rtc(frame.t, frame.b)
        except BadFrame as exc:
            sender = frame.b.get("from") if isinstance(frame.b, dict) else None
            await self.error(None, exc.code, exc.message, re=frame.id,
                             to=sender if isinstance(sender, str)
                             and valid_address(sender) else None)
            return
        if body.from_ is None:
            await self.error(None, "bad_frame", "rtc frames reach a node with 'from' "
                             "stamped by the controller", re=frame.id)
            return
        if self._tg is None:  # not started, or stopping: nothing may be opened or applied
            await self.error(body, "unavailable", "this node's media plane is not running; "
                             "try again later", re=frame.id)
            return
        peer = self.peers.get(body.peer_session_id)
        if peer is not None and peer.remote != body.from_:
            peer = None  # rule 1: not that end's peer
            if isinstance(body, RtcOffer):
                await self.error(body, "rtc_unknown_peer", "that peer_session_id is another "
                                 "end's; choose a new one", re=frame.id)
                return
        if peer is None:
            if not isinstance(body, RtcOffer):
                await self.error(body, "rtc_unknown_peer", f"no peer "
                                 f"{body.peer_session_id!r} with {body.from_} here",
                                 re=frame.id)
                return
            peer = await self._open(body, frame.id)
            if peer is None:
                return
        try:
            peer.queue.put_nowait((body, frame.id))
        except asyncio.QueueFull:
            await self.error(body, "rate_limited", f"more than {MAX_QUEUED_FRAMES} rtc "
                             "frames waiting for this peer; slow down", re=frame.id)

    async def _open(self, offer: RtcOffer, frame_id: str | None) -> Peer | None:
        old = next((p for p in self.peers.values() if p.remote == offer.from_), None)
        if old is None and len(self.peers) >= self.max_peers:
            await self.error(offer, "unavailable", f"this node has {self.max_peers} peers "
                             "open, its most; close one first", re=frame_id)
            return None
        if old is not None:  # closed in the background: the link's read path never waits
            await self.finish(old, f"replaced by peer session {offer.peer_session_id!r} "
                              "from the same end", background=True)
        assert offer.from_ is not None
        return self._start(Peer(self, offer.peer_session_id, offer.from_, offer.node_id))

    def _start(self, peer: Peer) -> Peer:
        self.peers[peer.peer_session_id] = peer
        self._workers[peer.peer_session_id] = self.tg.create_task(
            peer.work(), name=f"rtc:{peer.peer_session_id}")
        self.changed()
        return peer

    async def open_peer(self, to: str, node_id: str, peer_session_id: str) -> Peer:
        """The node offers a new peer to ``to`` (node <-> node: ``node_id`` is the other
        node's id); the answer comes back through :meth:`receive`."""
        if len(self.peers) >= self.max_peers:
            raise RuntimeError(f"this node has {self.max_peers} peers open, its most")
        peer = self._start(Peer(self, peer_session_id, to, node_id))
        self._offers_made += 1
        await peer.offer(f"{self.node_id}-{self._offers_made}")
        return peer

    async def finish(self, peer: Peer, reason: str, *, tell: bool = False,
                     background: bool = False) -> None:
        """Close ``peer`` for good, recording ``reason``; its worker ends and its
        connection's close is awaited (rule 6), here or, with ``background``, in a task
        of the manager's group (the peer is gone from :attr:`peers` at once either way)."""
        if self.peers.get(peer.peer_session_id) is not peer:
            return
        del self.peers[peer.peer_session_id]
        peer.close_reason = reason
        peer.closed.set()
        self.record(peer.peer_session_id, reason)
        if tell:
            await self.send(RtcClose(node_id=peer.node_id,
                                     peer_session_id=peer.peer_session_id,
                                     negotiation_id=peer.current or 0, from_=None,
                                     to=peer.remote, reason=reason[:200]))
        worker = self._workers.pop(peer.peer_session_id, None)
        self._closing.add(peer)
        if background:
            self.tg.create_task(self._teardown(peer, worker),
                                name=f"rtc-close:{peer.peer_session_id}")
        else:
            await self._teardown(peer, worker)

    async def _teardown(self, peer: Peer, worker: asyncio.Task[None] | None) -> None:
        if worker is not None and worker is not asyncio.current_task():
            await cancel_and_wait(worker)
        peer._stop_tasks()
        # Also when the worker never ran (cancelled before its first step): aiortc's own
        # tasks end only with the connection.
        await asyncio.shield(_close_pc(peer.pc))
        await peer.close_file()
        await peer.wait_tasks()
        self._closing.discard(peer)

    def status(self) -> dict[str, Any]:
        """For /status, /metrics and the controller (bounded: at most max_peers peers
        and MAX_HISTORY replacements)."""
        return {"peers": [p.status() for p in self.peers.values()],
                "max_peers": self.max_peers,
                "ice": {"host_addresses": list(self.ice.host_addresses),
                        "stun": len(self.ice.stun_urls), "turn": len(self.ice.turn)},
                "video_source": self.video.setting,
                "frames_total": self.frames_total,
                "errors_total": dict(self.errors_total),
                "history": [r.as_dict() for r in self.history]}

    def report(self) -> dict[str, Any]:
        """The ``node.rtc`` body (protocol/rtc.py ``NodeRtcReport``): the peers' state for
        the controller, within that body's bounds."""
        peers = []
        for peer in list(self.peers.values())[:MAX_REPORT_PEERS]:
            peer._sync_file()
            peers.append({
                "peer_session_id": peer.peer_session_id, "remote": peer.remote,
                "state": peer.state, "ice_state": peer.pc.iceConnectionState,
                "candidate_pair": _pair_type(peer.pc),
                "negotiations_total": peer.negotiations_total,
                "connections_total": peer.connections_total,
                "subflows": {name: {"state": f.state, "bytes_in": f.bytes_in,
                                    "bytes_out": f.bytes_out, "errors_total": f.errors_total}
                             for name, f in peer.subflows.items()}})
        return {"peers": peers,
                "history": [r.as_dict() for r in list(self.history)[-MAX_REPORT_HISTORY:]]}
