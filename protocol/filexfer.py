"""The ``file`` data channel (issue 14, docs/protocol.md "The `file` data channel"): a
chunked, acknowledged file transfer, sha256-verified at the end and resumable by offset,
with no I/O. The messages, their parsers, the two state machines (as transition tables)
and file-name rules live here; the disk, the clock and the channel are the caller's
(``tether.node.rtc.filexfer``).

Messages. Control messages are JSON text (at most :data:`MAX_CONTROL_BYTES`), one object
with ``t``; data is binary (:func:`encode_chunk`):

* ``offer {id, name, size, sha256, offset?}``: the sender proposes a file (``offset``: the
  most it wants resumed; absent: whatever the receiver holds);
* ``get {id, name}``: ask the other end to send its file ``name`` (it answers ``offer``
  with the same ``id``, or ``error``);
* ``accept {id, offset, window}``: the receiver says from where (resume) and how many
  unacknowledged bytes the sender may have in flight;
* a chunk: ``0x01, len(id), id, offset (8 bytes, big-endian), payload`` with the payload at
  most :data:`MAX_CHUNK` bytes (aiortc's SCTP caps a message at 64 KiB);
* ``ack {id, offset}``: every byte below ``offset`` is written (cumulative);
* ``done {id, sha256}``: every byte was sent;
* ``verified {id, ok, sha256}``: the receiver's verdict (``ok`` false: the sha256 did not
  match and the partial file was discarded);
* ``error {id?, code, message}``: either end abandons the transfer (codes from
  ``protocol/errors.py``'s table: ``bad_frame``, ``protocol_error``, ``not_found``,
  ``conflict``, ``quota_exceeded``, ``invalid_request``, ``request_timeout``,
  ``internal``).

Rule 1 (sender): bytes go out in order from the accepted offset; at most ``window`` bytes
are sent and not yet acknowledged; ``done`` goes only after the last byte.
Rule 2 (receiver): a chunk is taken only at the next expected offset, within the size and
at most :data:`MAX_CHUNK` bytes; anything else fails the transfer (``protocol_error``). An
``ack`` is sent only after the bytes below it are written; one is due whenever a quarter
of the window is unacknowledged and at the last byte, so a sender within its window always
hears again.
Rule 3: the file is kept only when its sha256 equals the offer's (and ``done``'s); the
partial file is renamed into place then, never before.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Protocol

from .errors import RemoteProtocolError

CHANNEL_LABEL = "file"
MAX_CONTROL_BYTES = 4096
MAX_CHUNK = 60 << 10  # payload; with the header, below aiortc's 64 KiB SCTP message cap
DEFAULT_CHUNK = 16 << 10
# above aiortc's SCTP receive window (1 MiB), so SCTP's own limit binds first, as it does
# for a bare channel; the receiver buffers nothing, so a larger window costs no memory here
DEFAULT_WINDOW = 4 << 20
MIN_WINDOW = MAX_CHUNK  # a window smaller than one chunk could never move
MAX_WINDOW = 64 << 20
MAX_SIZE = 1 << 50  # what the wire admits; the receiver's own limit is lower
MAX_NAME_BYTES = 200  # leaves room for the ".<sha>.part" suffix within NAME_MAX (255)
MAX_MESSAGE_CHARS = 300
CHUNK_MAGIC = 0x01
_OFFSET_BYTES = 8

_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_ERROR_CODES = frozenset({"bad_frame", "protocol_error", "not_found", "conflict",
                          "quota_exceeded", "invalid_request", "request_timeout", "internal",
                          "connection_lost"})


class FileXferError(RemoteProtocolError):
    """A transfer failed; ``code`` is what goes in the ``error`` message, ``transfer_id``
    the transfer it ends (None: the message could not be tied to one)."""

    default_code = "protocol_error"

    def __init__(self, message: str, *, code: str | None = None,
                 transfer_id: str | None = None) -> None:
        super().__init__(message, code=code)
        self.transfer_id = transfer_id


def _bad(message: str, transfer_id: str | None = None) -> FileXferError:
    return FileXferError(message, code="bad_frame", transfer_id=transfer_id)


# -- file names -------------------------------------------------------------------------

def safe_name(name: object) -> str:
    """``name`` if it is a plain file name for the workspace, else FileXferError
    ``invalid_request``: a string of 1…:data:`MAX_NAME_BYTES` UTF-8 bytes with no path
    separator (``/`` or ``\\``), no NUL or control character, not ``.``/``..`` nor any
    name starting with ``.`` (no hidden files, nothing that climbs), NFC-normalised as
    given (a name that changes under NFC is refused, so two spellings never map to the
    same file). Never rewritten: what the peer named is what lands, or nothing does."""
    if not isinstance(name, str) or not name:
        raise FileXferError("the file name must be a non-empty string",
                            code="invalid_request")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise FileXferError(f"the file name is over {MAX_NAME_BYTES} bytes",
                            code="invalid_request")
    if "/" in name or "\\" in name:
        raise FileXferError("the file name must not hold a path separator; send a plain "
                            "name, the file lands in the workspace", code="invalid_request")
    if name.startswith("."):
        raise FileXferError("the file name must not start with '.'", code="invalid_request")
    if any(unicodedata.category(c) in ("Cc", "Cs", "Cf") for c in name):
        raise FileXferError("the file name must not hold control or format characters",
                            code="invalid_request")
    if unicodedata.normalize("NFC", name) != name:
        raise FileXferError("the file name must be NFC-normalised", code="invalid_request")
    return name


def part_name(name: str, sha256: str) -> str:
    """The partial file's name for ``name`` with content ``sha256``: a prefix is resumed
    only by an offer of the same content (a different file under the same name starts
    afresh instead of being appended to the wrong prefix)."""
    return f"{name}.{sha256[:16]}.part"


# -- messages -------------------------------------------------------------------------

def _ident(b: dict[str, Any], name: str = "id") -> str:
    value = b.get(name)
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise _bad(f"field {name!r} must be 1-64 characters of [A-Za-z0-9_.:-]")
    return value


def _count(b: dict[str, Any], name: str, tid: str, *, low: int = 0,
           high: int = MAX_SIZE) -> int:
    value = b.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(f"field {name!r} must be an integer {low}..{high}", tid)
    return value


def _sha(b: dict[str, Any], tid: str) -> str:
    value = b.get("sha256")
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise _bad("field 'sha256' must be 64 lowercase hex digits", tid)
    return value


@dataclass(frozen=True, slots=True)
class Offer:
    T: ClassVar[str] = "offer"
    id: str
    name: str
    size: int
    sha256: str
    offset: int | None = None

    def to_json(self) -> dict[str, Any]:
        out = {"t": self.T, "id": self.id, "name": self.name, "size": self.size,
               "sha256": self.sha256}
        if self.offset is not None:
            out["offset"] = self.offset
        return out

    @classmethod
    def parse(cls, b: dict[str, Any]) -> Offer:
        tid = _ident(b)
        try:
            name = safe_name(b.get("name"))
        except FileXferError as exc:
            raise FileXferError(exc.message, code=exc.code, transfer_id=tid) from None
        size = _count(b, "size", tid)
        offset = None if b.get("offset") is None else _count(b, "offset", tid, high=size)
        return cls(tid, name, size, _sha(b, tid), offset)


@dataclass(frozen=True, slots=True)
class Get:
    T: ClassVar[str] = "get"
    id: str
    name: str

    def to_json(self) -> dict[str, Any]:
        return {"t": self.T, "id": self.id, "name": self.name}

    @classmethod
    def parse(cls, b: dict[str, Any]) -> Get:
        tid = _ident(b)
        try:
            return cls(tid, safe_name(b.get("name")))
        except FileXferError as exc:
            raise FileXferError(exc.message, code=exc.code, transfer_id=tid) from None


@dataclass(frozen=True, slots=True)
class Accept:
    T: ClassVar[str] = "accept"
    id: str
    offset: int
    window: int = DEFAULT_WINDOW

    def to_json(self) -> dict[str, Any]:
        return {"t": self.T, "id": self.id, "offset": self.offset, "window": self.window}

    @classmethod
    def parse(cls, b: dict[str, Any]) -> Accept:
        tid = _ident(b)
        return cls(tid, _count(b, "offset", tid),
                   _count(b, "window", tid, low=MIN_WINDOW, high=MAX_WINDOW))


@dataclass(frozen=True, slots=True)
class Ack:
    T: ClassVar[str] = "ack"
    id: str
    offset: int

    def to_json(self) -> dict[str, Any]:
        return {"t": self.T, "id": self.id, "offset": self.offset}

    @classmethod
    def parse(cls, b: dict[str, Any]) -> Ack:
        tid = _ident(b)
        return cls(tid, _count(b, "offset", tid))


@dataclass(frozen=True, slots=True)
class Done:
    T: ClassVar[str] = "done"
    id: str
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"t": self.T, "id": self.id, "sha256": self.sha256}

    @classmethod
    def parse(cls, b: dict[str, Any]) -> Done:
        tid = _ident(b)
        return cls(tid, _sha(b, tid))


@dataclass(frozen=True, slots=True)
class Verified:
    T: ClassVar[str] = "verified"
    id: str
    ok: bool
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"t": self.T, "id": self.id, "ok": self.ok, "sha256": self.sha256}

    @classmethod
    def parse(cls, b: dict[str, Any]) -> Verified:
        tid = _ident(b)
        ok = b.get("ok")
        if not isinstance(ok, bool):
            raise _bad("field 'ok' must be a boolean", tid)
        return cls(tid, ok, _sha(b, tid))


@dataclass(frozen=True, slots=True)
class Error:
    T: ClassVar[str] = "error"
    id: str | None
    code: str
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"t": self.T, "id": self.id, "code": self.code,
                "message": self.message[:MAX_MESSAGE_CHARS]}

    @classmethod
    def parse(cls, b: dict[str, Any]) -> Error:
        tid = None if b.get("id") is None else _ident(b)
        code = b.get("code")
        if not isinstance(code, str) or code not in _ERROR_CODES:
            code = "internal"  # an unknown code still ends the transfer
        message = b.get("message", "")
        if not isinstance(message, str):
            message = ""
        return cls(tid, code, message[:MAX_MESSAGE_CHARS])


Control = Offer | Get | Accept | Ack | Done | Verified | Error
_CONTROL: dict[str, Any] = {cls.T: cls for cls in (Offer, Get, Accept, Ack, Done, Verified,
                                                   Error)}


def encode_control(message: Control) -> str:
    """The JSON text of a control message (compact, ASCII-safe)."""
    return json.dumps(message.to_json(), separators=(",", ":"))


def parse_control(text: str) -> Control:
    """The typed control message in ``text``; FileXferError ``bad_frame`` (with the
    transfer id when one could be read) otherwise. Bounded: at most
    :data:`MAX_CONTROL_BYTES` characters are parsed."""
    if len(text) > MAX_CONTROL_BYTES:
        raise _bad(f"a control message is at most {MAX_CONTROL_BYTES} bytes")
    try:
        b = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise _bad("a control message must be a JSON object") from None
    if not isinstance(b, dict):
        raise _bad("a control message must be a JSON object")
    cls = _CONTROL.get(b.get("t"))  # type: ignore[arg-type]
    if cls is None:
        tid = b.get("id") if isinstance(b.get("id"), str) and _ID.fullmatch(b["id"]) else None
        raise _bad(f"unknown message type {str(b.get('t'))[:40]!r}", tid)
    parsed: Control = cls.parse(b)
    return parsed


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


@dataclass(frozen=True, slots=True)
class Chunk:
    id: str
    offset: int
    payload: bytes


def encode_chunk(transfer_id: str, offset: int, payload: bytes) -> bytes:
    """One binary data message. ``transfer_id`` is a valid id; ``payload`` at most
    :data:`MAX_CHUNK` bytes (LocalProtocolError-free by construction of the Sender)."""
    tid = transfer_id.encode("ascii")
    return b"".join((bytes((CHUNK_MAGIC, len(tid))), tid, offset.to_bytes(_OFFSET_BYTES, "big"),
                     payload))


def parse_chunk(data: bytes) -> Chunk:
    """The chunk in a binary message; FileXferError ``bad_frame`` for a bad header or an
    oversized payload (``protocol_error`` from the receiver for one that does not fit)."""
    if len(data) < 2 or data[0] != CHUNK_MAGIC:
        raise _bad("a binary message must start with 0x01 (a chunk)")
    n = data[1]
    head = 2 + n + _OFFSET_BYTES
    if len(data) < head:
        raise _bad("the chunk header is cut short")
    try:
        tid = data[2:2 + n].decode("ascii")
    except UnicodeDecodeError:
        raise _bad("the chunk id must be ASCII") from None
    if not _ID.fullmatch(tid):
        raise _bad("the chunk id must be 1-64 characters of [A-Za-z0-9_.:-]")
    if len(data) - head > MAX_CHUNK:
        raise FileXferError(f"a chunk holds at most {MAX_CHUNK} bytes",
                            code="protocol_error", transfer_id=tid)
    offset = int.from_bytes(data[2 + n:head], "big")
    return Chunk(tid, offset, data[head:])


# -- state machines -------------------------------------------------------------------

class State(StrEnum):
    OFFERED = "offered"  # sender: offer sent, no accept yet
    SENDING = "sending"  # sender: chunks going out; receiver: chunks coming in
    FINISHING = "finishing"  # sender: done sent; receiver: done seen, verdict pending
    VERIFIED = "verified"  # the file is in place with its sha256
    FAILED = "failed"


class Event(StrEnum):
    ACCEPT = "accept"
    CHUNK = "chunk"  # sender: one sent; receiver: one taken
    ACK = "ack"
    DONE = "done"  # sender: all sent, done goes out; receiver: done came
    VERIFIED = "verified"  # sender: the verdict came; receiver: the file is in place
    FAIL = "fail"  # an error message, a timeout, the channel closed, a hostile message


_T = dict[tuple[State, Event], State]

SENDER: _T = {
    (State.OFFERED, Event.ACCEPT): State.SENDING,
    (State.OFFERED, Event.FAIL): State.FAILED,
    (State.SENDING, Event.CHUNK): State.SENDING,
    (State.SENDING, Event.ACK): State.SENDING,
    (State.SENDING, Event.DONE): State.FINISHING,
    (State.SENDING, Event.FAIL): State.FAILED,
    (State.FINISHING, Event.ACK): State.FINISHING,
    (State.FINISHING, Event.VERIFIED): State.VERIFIED,
    (State.FINISHING, Event.FAIL): State.FAILED,
}

RECEIVER: _T = {
    (State.SENDING, Event.CHUNK): State.SENDING,
    (State.SENDING, Event.DONE): State.FINISHING,
    (State.SENDING, Event.FAIL): State.FAILED,
    (State.FINISHING, Event.VERIFIED): State.VERIFIED,
    (State.FINISHING, Event.FAIL): State.FAILED,
}


def step(table: _T, state: State, event: Event, transfer_id: str | None = None) -> State:
    """One transition; FileXferError ``protocol_error`` naming both when ``event`` is not
    allowed in ``state`` (a ``verified`` before ``done``, a chunk after it...)."""
    try:
        return table[(state, event)]
    except KeyError:
        raise FileXferError(f"{event.value!r} is not allowed in state {state.value!r}",
                            transfer_id=transfer_id) from None


def mermaid(table: _T, initial: State) -> str:
    """A transition table as a Mermaid state diagram, for docs/protocol.md."""
    lines = ["stateDiagram-v2", f"    [*] --> {initial.value}"]
    lines += [f"    {src.value} --> {dst.value}: {ev.value}" for (src, ev), dst in table.items()]
    return "\n".join(lines)


class Hasher(Protocol):
    """What a running sha256 offers (``hashlib.sha256()``'s shape)."""

    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


@dataclass(slots=True)
class Sender:
    """One outgoing transfer (Rule 1). The caller sends :meth:`offer`, feeds the peer's
    messages to :meth:`receive`, asks :meth:`next_chunk` what to read and send, reports it
    with :meth:`sent`, and sends :meth:`done` once :attr:`all_sent`. :attr:`state` follows
    :data:`SENDER`."""

    offer_msg: Offer
    chunk_size: int = DEFAULT_CHUNK
    window: int = DEFAULT_WINDOW
    state: State = State.OFFERED
    offset: int = 0  # the next byte to send
    acked: int = 0
    verdict: Verified | None = None

    def __post_init__(self) -> None:
        if not 0 < self.chunk_size <= MAX_CHUNK or self.window < self.chunk_size:
            raise ValueError("0 < chunk_size <= MAX_CHUNK and window >= chunk_size")

    @property
    def id(self) -> str:
        return self.offer_msg.id

    @property
    def size(self) -> int:
        return self.offer_msg.size

    @property
    def all_sent(self) -> bool:
        return self.state is State.SENDING and self.offset == self.size

    @property
    def in_flight(self) -> int:
        return self.offset - self.acked

    def offer(self) -> Offer:
        return self.offer_msg

    def receive(self, message: Control) -> None:
        """Apply the peer's ``accept``, ``ack``, ``verified`` or ``error``; FileXferError
        for anything out of place (the transfer has then failed)."""
        try:
            if isinstance(message, Accept):
                self._accept(message)
            elif isinstance(message, Ack):
                self._ack(message)
            elif isinstance(message, Verified):
                self._verified(message)
            elif isinstance(message, Error):
                self.state = step(SENDER, self.state, Event.FAIL, self.id)
            else:
                raise FileXferError(f"a sender does not take {message.T!r}",
                                    transfer_id=self.id)
        except FileXferError:
            self.fail()
            raise

    def _accept(self, a: Accept) -> None:
        state = step(SENDER, self.state, Event.ACCEPT, self.id)
        if a.offset > self.size or (self.offer_msg.offset is not None
                                    and a.offset > self.offer_msg.offset):
            raise FileXferError(f"accept offset {a.offset} is beyond what was offered",
                                transfer_id=self.id)
        self.state, self.offset, self.acked = state, a.offset, a.offset
        self.window = max(self.chunk_size, min(self.window, a.window))

    def _ack(self, a: Ack) -> None:
        state = step(SENDER, self.state, Event.ACK, self.id)
        if not self.acked <= a.offset <= self.offset:
            raise FileXferError(f"ack {a.offset} is outside {self.acked}..{self.offset}",
                                transfer_id=self.id)
        self.state, self.acked = state, a.offset

    def _verified(self, v: Verified) -> None:
        state = step(SENDER, self.state, Event.VERIFIED, self.id)
        self.verdict = v
        self.state = state if v.ok and v.sha256 == self.offer_msg.sha256 else State.FAILED

    def next_chunk(self) -> tuple[int, int] | None:
        """``(offset, length)`` of the next chunk to read and send, or None: nothing until
        an ack (the window is full), or everything is sent, or not sending."""
        if self.state is not State.SENDING or self.offset >= self.size:
            return None
        length = min(self.chunk_size, self.size - self.offset)
        if self.in_flight + length > self.window:
            return None
        return self.offset, length

    def sent(self, offset: int, length: int) -> None:
        """The chunk :meth:`next_chunk` gave was sent."""
        if (offset, length) != self.next_chunk():
            raise ValueError(f"sent ({offset}, {length}) is not the next chunk")
        self.state = step(SENDER, self.state, Event.CHUNK, self.id)
        self.offset += length

    def done(self) -> Done:
        """The ``done`` message, once :attr:`all_sent`."""
        if not self.all_sent:
            raise ValueError("done before every byte was sent")
        self.state = step(SENDER, self.state, Event.DONE, self.id)
        return Done(self.id, self.offer_msg.sha256)

    def fail(self) -> None:
        if self.state not in (State.VERIFIED, State.FAILED):
            self.state = State.FAILED


@dataclass(slots=True)
class Receiver:
    """One incoming transfer (Rule 2, Rule 3), created once the caller chose where to
    resume: ``offset`` bytes of the partial file are kept and ``hasher`` holds their
    sha256. The caller sends :meth:`accept`, feeds chunks to :meth:`chunk` (writing the
    payload before sending the ack it returns) and ``done`` to :meth:`done`, then keeps or
    discards the file as the verdict says and reports :meth:`committed`."""

    offer_msg: Offer
    hasher: Hasher
    offset: int = 0
    window: int = DEFAULT_WINDOW
    state: State = State.SENDING
    acked: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.offset <= self.offer_msg.size:
            raise ValueError("the resume offset must be within the offered size")
        if not MIN_WINDOW <= self.window <= MAX_WINDOW:
            raise ValueError("window out of range")
        self.acked = self.offset

    @property
    def id(self) -> str:
        return self.offer_msg.id

    @property
    def size(self) -> int:
        return self.offer_msg.size

    def accept(self) -> Accept:
        return Accept(self.id, self.offset, self.window)

    def chunk(self, c: Chunk) -> Ack | None:
        """Take one chunk: it must start at :attr:`offset`, stay within the size and not
        be empty. Returns the ack to send after the payload is written, when one is due."""
        try:
            state = step(RECEIVER, self.state, Event.CHUNK, self.id)
            if c.offset != self.offset:
                raise FileXferError(f"chunk at {c.offset}, expected {self.offset}",
                                    transfer_id=self.id)
            if not c.payload or self.offset + len(c.payload) > self.size:
                raise FileXferError(f"chunk of {len(c.payload)} bytes at {c.offset} does not "
                                    f"fit a {self.size}-byte file", transfer_id=self.id)
        except FileXferError:
            self.fail()
            raise
        self.state = state
        self.hasher.update(c.payload)
        self.offset += len(c.payload)
        if self.offset == self.size or self.offset - self.acked >= self.window // 4:
            self.acked = self.offset
            return Ack(self.id, self.offset)
        return None

    def done(self, d: Done) -> bool:
        """``done`` came: True when every byte arrived and the sha256 matches the offer's
        and ``done``'s (keep the file), False otherwise (discard it)."""
        try:
            self.state = step(RECEIVER, self.state, Event.DONE, self.id)
        except FileXferError:
            self.fail()
            raise
        digest = self.hasher.hexdigest()
        return (self.offset == self.size and digest == self.offer_msg.sha256
                and d.sha256 == digest)

    def committed(self, ok: bool) -> Verified:
        """The verdict to send: the file is in place (``ok``) or was discarded."""
        self.state = step(RECEIVER, self.state, Event.VERIFIED if ok else Event.FAIL, self.id)
        return Verified(self.id, ok, self.hasher.hexdigest())

    def fail(self) -> None:
        if self.state not in (State.VERIFIED, State.FAILED):
            self.state = State.FAILED


def resume_offset(offer: Offer, have: int) -> int:
    """Where a receiver holding ``have`` bytes of the partial file resumes: never beyond
    what it holds, the size, or the offer's ``offset`` (0 when the partial file is longer
    than the file: it is not this file's prefix)."""
    if have > offer.size:
        return 0
    return min(have, offer.offset if offer.offset is not None else have)
