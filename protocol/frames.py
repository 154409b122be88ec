"""Frames: the envelope (PROTOCOL.md §2) and one frozen class per body shape.

Every class validates on construction (``from_body``) and never does I/O. ``Frame`` is the
envelope; typed bodies convert to and from the plain maps the codec carries with
``to_body()`` / ``from_body()``. Byte fields are ``bytes`` here; the JSON codec turns them
into base64url text and :func:`as_bytes` turns them back. The value rules of each field
(ranges, lengths, typed nested maps) are in ``fields.py``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from .errors import BadFrame
from .fields import (
    ARGS_LIMITS,
    EXIT_CODE_MAX,
    EXIT_CODE_MIN,
    MAX_CPUS,
    MAX_ERROR_LEN,
    MAX_ID_LEN,
    MAX_KIND_LEN,
    MAX_PID,
    MAX_REASON_LEN,
    MAX_SOURCE_LEN,
    RUNTIME_STATES,
    OutboxInfo,
    RuntimeInfo,
    SidecarInfo,
    TransportInfo,
    UsageInfo,
    bounded_text,
    capabilities_list,
    labels_map,
    load_list,
    nonneg_int,
    omit_none,
    opt_field,
    plain_data,
    req_field,
    seconds,
    version_text,
)
from .health import HEALTH_KIND, NodeHealth
from .selfupdate import UpdateInfo
from .update import BundleStatus, parse_bundle_status
from .values import INT64_MAX, int_in, number_in, plain_map, text

PROTOCOL_VERSION = 1
NODE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
B64URL_RE = re.compile(r"[A-Za-z0-9_-]*={0,2}")


def _check_opt_str(name: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_ID_LEN:
        raise BadFrame(f"envelope key {name!r} must be a string of at most {MAX_ID_LEN} chars")
    return value


@dataclass(frozen=True, slots=True)
class Frame:
    """The envelope. Invariant: ``q`` is present iff ``s`` is, and ``q >= 1``."""

    t: str
    b: Mapping[str, Any] = field(default_factory=dict)
    id: str | None = None
    re: str | None = None
    s: str | None = None
    q: int | None = None
    k: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.t, str) or not self.t or len(self.t) > 64:
            raise BadFrame("frame type 't' must be a non-empty string of at most 64 chars")
        for name in ("id", "re", "s", "k"):
            _check_opt_str(name, getattr(self, name))
        if (self.s is None) != (self.q is None):
            raise BadFrame("envelope keys 's' and 'q' must be present together")
        if self.q is not None and (
            not isinstance(self.q, int) or isinstance(self.q, bool) or self.q < 1
        ):
            raise BadFrame("sequence 'q' must be an integer >= 1")
        if not isinstance(self.b, Mapping):
            raise BadFrame("body 'b' must be a map")

    def to_wire(self) -> dict[str, Any]:
        """The plain map for the codec; absent optional keys are omitted."""
        out: dict[str, Any] = {"t": self.t}
        if self.id is not None:
            out["id"] = self.id
        if self.re is not None:
            out["re"] = self.re
        if self.s is not None:
            out["s"] = self.s
            out["q"] = self.q
        if self.k is not None:
            out["k"] = self.k
        if self.b:
            out["b"] = dict(self.b)
        return out

    @classmethod
    def from_wire(cls, obj: object) -> Frame:
        """Validate a decoded map; unknown keys are ignored (PROTOCOL.md §2).

        Raises :class:`BadFrame` for anything that is not a valid envelope.
        """
        if not isinstance(obj, dict):
            raise BadFrame("a frame must be a map")
        body = obj.get("b")
        if body is None:
            body = {}
        return cls(
            t=obj.get("t"),  # type: ignore[arg-type]  # validated in __post_init__
            b=body,
            id=obj.get("id"),
            re=obj.get("re"),
            s=obj.get("s"),
            q=obj.get("q"),
            k=obj.get("k"),
        )


# --- field helpers -------------------------------------------------------------------------

_T = TypeVar("_T")


def as_bytes(value: object, name: str) -> bytes:
    """Bytes from msgpack ``bin`` or from JSON base64url text (padding optional)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        if not B64URL_RE.fullmatch(value):
            raise BadFrame(f"field {name!r} is not valid base64url")
        try:
            return base64.b64decode(value + "=" * (-len(value) % 4), altchars=b"-_",
                                    validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadFrame(f"field {name!r} is not valid base64url") from exc
    raise BadFrame(f"field {name!r} must be bytes")


def _get(b: Mapping[str, Any], name: str, kind: type[_T] | tuple[type, ...],
         *, required: bool = True, default: Any = None) -> Any:
    if name not in b or b[name] is None:
        if required:
            raise BadFrame(f"body field {name!r} is required")
        return default
    value = b[name]
    if kind is int or kind is float or kind == (int, float):
        if isinstance(value, bool) or not isinstance(value, kind):
            raise BadFrame(f"body field {name!r} must be a number")
        return value
    if not isinstance(value, kind):
        want = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise BadFrame(f"body field {name!r} must be of type {want}")
    return value


MAX_ACK_STREAMS = 16


def _int_map(value: object, name: str) -> dict[str, int]:
    """Cursors by stream name: at most 16 names of at most 64 characters, each cursor from 0
    to 2^63-1 (a sequence number is stored as a signed 64-bit integer)."""
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_ACK_STREAMS:
        raise BadFrame(f"body field {name!r} must be a map of at most {MAX_ACK_STREAMS} "
                       "stream names to integers")
    out: dict[str, int] = {}
    for key, n in value.items():
        if (not isinstance(key, str) or len(key) > 64 or isinstance(n, bool)
                or not isinstance(n, int) or not 0 <= n <= INT64_MAX):
            raise BadFrame(f"body field {name!r} must map stream names to integers from 0 "
                           f"to {INT64_MAX}")
        out[key] = n
    return out


def valid_node_id(node_id: object) -> bool:
    """True when ``node_id`` matches ``[a-z0-9][a-z0-9-]{0,62}`` (PROTOCOL.md §8)."""
    return isinstance(node_id, str) and NODE_ID_RE.fullmatch(node_id) is not None


# --- bodies -------------------------------------------------------------------------------

BodyT = TypeVar("BodyT", bound="Body")


class Body:
    """Base for typed bodies. Subclasses set ``TYPE`` and implement the two conversions."""

    TYPE: ClassVar[str]

    def to_body(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def from_body(cls: type[BodyT], b: Mapping[str, Any]) -> BodyT:  # pragma: no cover
        raise NotImplementedError

    def frame(self, **envelope: Any) -> Frame:
        return Frame(t=self.TYPE, b=self.to_body(), **envelope)

    @classmethod
    def parse(cls: type[BodyT], frame: Frame) -> BodyT:
        if frame.t != cls.TYPE:
            raise BadFrame(f"expected a {cls.TYPE!r} frame, got {frame.t!r}")
        return cls.from_body(frame.b)


@dataclass(frozen=True, slots=True)
class Challenge(Body):
    TYPE: ClassVar[str] = "edge.challenge"
    nonce: bytes
    controller_id: str
    time_ms: int
    protocols: tuple[int, ...] = (PROTOCOL_VERSION,)

    def to_body(self) -> dict[str, Any]:
        return {"nonce": self.nonce, "controller_id": self.controller_id,
                "protocols": list(self.protocols), "time_ms": self.time_ms}

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> Challenge:
        nonce = as_bytes(_get(b, "nonce", (bytes, str)), "nonce")
        if len(nonce) != 32:
            raise BadFrame("challenge nonce must be 32 bytes")
        protocols = _get(b, "protocols", list)
        if not all(isinstance(p, int) and not isinstance(p, bool) for p in protocols):
            raise BadFrame("challenge protocols must be a list of integers")
        return cls(nonce=nonce, controller_id=_get(b, "controller_id", str),
                   time_ms=_get(b, "time_ms", int), protocols=tuple(protocols))


@dataclass(frozen=True, slots=True)
class Hello(Body):
    TYPE: ClassVar[str] = "edge.hello"
    node_id: str
    sig: bytes
    epoch: int
    acks: Mapping[str, int]
    protocol: int = PROTOCOL_VERSION
    session_id: str | None = None
    runtime: RuntimeInfo = field(default_factory=RuntimeInfo)
    sidecar: SidecarInfo = field(default_factory=SidecarInfo)
    capabilities: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    # Addition (docs/protocol.md §4 "Frame cap"): the largest frame the node accepts; the
    # controller's welcome announces min(its own, this) and holds both directions to it.
    max_frame: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "runtime", RuntimeInfo.coerce(self.runtime, "runtime"))
        object.__setattr__(self, "sidecar", SidecarInfo.coerce(self.sidecar, "sidecar"))

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "node_id": self.node_id, "protocol": self.protocol, "sig": self.sig,
            "epoch": self.epoch, "acks": dict(self.acks), "session_id": self.session_id,
            "runtime": self.runtime.to_map(), "sidecar": self.sidecar.to_map(),
            "capabilities": list(self.capabilities), "labels": dict(self.labels)}
        if self.max_frame is not None:
            body["max_frame"] = self.max_frame
        return body

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> Hello:
        epoch = _get(b, "epoch", int)
        if not 0 <= epoch < 1 << 64:
            raise BadFrame("hello epoch must be an unsigned 64-bit integer")
        return cls(node_id=req_field(b, "node_id", bounded_text, max_len=MAX_ID_LEN),
                   protocol=req_field(b, "protocol", int_in, 0, MAX_PID),
                   sig=as_bytes(_get(b, "sig", (bytes, str)), "sig"),
                   epoch=epoch,
                   acks=_int_map(b.get("acks"), "acks"),
                   session_id=opt_field(b, "session_id", bounded_text, max_len=MAX_ID_LEN),
                   runtime=RuntimeInfo.from_map(b.get("runtime"), "runtime"),
                   sidecar=SidecarInfo.from_map(b.get("sidecar"), "sidecar"),
                   capabilities=opt_field(b, "capabilities", capabilities_list) or (),
                   labels=labels_map(b.get("labels"), "labels"),
                   max_frame=_hello_max_frame(b.get("max_frame")))


