"""WebRTC signalling bodies (class E ``rtc.*``, PROTOCOL.md §9, docs/protocol.md "Media
plane"), parsed once at the boundary, with no I/O.

Ids (every body):
* ``node_id``: the node end of the peer (for node <-> node, the node the offer was made
  to; it stays the same for every message of that peer, both ways);
* ``peer_session_id``: one long-lived peer (``[A-Za-z0-9_.:-]``, 1…64 chars);
* ``negotiation_id``: one offer/answer round within that peer: a string (1…64 chars, same
  alphabet) or an integer 0…2^53 (what a browser's counter gives), echoed back exactly as
  it came. Within a peer session a ``negotiation_id`` is used for one round only: an
  answer or a candidate naming a round that is not the current one is stale, and an offer
  reusing an id is superseded; neither is applied (the node answers ``error``
  ``rtc_stale``).

Routing (stamped by the controller, never trusted from the sender): a frame the
controller hands to a node or a ``/ws`` client carries ``from``, the address of the other
end (``node:<node_id>`` or ``client:<id>``); a frame a node sends carries ``to``, the
address it answers (the ``from`` it was given). A ``from`` sent by a peer is overwritten;
a ``to`` the sender may not reach is refused (``forbidden``).

Rule (bounded): ``sdp`` at most :data:`MAX_SDP` bytes of UTF-8, a candidate line at most
:data:`MAX_CANDIDATE`; nothing else is free text but ``reason`` (:data:`MAX_REASON`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import BadFrame
from .frames import Body, as_bytes

MAX_SDP = 64 << 10
MAX_CANDIDATE = 1024
MAX_REASON = 200
MAX_NEGOTIATION_INT = (1 << 53) - 1
MAX_RELAY_DATA = 60 << 10  # bytes of one rtc.relay frame's data (an SCTP message's size)
MAX_RELAY_WINDOW = 16 << 20  # the most a receiver may announce in an rtc.relay ack
MAX_RELAY_SEQ = (1 << 53) - 1
MAX_EXPIRES_MS = 1 << 53

_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_NODE_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_ADDRESS = re.compile(r"(node:[a-z0-9][a-z0-9-]{0,62}|client:[A-Za-z0-9_.:-]{1,96})")


def _node_id(b: Mapping[str, Any]) -> str:
    value = b.get("node_id")
    if not isinstance(value, str) or not _NODE_ID.fullmatch(value):
        raise BadFrame("field 'node_id' must match [a-z0-9][a-z0-9-]{0,62}")
    return value


def _ident(b: Mapping[str, Any], name: str) -> str:
    value = b.get(name)
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise BadFrame(f"field {name!r} must be 1-64 characters of [A-Za-z0-9_.:-]")
    return value


def _negotiation_id(b: Mapping[str, Any]) -> str | int:
    value = b.get("negotiation_id")
    if isinstance(value, bool):
        raise BadFrame("field 'negotiation_id' must be a string or an integer")
    if isinstance(value, int):
        if not 0 <= value <= MAX_NEGOTIATION_INT:
            raise BadFrame(f"field 'negotiation_id' must be 0..{MAX_NEGOTIATION_INT}")
        return value
    if isinstance(value, str) and _ID.fullmatch(value):
        return value
    raise BadFrame("field 'negotiation_id' must be an integer or 1-64 characters of "
                   "[A-Za-z0-9_.:-]")


def _address(b: Mapping[str, Any], name: str) -> str | None:
    value = b.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not _ADDRESS.fullmatch(value):
        raise BadFrame(f"field {name!r} must be node:<node_id> or client:<id>")
    return value


def _text(b: Mapping[str, Any], name: str, max_bytes: int, *, required: bool) -> str | None:
    value = b.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise BadFrame(f"field {name!r} must be a string")
    if len(value) > max_bytes or len(value.encode("utf-8", "surrogatepass")) > max_bytes:
        raise BadFrame(f"field {name!r} is over its {max_bytes}-byte limit")
    if "\x00" in value:
        raise BadFrame(f"field {name!r} must not contain NUL")
    return value


def valid_address(value: str) -> bool:
    """True for ``node:<node_id>`` or ``client:<id>`` (what ``from`` and ``to`` hold)."""
    return bool(_ADDRESS.fullmatch(value))


@dataclass(frozen=True, slots=True)
class _RtcIds:
    node_id: str
    peer_session_id: str
    negotiation_id: str | int
    from_: str | None
    to: str | None

    def _ids(self) -> dict[str, Any]:
        out: dict[str, Any] = {"node_id": self.node_id, "peer_session_id": self.peer_session_id,
                               "negotiation_id": self.negotiation_id}
        if self.from_ is not None:
            out["from"] = self.from_
        if self.to is not None:
            out["to"] = self.to
        return out

    @staticmethod
    def _parse_ids(b: Mapping[str, Any]) -> dict[str, Any]:
        return {"node_id": _node_id(b), "peer_session_id": _ident(b, "peer_session_id"),
                "negotiation_id": _negotiation_id(b), "from_": _address(b, "from"),
                "to": _address(b, "to")}


@dataclass(frozen=True, slots=True)
class RtcOffer(_RtcIds, Body):
    """An SDP offer: opens the peer ``peer_session_id`` (a new id replaces the node's
    current peer with that end) or renegotiates it (the same id, a new ``negotiation_id``)."""

    TYPE: ClassVar[str] = "rtc.offer"
    sdp: str = ""

    def to_body(self) -> dict[str, Any]:
        return {**self._ids(), "sdp": self.sdp, "type": "offer"}

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> RtcOffer:
        if b.get("type") != "offer":
            raise BadFrame("field 'type' must be 'offer'")
        sdp = _text(b, "sdp", MAX_SDP, required=True)
        assert sdp is not None
        return cls(**cls._parse_ids(b), sdp=sdp)


@dataclass(frozen=True, slots=True)
class RtcAnswer(_RtcIds, Body):
    """The SDP answer to the offer with the same ``negotiation_id``."""

    TYPE: ClassVar[str] = "rtc.answer"
    sdp: str = ""

    def to_body(self) -> dict[str, Any]:
        return {**self._ids(), "sdp": self.sdp, "type": "answer"}

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> RtcAnswer:
        if b.get("type") != "answer":
            raise BadFrame("field 'type' must be 'answer'")
        sdp = _text(b, "sdp", MAX_SDP, required=True)
        assert sdp is not None
        return cls(**cls._parse_ids(b), sdp=sdp)


@dataclass(frozen=True, slots=True)
class RtcIce(_RtcIds, Body):
    """One trickled ICE candidate of the round ``negotiation_id`` (the browser's
    ``RTCIceCandidate.toJSON()`` fields, flat). ``candidate`` empty or absent: the end of
    candidates."""

    TYPE: ClassVar[str] = "rtc.ice"
    candidate: str = ""
    sdp_mid: str | None = None
    sdp_mline_index: int | None = None

    def to_body(self) -> dict[str, Any]:
        out = {**self._ids(), "candidate": self.candidate}
        if self.sdp_mid is not None:
            out["sdpMid"] = self.sdp_mid
        if self.sdp_mline_index is not None:
            out["sdpMLineIndex"] = self.sdp_mline_index
        return out

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> RtcIce:
        candidate = _text(b, "candidate", MAX_CANDIDATE, required=False) or ""
        mid = _text(b, "sdpMid", 64, required=False)
        index = b.get("sdpMLineIndex")
        if index is not None and (isinstance(index, bool) or not isinstance(index, int)
                                  or not 0 <= index <= 1023):
            raise BadFrame("field 'sdpMLineIndex' must be an integer 0..1023")
        return cls(**cls._parse_ids(b), candidate=candidate, sdp_mid=mid,
                   sdp_mline_index=index)


@dataclass(frozen=True, slots=True)
class RtcClose(_RtcIds, Body):
    """Either end ends the peer ``peer_session_id`` (``negotiation_id``: the last round it
    knew of); ``reason`` says why, for the other end's record."""

    TYPE: ClassVar[str] = "rtc.close"
    reason: str = ""

    def to_body(self) -> dict[str, Any]:
        return {**self._ids(), "reason": self.reason}

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> RtcClose:
        reason = _text(b, "reason", MAX_REASON, required=False) or ""
        return cls(**cls._parse_ids(b), reason=reason)


