"""A peek: what the replica holding a node has in memory for it, read from any replica.

A node's live session (:class:`~.presence.SessionSnapshot`: rtt, outbox, reconnects,
resources, runtime) and its monitor packets (:class:`~.monitor.MonitorStore`, class C) live
only in the memory of the replica that holds the node. Issue 12 wants them visible from every
replica: a replica that does not hold the node asks the holder, on demand, with one
request/reply on the node's subject (nats_router.py, verb ``peek``), and shows the answer.
Lists never peek (one request per node would not scale); a single node's view and its
monitor packets do.

This module is the values, the wire form of the request and of the reply, their parsers, the
local source a holder answers from (:class:`LocalPeek`) and the reader the REST API and
``/ws`` use (:class:`Peeks`). The request and the reply travel between controllers only;
nothing on the wire to nodes changes.

Wire (MessagePack maps; controller to controller):

* request: ``{"m": bool, "topic": str | nil}``: with ``m`` the monitor packets are wanted,
  all topics or only ``topic``; without it only the session;
* reply: ``{"v": 1, "r": replica_id, "s": session | nil, "m": {topic: [packet, ...]} | nil,
  "cut": n}``: the session as :func:`session_map` writes it; ``m`` nil when not asked.

Rules:

* Rule 1 (only the holder answers): :class:`LocalPeek` answers None for a node this replica
  does not hold, and the router sends no reply then, so a requester hears the holder or
  nobody (NATS's "no responders" at once, else its timeout).
* Rule 2 (a reply is bounded): :func:`encode_reply` keeps the encoded reply within
  ``max_bytes`` (:data:`MAX_REPLY_BYTES`, half of NATS's default ``max_payload`` of 1 MiB).
  Every topic asked for is kept (maybe empty); packets that do not fit go, the oldest of the
  topics updated least recently first, and ``cut`` says how many went.
* Rule 3 (a reply is hostile input): :func:`parse_reply` returns a typed :class:`NodePeek`
  or None, never raises; a reply over ``max_bytes``, not MessagePack, not exactly this shape,
  or with any value outside its rules (each packet is checked again as a ``monitor.packet``
  body, each session part as the frame field it came from) is None as a whole: the caller
  counts it and answers as if nobody had replied.
* Rule 4 (a peek never fails a read): :class:`Peeks` answers from this replica's own memory
  (what it shows today) whenever the holder does not answer: no holder, NATS down, timeout,
  malformed reply.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from tether.protocol.codec import MAX_CONTAINER_LEN
from tether.protocol.errors import BadFrame
from tether.protocol.fields import (
    MAX_SECONDS,
    OutboxInfo,
    RuntimeInfo,
    SidecarInfo,
    TransportInfo,
    nonneg_int,
    seconds,
)
from tether.protocol.frames import MonitorPacket, NodeResources
from tether.protocol.rtc import NodeRtcReport
from tether.protocol.selfupdate import UpdateInfo
from tether.protocol.values import number_in, text

from .monitor import MonitorStore
from .presence import Presence, SessionSnapshot
from .replica import check_replica_id

REPLY_VERSION = 1
MAX_REPLY_BYTES = 512 << 10  # well under NATS's default max_payload (1 MiB)
MAX_REQUEST_BYTES = 512
MAX_TOPIC_CHARS = 128  # a monitor topic (MonitorPacket)
MAX_SESSION_ID_CHARS = 128
MAX_REMOTE_CHARS = 300  # "host:port", IPv6 included
# per packet and per topic, the encoded bytes a reply adds around them (array and map
# headers, at most 5 bytes each), reserved before any packet is placed
_TOPIC_OVERHEAD = 5 + 5
_HEAD_SLACK = 64


@dataclass(frozen=True, slots=True)
class PeekRequest:
    """What a peek asks for: the session always; the monitor packets when ``monitor``, of
    ``topic`` only when given."""

    monitor: bool = False
    topic: str | None = None


@dataclass(frozen=True, slots=True)
class NodePeek:
    """The holder's answer. ``monitor`` is None when it was not asked for, else topic ->
    packets (oldest first, topics in the order last updated) as ``GET …/monitor`` shows
    them; ``cut`` packets were left out to fit the reply (Rule 2)."""

    replica_id: str
    session: SessionSnapshot | None
    monitor: Mapping[str, list[dict[str, Any]]] | None = None
    cut: int = 0


PeekSource = Callable[[str, PeekRequest], "NodePeek | None"]
RemotePeek = Callable[[str, PeekRequest], Awaitable["NodePeek | None"]]


class LocalPeek:
    """The holder's side: a :data:`PeekSource` over this replica's presence and monitor
    store. None for a node no session here holds (Rule 1)."""

    def __init__(self, presence: Presence, monitor: MonitorStore, replica_id: str) -> None:
        self._presence = presence
        self._monitor = monitor
        self._replica_id = replica_id

    def __call__(self, node_id: str, request: PeekRequest) -> NodePeek | None:
        session = self._presence.snapshot(node_id)
        if session is None:
            return None
        packets = self._monitor.get(node_id, request.topic) if request.monitor else None
        return NodePeek(self._replica_id, session, packets)


class Peeks:
    """The reader's side, for the REST API and ``/ws``: a node held here is read from memory
    as before (no request); one held elsewhere is asked with ``remote`` (the router's
    ``peek``; None on a single controller, where nothing is held elsewhere). Rule 4."""

    def __init__(self, presence: Presence, monitor: MonitorStore,
                 remote: RemotePeek | None) -> None:
        self._presence = presence
        self._monitor = monitor
        self._remote = remote

    def _held_here(self, node_id: str) -> bool:
        return self._remote is None or self._presence.snapshot(node_id) is not None

    async def monitor(self, node_id: str, topic: str | None = None
                      ) -> tuple[dict[str, list[dict[str, Any]]], int]:
        """(topic -> packets, packets cut to fit the holder's reply) as
        :meth:`MonitorStore.get` shows them, from the holder's memory."""
        if not self._held_here(node_id):
            assert self._remote is not None
            peeked = await self._remote(node_id, PeekRequest(monitor=True, topic=topic))
            if peeked is not None and peeked.monitor is not None:
                return dict(peeked.monitor), peeked.cut
        return self._monitor.get(node_id, topic), 0

    async def session(self, node_id: str) -> NodePeek | None:
        """The holder's live session of a node held elsewhere (``session`` None while it is
        still handshaking); None when this replica holds it (read it from presence) or no
        holder answered."""
        if self._held_here(node_id):
            return None
        assert self._remote is not None
        return await self._remote(node_id, PeekRequest())


# -- the request ---------------------------------------------------------------------------


def encode_request(request: PeekRequest) -> bytes:
    data: bytes = msgpack.packb({"m": request.monitor, "topic": request.topic})
    return data


def parse_request(payload: bytes) -> PeekRequest | None:
    """The request ``payload`` holds, or None (Rule 3 applies to requests too)."""
    obj = _unpack(payload, MAX_REQUEST_BYTES)
    if not isinstance(obj, dict) or set(obj) - {"m", "topic"}:
        return None
    monitor, topic = obj.get("m", False), obj.get("topic")
    if not isinstance(monitor, bool):
        return None
    if topic is not None and not _is_topic(topic):
        return None
    return PeekRequest(monitor=monitor, topic=topic)


# -- the reply -----------------------------------------------------------------------------


def session_map(session: SessionSnapshot) -> dict[str, Any]:
    """``session`` as the reply carries it (the snapshot's fields, by name)."""
    return {"session_id": session.session_id, "last_frame_age_s": session.last_frame_age_s,
            "opened_at": session.opened_at, "remote": session.remote,
            "resumed": session.resumed, "max_frame": session.max_frame,
            "runtime": dict(session.runtime), "sidecar": dict(session.sidecar),
            "outbox": dict(session.outbox), "transport": dict(session.transport),
            "resources": dict(session.resources),
            "logs_dropped_total": session.logs_dropped_total, "rtc": dict(session.rtc),
            "update": dict(session.update)}


def encode_reply(peek: NodePeek, *, max_bytes: int = MAX_REPLY_BYTES) -> bytes:
    """``peek`` as one reply of at most ``max_bytes`` (Rule 2)."""
    head = {"v": REPLY_VERSION, "r": peek.replica_id,
            "s": None if peek.session is None else session_map(peek.session)}
    if peek.monitor is None:
        data: bytes = msgpack.packb({**head, "m": None, "cut": 0})
        return data
    topics = list(peek.monitor.items())
    budget = (max_bytes - len(msgpack.packb(head)) - _HEAD_SLACK
              - sum(len(msgpack.packb(t)) + _TOPIC_OVERHEAD for t, _ in topics))
    kept: dict[str, list[dict[str, Any]]] = {t: [] for t, _ in topics}
    cut = 0
    for topic, ring in reversed(topics):  # the topic updated most recently first
        taken: list[dict[str, Any]] = []
        for i, packet in enumerate(reversed(ring)):  # its newest packet first
            size = len(msgpack.packb(packet))
            if size > budget:
                cut += len(ring) - i
                budget = -1  # what is older than a packet that did not fit goes too
                break
            budget -= size
            taken.append(packet)
        kept[topic] = taken[::-1]
    data = msgpack.packb({**head, "m": kept, "cut": cut})
    if len(data) > max_bytes:  # only when the head alone is too large: no packets at all
        total = sum(len(ring) for _, ring in topics)
        data = msgpack.packb({**head, "m": {t: [] for t, _ in topics}, "cut": total})
    return data


def parse_reply(payload: bytes, *, node_id: str, max_bytes: int = MAX_REPLY_BYTES
                ) -> NodePeek | None:
    """The :class:`NodePeek` a reply about ``node_id`` holds, or None (Rule 3). Packets are
    rebuilt as this replica's own monitor store keeps them, under ``node_id``."""
    obj = _unpack(payload, max_bytes)
    if not isinstance(obj, dict) or obj.get("v") != REPLY_VERSION \
            or set(obj) != {"v", "r", "s", "m", "cut"}:
        return None
    replica_id, cut = obj["r"], obj["cut"]
    try:
        if not isinstance(replica_id, str):
            return None
        check_replica_id(replica_id)
        cut = nonneg_int(cut, "cut")
        session = None if obj["s"] is None else _session_of(obj["s"], node_id)
        monitor = None if obj["m"] is None else _monitor_of(obj["m"], node_id)
    except Exception:  # BadFrame, ValueError (the replica id), RecursionError: never raise
        return None
    return NodePeek(replica_id, session, monitor, cut)


def _session_of(value: object, node_id: str) -> SessionSnapshot:
    # "rtc" and "update" may be missing: a replica of an older release does not send them
    optional = {"rtc", "update"}
    if not isinstance(value, dict) or set(value) - optional != _SESSION_KEYS - optional:
        raise BadFrame("session must be a map of the snapshot's fields")
    session_id = value["session_id"]
    if session_id is not None:
        session_id = text(session_id, "session_id", min_len=1, max_len=MAX_SESSION_ID_CHARS)
        if not session_id.isprintable():
            raise BadFrame("session_id must be printable")
    resumed = value["resumed"]
    if not isinstance(resumed, bool):
        raise BadFrame("resumed must be a boolean")
    runtime = RuntimeInfo.from_map(value["runtime"], "runtime")  # no state: never reported
    return SessionSnapshot(
        node_id=node_id, session_id=session_id,
        last_frame_age_s=seconds(value["last_frame_age_s"], "last_frame_age_s"),
        opened_at=number_in(value["opened_at"], "opened_at", 0, MAX_SECONDS),
        runtime={"state": runtime.state, "version": runtime.version},
        remote=text(value["remote"], "remote", max_len=MAX_REMOTE_CHARS),
        resumed=resumed,
        max_frame=nonneg_int(value["max_frame"], "max_frame"),
        sidecar=SidecarInfo.from_map(value["sidecar"], "sidecar").to_map(),
        outbox=OutboxInfo.from_map(value["outbox"], "outbox").to_map(),
        transport=TransportInfo.from_map(value["transport"], "transport").to_map(),
        resources=NodeResources.from_body(_map(value["resources"], "resources")).to_body(),
        logs_dropped_total=nonneg_int(value["logs_dropped_total"], "logs_dropped_total"),
        rtc=_rtc_of(value.get("rtc")),
        update=UpdateInfo.from_map(value.get("update"), "update").to_map())


def _rtc_of(value: object) -> dict[str, Any]:
    """The holder's last node.rtc report, checked as the gateway checks it; {} for none."""
    if value is None or value == {}:
        return {}
    return NodeRtcReport.from_body(_map(value, "rtc")).to_body()


_SESSION_KEYS = frozenset(session_map(SessionSnapshot(
    node_id="", session_id=None, last_frame_age_s=0.0, opened_at=0.0, runtime={})))


def _monitor_of(value: object, node_id: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for topic, ring in _map(value, "m").items():
        if not _is_topic(topic) or not isinstance(ring, list):
            raise BadFrame("monitor must map topics to lists of packets")
        packets = []
        for item in ring:
            packet = MonitorPacket.from_body(_map(item, "packet"))
            if packet.topic != topic:
                raise BadFrame("a packet is filed under another topic")
            packets.append({"node_id": node_id, **packet.to_body()})
        out[topic] = packets
    return out


def _map(value: object, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadFrame(f"{name} must be a map")
    return value


def _is_topic(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_TOPIC_CHARS


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack ext type {code} is not allowed")


def _unpack(payload: bytes, max_bytes: int) -> object:
    """``payload`` decoded within ``max_bytes``, or None when it is not one bounded
    MessagePack value (an ext type, bytes where text belongs, invalid UTF-8 included)."""
    if len(payload) > max_bytes:
        return None
    try:
        obj: object = msgpack.unpackb(
            payload, raw=False, strict_map_key=True, use_list=True, ext_hook=_refuse_ext,
            max_str_len=max_bytes, max_bin_len=0, max_array_len=MAX_CONTAINER_LEN,
            max_map_len=MAX_CONTAINER_LEN, max_ext_len=0)
    except Exception:  # msgpack raises many types (ExtraData, ValueError, ...)
        return None
    return obj


__all__ = ["MAX_REPLY_BYTES", "LocalPeek", "NodePeek", "PeekRequest", "Peeks",
           "RemotePeek", "encode_reply", "encode_request", "parse_reply", "parse_request",
           "session_map"]