MIN_FRAME_CAP = 1024  # the smallest max_frame a hello or welcome may announce


def _hello_max_frame(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or \
            not MIN_FRAME_CAP <= value < 1 << 63:
        raise BadFrame(f"hello max_frame must be an integer of at least {MIN_FRAME_CAP} bytes")
    return value


@dataclass(frozen=True, slots=True)
class Welcome(Body):
    TYPE: ClassVar[str] = "edge.welcome"
    session_id: str
    resumed: bool
    epoch: int
    acks: Mapping[str, int]
    heartbeat_s: float = 15
    stale_after_s: float = 60
    offline_after_s: float = 300
    max_frame: int = 1 << 20
    # Addition (docs/protocol.md): the most frames the controller takes in one edge.batch;
    # 0 (or absent, as from a controller that predates it) means one frame per message.
    max_batch: int = 0

    def to_body(self) -> dict[str, Any]:
        body = {"session_id": self.session_id, "resumed": self.resumed, "epoch": self.epoch,
                "acks": dict(self.acks), "heartbeat_s": self.heartbeat_s,
                "stale_after_s": self.stale_after_s, "offline_after_s": self.offline_after_s,
                "max_frame": self.max_frame}
        if self.max_batch:
            body["max_batch"] = self.max_batch
        return body

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> Welcome:
        welcome = cls(session_id=_get(b, "session_id", str),
                      resumed=bool(_get(b, "resumed", bool)),
                      epoch=_get(b, "epoch", int),
                      acks=_int_map(b.get("acks"), "acks"),
                      heartbeat_s=_get(b, "heartbeat_s", (int, float), required=False,
                                       default=15),
                      stale_after_s=_get(b, "stale_after_s", (int, float), required=False,
                                         default=60),
                      offline_after_s=_get(b, "offline_after_s", (int, float), required=False,
                                           default=300),
                      max_frame=_get(b, "max_frame", int, required=False, default=1 << 20),
                      max_batch=_get(b, "max_batch", int, required=False, default=0))
        if not (0 < welcome.heartbeat_s < welcome.stale_after_s < welcome.offline_after_s
                and welcome.offline_after_s < float("inf")):
            raise BadFrame("welcome timings must satisfy 0 < heartbeat_s < stale_after_s < "
                           "offline_after_s (finite)")
        if welcome.max_frame < 1024:
            raise BadFrame("welcome max_frame must be at least 1024 bytes")
        if welcome.max_batch < 0:
            raise BadFrame("welcome max_batch must not be negative")
        return welcome


@dataclass(frozen=True, slots=True)
class Heartbeat(Body):
    TYPE: ClassVar[str] = "edge.heartbeat"
    uptime_s: float
    runtime: RuntimeInfo = field(default_factory=RuntimeInfo)
    outbox: OutboxInfo = field(default_factory=OutboxInfo)
    acks: Mapping[str, int] = field(default_factory=dict)
    # Addition (docs/protocol.md): the sidecar's view of the link (rtt_ms, reconnects, ...).
    transport: TransportInfo = field(default_factory=TransportInfo)
    # Addition (docs/protocol.md): a runtime self-update in progress (its stage), else empty.
    update: UpdateInfo = field(default_factory=UpdateInfo)

    def __post_init__(self) -> None:
        object.__setattr__(self, "runtime", RuntimeInfo.coerce(self.runtime, "runtime"))
        object.__setattr__(self, "outbox", OutboxInfo.coerce(self.outbox, "outbox"))
        object.__setattr__(self, "transport",
                           TransportInfo.coerce(self.transport, "transport"))
        object.__setattr__(self, "update", UpdateInfo.coerce(self.update, "update"))

    def to_body(self) -> dict[str, Any]:
        out = {"uptime_s": self.uptime_s, "runtime": self.runtime.to_map(),
               "outbox": self.outbox.to_map(), "acks": dict(self.acks)}
        transport = self.transport.to_map()
        if transport:
            out["transport"] = transport
        update = self.update.to_map()
        if update:
            out["update"] = update
        return out

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> Heartbeat:
        return cls(uptime_s=opt_field(b, "uptime_s", seconds) or 0.0,
                   runtime=RuntimeInfo.from_map(b.get("runtime"), "runtime"),
                   outbox=OutboxInfo.from_map(b.get("outbox"), "outbox"),
                   acks=_int_map(b.get("acks"), "acks"),
                   transport=TransportInfo.from_map(b.get("transport"), "transport"),
                   update=UpdateInfo.from_map(b.get("update"), "update"))


@dataclass(frozen=True, slots=True)
class HeartbeatAck(Body):
    TYPE: ClassVar[str] = "edge.heartbeat_ack"
    time_ms: int
    acks: Mapping[str, int] = field(default_factory=dict)

    def to_body(self) -> dict[str, Any]:
        return {"time_ms": self.time_ms, "acks": dict(self.acks)}

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> HeartbeatAck:
        return cls(time_ms=_get(b, "time_ms", int), acks=_int_map(b.get("acks"), "acks"))


@dataclass(frozen=True, slots=True)
class Ack(Body):
    TYPE: ClassVar[str] = "edge.ack"
    acks: Mapping[str, int]

    def to_body(self) -> dict[str, Any]:
        return {"acks": dict(self.acks)}

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> Ack:
        return cls(acks=_int_map(_get(b, "acks", dict), "acks"))


@dataclass(frozen=True, slots=True)
class Resume(Body):
    TYPE: ClassVar[str] = "edge.resume"
    acks: Mapping[str, int]

    def to_body(self) -> dict[str, Any]:
        return {"acks": dict(self.acks)}

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> Resume:
        return cls(acks=_int_map(_get(b, "acks", dict), "acks"))


@dataclass(frozen=True, slots=True)
class RuntimeState(Body):
    TYPE: ClassVar[str] = "edge.runtime"
    state: str
    version: str | None = None

    STATES: ClassVar[frozenset[str]] = RUNTIME_STATES

    def to_body(self) -> dict[str, Any]:
        return {"state": self.state, "version": self.version}

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> RuntimeState:
        state = _get(b, "state", str)
        if state not in cls.STATES:
            raise BadFrame(f"runtime state must be one of {sorted(cls.STATES)}, "
                           f"got {state[:32]!r}")
        return cls(state=state, version=opt_field(b, "version", version_text))


@dataclass(frozen=True, slots=True)
class Goodbye(Body):
    TYPE: ClassVar[str] = "edge.goodbye"
    reason: str = ""

    def to_body(self) -> dict[str, Any]:
        return {"reason": self.reason}

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> Goodbye:
        return cls(reason=opt_field(b, "reason", bounded_text, max_len=MAX_REASON_LEN) or "")


@dataclass(frozen=True, slots=True)
class ErrorBody(Body):
    TYPE: ClassVar[str] = "error"
    code: str
    message: str

    def to_body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> ErrorBody:
        return cls(code=req_field(b, "code", bounded_text, max_len=MAX_KIND_LEN),
                   message=opt_field(b, "message", bounded_text, max_len=MAX_ERROR_LEN) or "")


@dataclass(frozen=True, slots=True)
class CmdDeliver(Body):
    TYPE: ClassVar[str] = "cmd.deliver"
    command_id: str
    kind: str
    args: Mapping[str, Any]
    created_ms: int
    deadline_ms: int | None = None

    def to_body(self) -> dict[str, Any]:
        return {"command_id": self.command_id, "kind": self.kind, "args": dict(self.args),
                "deadline_ms": self.deadline_ms, "created_ms": self.created_ms}

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> CmdDeliver:
        return cls(command_id=req_field(b, "command_id", bounded_text, max_len=MAX_ID_LEN),
                   kind=req_field(b, "kind", bounded_text, max_len=MAX_KIND_LEN),
                   args=opt_field(b, "args", plain_map, ARGS_LIMITS) or {},
                   created_ms=opt_field(b, "created_ms", int_in) or 0,
                   deadline_ms=opt_field(b, "deadline_ms", int_in))


COMMAND_STATES = ("queued", "delivered", "running", "paused", "succeeded", "failed",
                  "cancelled", "expired", "rejected")
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled", "expired", "rejected"})
STATUS_STATES = frozenset({"running", "paused", *TERMINAL_STATES})
CONTROL_KINDS = frozenset({"cancel", "pause", "resume"})  # args: {"command_id": target}


@dataclass(frozen=True, slots=True)
class CmdStatus(Body):
    """A command's state change, node -> controller, class A on ``evt``.

    ``result`` carries kind-specific data (``diag.ping`` puts its timestamps there).
    ``exit_code`` is a 32-bit exit status, signed or unsigned; times are signed 64-bit."""

    TYPE: ClassVar[str] = "cmd.status"
    command_id: str
    state: str
    exit_code: int | None = None
    error: str | None = None
    started_ms: int | None = None
    finished_ms: int | None = None
    result: Mapping[str, Any] | None = None

    def to_body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"command_id": self.command_id, "state": self.state}
        for name in ("exit_code", "error", "started_ms", "finished_ms"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.result:
            out["result"] = dict(self.result)
        return out

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> CmdStatus:
        state = _get(b, "state", str)
        if state not in STATUS_STATES:
            raise BadFrame(f"status state must be one of {sorted(STATUS_STATES)}, "
                           f"got {state[:32]!r}")
        return cls(command_id=req_field(b, "command_id", bounded_text, max_len=MAX_ID_LEN),
                   state=state,
                   exit_code=opt_field(b, "exit_code", int_in, EXIT_CODE_MIN, EXIT_CODE_MAX),
                   error=opt_field(b, "error", bounded_text, max_len=MAX_ERROR_LEN),
                   started_ms=opt_field(b, "started_ms", int_in),
                   finished_ms=opt_field(b, "finished_ms", int_in),
                   result=opt_field(b, "result", plain_data))


@dataclass(frozen=True, slots=True)
class LogChunk(Body):
    TYPE: ClassVar[str] = "log.chunk"
    source: str
    seq: int
    data: bytes
    command_id: str | None = None
    dropped: int = 0

    def to_body(self) -> dict[str, Any]:
        return {"command_id": self.command_id, "source": self.source, "seq": self.seq,
                "data": self.data, "dropped": self.dropped}

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> LogChunk:
        data = b.get("data")
        # JSON carries log data as UTF-8 text (PROTOCOL.md §6), msgpack as bin.
        if isinstance(data, str):
            raw = text(data, "data", max_len=len(data)).encode()
        else:
            raw = as_bytes(data, "data")
        return cls(command_id=opt_field(b, "command_id", bounded_text, max_len=MAX_ID_LEN),
                   source=req_field(b, "source", bounded_text, max_len=MAX_SOURCE_LEN),
                   seq=req_field(b, "seq", nonneg_int), data=raw,
                   dropped=opt_field(b, "dropped", nonneg_int) or 0)


@dataclass(frozen=True, slots=True)
class NodeEvent(Body):
    """An application event a node reports, class A on ``evt`` (docs/protocol.md addition).
    ``data`` is plain data within :data:`DATA_LIMITS`."""

    TYPE: ClassVar[str] = "node.event"
    kind: str
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_body(self) -> dict[str, Any]:
        return {"kind": self.kind, "data": dict(self.data)}

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> NodeEvent:
        # Hot path (every node.event): the same checks as req_field/opt_field, inlined.
        kind = b.get("kind")
        if kind is None:
            raise BadFrame("body field 'kind' is required")
        data = b.get("data")
        kind = bounded_text(kind, "kind", max_len=MAX_KIND_LEN)
        data = {} if data is None else plain_data(data, "data")
        if kind == HEALTH_KIND:  # the node's readiness report: its own rules (health.py)
            data = NodeHealth.from_map(data).to_map()
        return cls(kind=kind, data=data)


@dataclass(frozen=True, slots=True)
class MonitorPacket(Body):
    """A small structured packet an app on the node publishes (class C): ``seq`` runs per
    node, ``dropped`` counts packets lost to overflow before this one. ``data`` is plain
    data within :data:`DATA_LIMITS`."""

    TYPE: ClassVar[str] = "monitor.packet"
    topic: str
    data: Mapping[str, Any]
    seq: int
    at_ms: int
    dropped: int = 0

    def to_body(self) -> dict[str, Any]:
        return {"topic": self.topic, "data": dict(self.data), "seq": self.seq,
                "at_ms": self.at_ms, "dropped": self.dropped}

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> MonitorPacket:
        topic = _get(b, "topic", str)
        if not 0 < len(topic) <= 128:
            raise BadFrame("monitor topic must be 1 to 128 characters")
        return cls(topic=text(topic, "topic", max_len=128),
                   data=req_field(b, "data", plain_data), seq=req_field(b, "seq", nonneg_int),
                   at_ms=opt_field(b, "at_ms", nonneg_int) or 0,
                   dropped=opt_field(b, "dropped", nonneg_int) or 0)


@dataclass(frozen=True, slots=True)
class NodeResources(Body):
    """What the node's machine looks like now (class B, latest wins; ``node/resources.py``
    sends it). Every field is optional; unknown fields are dropped."""

    TYPE: ClassVar[str] = "node.resources"
    cpu_percent: float | None = None
    cpus: int | None = None
    load: tuple[float, ...] = ()
    memory: UsageInfo = field(default_factory=UsageInfo)
    disk: UsageInfo = field(default_factory=UsageInfo)
    processes: int | None = None
    uptime_s: float | None = None
    at_ms: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "memory", UsageInfo.coerce(self.memory, "memory"))
        object.__setattr__(self, "disk", UsageInfo.coerce(self.disk, "disk"))

    def to_body(self) -> dict[str, Any]:
        out = omit_none({"cpu_percent": self.cpu_percent, "cpus": self.cpus,
                          "processes": self.processes, "uptime_s": self.uptime_s,
                          "at_ms": self.at_ms})
        if self.load:
            out["load"] = list(self.load)
        for name in ("memory", "disk"):
            usage = getattr(self, name).to_map()
            if usage:
                out[name] = usage
        return out

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> NodeResources:
        return cls(cpu_percent=opt_field(b, "cpu_percent", number_in, 0, 100 * MAX_CPUS),
                   cpus=opt_field(b, "cpus", int_in, 1, MAX_CPUS),
                   load=opt_field(b, "load", load_list) or (),
                   memory=UsageInfo.from_map(b.get("memory"), "memory"),
                   disk=UsageInfo.from_map(b.get("disk"), "disk"),
                   processes=opt_field(b, "processes", nonneg_int),
                   uptime_s=opt_field(b, "uptime_s", seconds),
                   at_ms=opt_field(b, "at_ms", nonneg_int))