RtcBody = RtcOffer | RtcAnswer | RtcIce | RtcClose

RTC_BODIES: dict[str, type[RtcOffer] | type[RtcAnswer] | type[RtcIce] | type[RtcClose]] = {
    cls.TYPE: cls for cls in (RtcOffer, RtcAnswer, RtcIce, RtcClose)}


def parse_rtc(t: str, b: Mapping[str, Any]) -> RtcBody:
    """The typed body of an ``rtc.*`` frame; BadFrame (``bad_frame``, or ``unknown_type``
    for a type that is not one of the four) otherwise."""
    cls = RTC_BODIES.get(t)
    if cls is None:
        raise BadFrame(f"unknown frame type {t!r}", code="unknown_type")
    if not isinstance(b, Mapping):
        raise BadFrame("the body must be a map")
    return cls.from_body(b)


def with_route(body: RtcBody, *, from_: str | None = None, to: str | None = None) -> RtcBody:
    """``body`` with its routing fields replaced (the controller stamps ``from``; a node
    sets ``to``)."""
    return dataclasses.replace(body, from_=from_, to=to)


# --- node.rtc (class B, node -> controller): the node's peers, latest wins ---------------

MAX_REPORT_PEERS = 16
MAX_REPORT_HISTORY = 8
PEER_STATES = ("new", "connecting", "connected", "failed", "closed")
ICE_STATES = ("new", "checking", "connected", "completed", "failed", "disconnected",
              "closed")
