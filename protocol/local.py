"""The local link between a node's runtime and its sidecar: length-prefixed MessagePack
frames over a Unix socket (same envelope and codec as the edge; 4-byte big-endian length).

Local frame types (``local.*``) never reach the controller; every other frame is relayed:

* runtime -> sidecar: ``local.attach`` {node_id, epoch, cmd_applied, session_id, runtime,
  capabilities, labels, pid}; ``local.state`` {outbox}; ``local.detach`` {state:
  "detached" | "restarting"}; ``local.goodbye`` {reason} (full stop: the sidecar says
  goodbye and exits); ``local.reconnect`` {epoch} (a new evt epoch: dial again).
* sidecar -> runtime: ``local.attached`` {sidecar}; ``local.refused`` {reason};
  ``local.session`` {connected, welcome?}; ``local.stopped`` {code, reason} (a final close
  code: the node must stop).
* supervisor -> sidecar: ``local.update`` {update} (a runtime self-update's stage, for the
  heartbeats), alone on its own connection.

:class:`LocalDecoder` is incremental (bytes in, frames out) and bounded.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .codec import MAX_FRAME_BYTES, decode_msgpack, encode_msgpack
from .errors import BadFrame, FrameTooLarge, LocalProtocolError
from .fields import (
    MAX_ID_LEN,
    MAX_PID,
    MAX_REASON_LEN,
    OutboxInfo,
    RuntimeInfo,
    bounded_text,
    capabilities_list,
    labels_map,
    opt_field,
    req_field,
)
from .frames import Body, Frame
from .selfupdate import UpdateInfo
from .values import INT64_MAX, int_in

HEADER = struct.Struct(">I")
DETACH_STATES = frozenset({"detached", "restarting"})
LOCAL_OVERHEAD = 64 * 1024  # local frames may wrap an edge frame of max_frame bytes


def encode_local(frame: Frame, *, max_frame_bytes: int = MAX_FRAME_BYTES) -> bytes:
    data = encode_msgpack(frame, max_frame_bytes=max_frame_bytes + LOCAL_OVERHEAD)
    return HEADER.pack(len(data)) + data


def frame_local(payload: bytes, *, max_frame_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """The local framing of a frame encoded already (:func:`encode_msgpack`,
    :func:`~tether.protocol.codec.encode_sequenced`): what :func:`encode_local` gives for
    it. Raises LocalProtocolError past the same limit."""
    if len(payload) > max_frame_bytes + LOCAL_OVERHEAD:
        raise LocalProtocolError(f"frame is {len(payload)} bytes, over the "
                                 f"{max_frame_bytes + LOCAL_OVERHEAD}-byte local limit")
    return HEADER.pack(len(payload)) + payload


def peek_type(payload: bytes) -> str | None:
    """The frame type of an encoded frame without decoding it, when the frame starts the way
    :func:`encode_msgpack` starts every frame (a map whose first key is ``t``, its value a
    short string); None otherwise (decode it to know). The rest of the frame is not looked
    at, so this says nothing of whether the frame is valid: it is for a relay that passes
    frames it does not act on to a peer that checks them."""
    if len(payload) < 4 or not 0x81 <= payload[0] <= 0x8F or payload[1:3] != b"\xa1t":
        return None
    n = payload[3] - 0xA0
    if not 1 <= n <= 31 or len(payload) < 4 + n:
        return None
    try:
        return payload[4:4 + n].decode()
    except UnicodeDecodeError:
        return None


class LocalDecoder:
    """Feed bytes with :meth:`feed`; take complete frames from :meth:`frames`.

    Raises FrameTooLarge as soon as a header announces more than the limit (nothing of it
    is buffered) and BadFrame for an undecodable frame."""

    def __init__(self, *, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self.max_bytes = max_frame_bytes + LOCAL_OVERHEAD
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        return [frame for frame, _ in self.feed_raw(data)]

    def feed_raw(self, data: bytes) -> list[tuple[Frame, bytes]]:
        """Like :meth:`feed`, each frame with its MessagePack encoding as it arrived (a relay
        can pass those bytes on without encoding the frame again)."""
        return [(self.decode(payload), payload) for payload in self.feed_payloads(data)]

    def feed_payloads(self, data: bytes) -> list[bytes]:
        """Like :meth:`feed_raw`, the frames left encoded: each is decoded (and checked) only
        if the caller asks :meth:`decode`. The length limit holds all the same."""
        self._buf += data
        out: list[bytes] = []
        buf = self._buf
        start = 0
        while len(buf) - start >= HEADER.size:
            (size,) = HEADER.unpack_from(buf, start)
            if size > self.max_bytes:
                raise FrameTooLarge(f"local frame of {size} bytes exceeds {self.max_bytes}")
            end = start + HEADER.size + size
            if len(buf) < end:
                break
            out.append(bytes(buf[start + HEADER.size:end]))
            start = end
        del buf[:start]
        return out

    def decode(self, payload: bytes) -> Frame:
        """One payload of :meth:`feed_payloads` as a frame; BadFrame when it is not one."""
        return decode_msgpack(payload, max_frame_bytes=self.max_bytes)

    @property
    def buffered(self) -> int:
        return len(self._buf)


# --- typed bodies (runtime -> sidecar): the sidecar's boundary -----------------------------
#
# The sidecar parses what the runtime sends once, on arrival, with the same value rules as
# the edge (protocol/frames.py), so nothing it relays into a hello or heartbeat can carry a
# value the controller refuses.


def _epoch(value: object, name: str) -> int:
    return int_in(value, name, 0, (1 << 64) - 1)


@dataclass(frozen=True, slots=True)
class LocalAttach(Body):
    """The runtime's first frame: who it is and where its streams stand."""

    TYPE: ClassVar[str] = "local.attach"
    node_id: str
    epoch: int
    cmd_applied: int = 0
    session_id: str | None = None
    runtime: RuntimeInfo = field(default_factory=RuntimeInfo)
    capabilities: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    pid: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "runtime", RuntimeInfo.coerce(self.runtime, "runtime"))

    def to_body(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "epoch": self.epoch, "cmd_applied": self.cmd_applied,
                "session_id": self.session_id, "runtime": self.runtime.to_map(),
                "capabilities": list(self.capabilities), "labels": dict(self.labels),
                "pid": self.pid}

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> LocalAttach:
        return cls(node_id=req_field(b, "node_id", bounded_text, max_len=MAX_ID_LEN),
                   epoch=opt_field(b, "epoch", _epoch) or 0,
                   cmd_applied=opt_field(b, "cmd_applied", int_in, 0, INT64_MAX) or 0,
                   session_id=opt_field(b, "session_id", bounded_text, max_len=MAX_ID_LEN),
                   runtime=RuntimeInfo.from_map(b.get("runtime"), "runtime"),
                   capabilities=opt_field(b, "capabilities", capabilities_list) or (),
                   labels=labels_map(b.get("labels"), "labels"),
                   pid=opt_field(b, "pid", int_in, 0, MAX_PID))