# --- interactive io (exec stdin, shell pty): class E, docs/protocol.md "Interactive io" ---

MAX_IO_DATA = 64 << 10  # bytes of stdin or pty output in one io frame
MAX_IO_WINDOW = 1 << 20  # the most bytes an io ack may let the peer have unacked
MAX_TERM_SIZE = 4096  # rows and columns of a pty
IO_SIGNALS = ("INT", "TERM", "HUP", "QUIT", "KILL")  # what io.signal may send


def _command_ref(b: Mapping[str, Any]) -> str:
    command_id: str = req_field(b, "command_id", bounded_text, min_len=1,
                                max_len=MAX_ID_LEN)
    return command_id


def _io_data(b: Mapping[str, Any]) -> bytes:
    data = b.get("data")
    raw = b"" if data is None else as_bytes(data, "data")
    if len(raw) > MAX_IO_DATA:
        raise BadFrame(f"field 'data' is {len(raw)} bytes, over the {MAX_IO_DATA}-byte "
                       "limit of one io frame")
    return raw


def _io_seq(b: Mapping[str, Any]) -> int:
    return int_in(b.get("seq"), "seq", 1, INT64_MAX)


@dataclass(frozen=True, slots=True)
class IoInput(Body):
    """Bytes for a command's stdin (or its pty), controller -> node, ``seq`` from 1 per
    command; ``eof`` closes stdin after ``data``. Applied in ``seq`` order exactly once."""

    TYPE: ClassVar[str] = "io.input"
    command_id: str
    seq: int
    data: bytes = b""
    eof: bool = False

    def to_body(self) -> dict[str, Any]:
        return {"command_id": self.command_id, "seq": self.seq, "data": self.data,
                "eof": self.eof}

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> IoInput:
        eof = b.get("eof")
        eof = False if eof is None else eof
        if not isinstance(eof, bool):
            raise BadFrame("field 'eof' must be a boolean")
        return cls(command_id=_command_ref(b), seq=_io_seq(b), data=_io_data(b), eof=eof)