PAIR_TYPES = ("host", "srflx", "prflx", "relay")
SUBFLOW_NAMES = ("control", "file", "video", "audio")
SUBFLOW_STATES = ("idle", "open", "degraded", "failed", "closed")
_MAX_COUNT = (1 << 63) - 1


def _choice(m: Mapping[str, Any], name: str, allowed: tuple[str, ...],
            *, optional: bool = False) -> str | None:
    value = m.get(name)
    if value is None and optional:
        return None
    if value not in allowed:
        raise BadFrame(f"field {name!r} must be one of {', '.join(allowed)}")
    return str(value)


def _count(m: Mapping[str, Any], name: str) -> int:
    value = m.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_COUNT:
        raise BadFrame(f"field {name!r} must be an integer >= 0")
    return value


def _map(value: Any, name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise BadFrame(f"field {name!r} must be a map")
    return value


@dataclass(frozen=True, slots=True)
class NodeRtcReport(Body):
    """``node.rtc``: the node's peer sessions (at most :data:`MAX_REPORT_PEERS`) with
    their state, ICE state, selected candidate-pair type, negotiation count and, per
    subflow (``control``, ``file``, ``video``, ``audio``), state, bytes and errors; and
    the last :data:`MAX_REPORT_HISTORY` replacements with their reasons. Class B: latest
    wins; a controller that does not know it may ignore it. Parsed into plain maps,
    every field checked and bounded; unknown fields dropped."""

    TYPE: ClassVar[str] = "node.rtc"
    peers: tuple[Mapping[str, Any], ...] = ()
    history: tuple[Mapping[str, Any], ...] = ()

    def to_body(self) -> dict[str, Any]:
        return {"peers": [dict(p) for p in self.peers],
                "history": [dict(h) for h in self.history]}

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> NodeRtcReport:
        peers = b.get("peers", [])
        history = b.get("history", [])
        if not isinstance(peers, list) or len(peers) > MAX_REPORT_PEERS:
            raise BadFrame(f"field 'peers' must be a list of at most {MAX_REPORT_PEERS}")
        if not isinstance(history, list) or len(history) > MAX_REPORT_HISTORY:
            raise BadFrame(f"field 'history' must be a list of at most {MAX_REPORT_HISTORY}")
        return cls(peers=tuple(cls._peer(_map(p, "peers")) for p in peers),
                   history=tuple(cls._event(_map(h, "history")) for h in history))

    @staticmethod
    def _peer(p: Mapping[str, Any]) -> dict[str, Any]:
        subflows = _map(p.get("subflows", {}), "subflows")
        if not set(subflows) <= set(SUBFLOW_NAMES):
            raise BadFrame(f"field 'subflows' keys must be of {', '.join(SUBFLOW_NAMES)}")
        return {
            "peer_session_id": _ident(p, "peer_session_id"),
            "remote": _address(p, "remote"),
            "state": _choice(p, "state", PEER_STATES),
            "ice_state": _choice(p, "ice_state", ICE_STATES),
            "candidate_pair": _choice(p, "candidate_pair", PAIR_TYPES, optional=True),
            "negotiations_total": _count(p, "negotiations_total"),
            "connections_total": _count(p, "connections_total"),
            "subflows": {name: {"state": _choice(_map(flow, name), "state", SUBFLOW_STATES),
                                **{k: _count(_map(flow, name), k) for k in
                                   ("bytes_in", "bytes_out", "errors_total")}}
                         for name, flow in subflows.items()}}

    @staticmethod
    def _event(h: Mapping[str, Any]) -> dict[str, Any]:
        at = h.get("at")
        if isinstance(at, bool) or not isinstance(at, int | float) or not 0 <= at < 1e11:
            raise BadFrame("field 'at' must be a time in seconds")
        return {"peer_session_id": _ident(h, "peer_session_id"), "at": float(at),
                "reason": _text(h, "reason", MAX_REASON, required=True)}


@dataclass(frozen=True, slots=True)
class RtcLink(Body):
    """Controller -> node only: a grant (``POST /api/v1/rtc/links``) letting this node and
    the node ``from`` names signal each other, and relay (:class:`RtcRelay`), for the peer
    ``peer_session_id``. ``node_id`` is the node end of the peer (the one the offer is made
    to); the other node makes the offer. A grant not used by ``expires_at_ms`` (Unix ms)
    lapses; one in use lasts until either end sends ``rtc.close`` or its session ends.
    A node that does not speak the node <-> node plane may ignore it."""

    TYPE: ClassVar[str] = "rtc.link"
    node_id: str
    peer_session_id: str
    from_: str
    expires_at_ms: int

    def to_body(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "peer_session_id": self.peer_session_id,
                "from": self.from_, "expires_at_ms": self.expires_at_ms}

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> RtcLink:
        from_ = _address(b, "from")
        if from_ is None or not from_.startswith("node:"):
            raise BadFrame("field 'from' must be node:<node_id>")
        expires = b.get("expires_at_ms")
        if isinstance(expires, bool) or not isinstance(expires, int) or \
                not 0 <= expires <= MAX_EXPIRES_MS:
            raise BadFrame(f"field 'expires_at_ms' must be an integer 0..{MAX_EXPIRES_MS}")
        return cls(node_id=_node_id(b), peer_session_id=_ident(b, "peer_session_id"),
                   from_=from_, expires_at_ms=expires)


def _seq(b: Mapping[str, Any], name: str, *, required: bool) -> int | None:
    value = b.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or \
            not 0 <= value <= MAX_RELAY_SEQ:
        raise BadFrame(f"field {name!r} must be an integer 0..{MAX_RELAY_SEQ}")
    return value


@dataclass(frozen=True, slots=True)
class RtcRelay(Body):
    """Node <-> node through the controller, when ICE found no direct path (``tether cp``'s
    fallback), allowed only under an :class:`RtcLink` grant for ``peer_session_id``.

    One direction's data is a stream, as ``protocol/iostream.py`` runs one: ``seq`` from 1
    per direction, ``data`` at most :data:`MAX_RELAY_DATA` bytes (``seq`` 0: no data in
    this frame); the receiver answers ``ack`` (every ``seq`` up to it applied) with
    ``window`` (bytes it takes beyond ``ack``, at most :data:`MAX_RELAY_WINDOW`), in a frame
    of its own or riding on its own data. A frame carries data, an ack, or both.

    Rule (bounded): the controller lets at most ``min(window, its cap)`` bytes be in flight
    per direction (delivered to the receiver, not yet acked; one frame always fits); a
    frame past that, or out of order (``seq`` beyond the last delivered + 1), is dropped and
    counted, never queued: the sender re-sends what is unacked when acks stall."""

    TYPE: ClassVar[str] = "rtc.relay"
    node_id: str
    peer_session_id: str
    from_: str | None = None
    to: str | None = None
    seq: int = 0
    data: bytes = b""
    ack: int | None = None
    window: int | None = None

    def to_body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"node_id": self.node_id,
                               "peer_session_id": self.peer_session_id}
        if self.from_ is not None:
            out["from"] = self.from_
        if self.to is not None:
            out["to"] = self.to
        if self.seq:
            out["seq"] = self.seq
            out["data"] = self.data
        if self.ack is not None:
            out["ack"] = self.ack
            out["window"] = self.window
        return out

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> RtcRelay:
        seq = _seq(b, "seq", required=False) or 0
        raw = b.get("data")
        data = b"" if raw is None else as_bytes(raw, "data")
        if len(data) > MAX_RELAY_DATA:
            raise BadFrame(f"field 'data' is {len(data)} bytes, over the {MAX_RELAY_DATA}-"
                           "byte limit")
        if data and not seq:
            raise BadFrame("field 'data' needs a 'seq' from 1")
        ack = _seq(b, "ack", required=False)
        window = b.get("window")
        if ack is not None and (isinstance(window, bool) or not isinstance(window, int)
                                or not 0 <= window <= MAX_RELAY_WINDOW):
            raise BadFrame(f"field 'window' must be an integer 0..{MAX_RELAY_WINDOW} "
                           "beside 'ack'")
        if ack is None and window is not None:
            raise BadFrame("field 'window' goes with 'ack'")
        if not seq and ack is None:
            raise BadFrame("an rtc.relay frame carries data (seq, data), an ack (ack, "
                           "window), or both")
        return cls(node_id=_node_id(b), peer_session_id=_ident(b, "peer_session_id"),
                   from_=_address(b, "from"), to=_address(b, "to"), seq=seq, data=data,
                   ack=ack, window=window if ack is not None else None)