@dataclass(frozen=True, slots=True)
class LocalState(Body):
    """The runtime's outbox, for the sidecar's heartbeats."""

    TYPE: ClassVar[str] = "local.state"
    outbox: OutboxInfo = field(default_factory=OutboxInfo)

    def __post_init__(self) -> None:
        object.__setattr__(self, "outbox", OutboxInfo.coerce(self.outbox, "outbox"))

    def to_body(self) -> dict[str, Any]:
        return {"outbox": self.outbox.to_map()}

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> LocalState:
        return cls(outbox=OutboxInfo.from_map(b.get("outbox"), "outbox"))


@dataclass(frozen=True, slots=True)
class LocalDetach(Body):
    TYPE: ClassVar[str] = "local.detach"
    state: str = "detached"

    def to_body(self) -> dict[str, Any]:
        return {"state": self.state}

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> LocalDetach:
        state = b.get("state") or "detached"
        if not isinstance(state, str) or state not in DETACH_STATES:
            raise BadFrame(f"field 'state' must be one of {sorted(DETACH_STATES)}")
        return cls(state=str(state))


@dataclass(frozen=True, slots=True)
class LocalGoodbye(Body):
    TYPE: ClassVar[str] = "local.goodbye"
    reason: str = ""

    def to_body(self) -> dict[str, Any]:
        return {"reason": self.reason}

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> LocalGoodbye:
        return cls(reason=opt_field(b, "reason", bounded_text, max_len=MAX_REASON_LEN) or "")


@dataclass(frozen=True, slots=True)
class LocalReconnect(Body):
    TYPE: ClassVar[str] = "local.reconnect"
    epoch: int

    def to_body(self) -> dict[str, Any]:
        return {"epoch": self.epoch}

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> LocalReconnect:
        return cls(epoch=req_field(b, "epoch", _epoch))


@dataclass(frozen=True, slots=True)
class LocalUpdate(Body):
    """The supervisor's word on a runtime self-update (protocol/selfupdate.py), sent as the
    only frame of its own short connection (never ``local.attach``): ``update`` is what the
    sidecar puts in its heartbeats until the next ``local.update`` or until ``deadline_s``
    passed (so a supervisor that died cannot leave a node ``updating`` for ever); an empty
    ``update`` ends it."""

    TYPE: ClassVar[str] = "local.update"
    update: UpdateInfo = field(default_factory=UpdateInfo)

    def __post_init__(self) -> None:
        object.__setattr__(self, "update", UpdateInfo.coerce(self.update, "update"))

    def to_body(self) -> dict[str, Any]:
        return {"update": self.update.to_map()}

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> LocalUpdate:
        return cls(update=UpdateInfo.from_map(b.get("update"), "update"))


LOCAL_BODY_TYPES: dict[str, type[Body]] = {
    cls.TYPE: cls for cls in (LocalAttach, LocalState, LocalDetach, LocalGoodbye,
                              LocalReconnect, LocalUpdate)
}