@dataclass(frozen=True, slots=True)
class IoOutput(Body):
    """A shell's pty output, node -> controller, ``seq`` from 1 per command."""

    TYPE: ClassVar[str] = "io.output"
    command_id: str
    seq: int
    data: bytes

    def to_body(self) -> dict[str, Any]:
        return {"command_id": self.command_id, "seq": self.seq, "data": self.data}

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> IoOutput:
        return cls(command_id=_command_ref(b), seq=_io_seq(b), data=_io_data(b))


@dataclass(frozen=True, slots=True)
class IoAck(Body):
    """Either way: every frame of the command's stream up to ``seq`` was applied (0: none
    yet), and the sender may have ``window`` bytes of data unacked beyond it. Sent again
    as a keepalive while the stream is open."""

    TYPE: ClassVar[str] = "io.ack"
    command_id: str
    seq: int
    window: int

    def to_body(self) -> dict[str, Any]:
        return {"command_id": self.command_id, "seq": self.seq, "window": self.window}

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> IoAck:
        return cls(command_id=_command_ref(b),
                   seq=int_in(b.get("seq"), "seq", 0, INT64_MAX),
                   window=int_in(b.get("window"), "window", 0, MAX_IO_WINDOW))


@dataclass(frozen=True, slots=True)
class IoResize(Body):
    """A shell's window size, controller -> node: ``TIOCSWINSZ`` on its pty."""

    TYPE: ClassVar[str] = "io.resize"
    command_id: str
    rows: int
    cols: int

    def to_body(self) -> dict[str, Any]:
        return {"command_id": self.command_id, "rows": self.rows, "cols": self.cols}

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> IoResize:
        return cls(command_id=_command_ref(b),
                   rows=int_in(b.get("rows"), "rows", 1, MAX_TERM_SIZE),
                   cols=int_in(b.get("cols"), "cols", 1, MAX_TERM_SIZE))


@dataclass(frozen=True, slots=True)
class IoSignal(Body):
    """A signal for a running command's process group, controller -> node (Ctrl-C on
    ``tether exec`` is ``INT``)."""

    TYPE: ClassVar[str] = "io.signal"
    command_id: str
    signal: str

    def to_body(self) -> dict[str, Any]:
        return {"command_id": self.command_id, "signal": self.signal}

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> IoSignal:
        sig = b.get("signal")
        if sig not in IO_SIGNALS:
            raise BadFrame(f"field 'signal' must be one of {', '.join(IO_SIGNALS)}")
        return cls(command_id=_command_ref(b), signal=str(sig))


@dataclass(frozen=True, slots=True)
class BundleStatusReport(Body):
    """A node's ``bundle.status`` (class A on ``evt``): one step of a bundle update, by the
    rules of ``protocol/update.py`` (docs/protocol.md "Bundle updates on the session")."""

    TYPE: ClassVar[str] = "bundle.status"
    status: BundleStatus

    def to_body(self) -> dict[str, Any]:
        return self.status.body()

    @classmethod
    def from_body(cls, b: Mapping[str, Any]) -> BundleStatusReport:
        return cls(parse_bundle_status(b))


IO_BODIES: dict[str, type[Body]] = {
    cls.TYPE: cls for cls in (IoInput, IoOutput, IoAck, IoResize, IoSignal)}


BODY_TYPES: dict[str, type[Body]] = {
    cls.TYPE: cls
    for cls in (Challenge, Hello, Welcome, Heartbeat, HeartbeatAck, Ack, Resume, RuntimeState,
                Goodbye, ErrorBody, CmdDeliver, CmdStatus, LogChunk, NodeEvent, MonitorPacket,
                NodeResources, IoInput, IoOutput, IoAck, IoResize, IoSignal,
                BundleStatusReport)
}


def parse_body(frame: Frame) -> Body:
    """The typed body of ``frame``; raises BadFrame for unknown types or bad bodies."""
    cls = BODY_TYPES.get(frame.t)
    if cls is None:
        raise BadFrame(f"unknown frame type {frame.t!r}", code="unknown_type")
    return cls.from_body(frame.b)
