"""What the store returns: frozen records, with stored JSON already decoded.

Rule 1 (reading is total, issue 11): building a record never raises because of what is
stored. JSON text is read with :func:`loads` (never raises; only what JSON can hold:
non-finite numbers become null, lone surrogates U+FFFD; unreadable text, or a value of the
wrong shape, becomes the field's default); text columns that hold something else read as
None. Rows written by older versions, before values were checked at the edge, read the same.
Rule 2: records are values. Their containers (``labels``, ``args``...) are plain JSON
values for the API to serialise; nobody mutates them (the store builds new ones per read).
Rule 3: a record never carries an engine's row type: callers cannot tell SQLite from
PostgreSQL.
Rule 4: a record is read by attribute only (``record.node_id``): it is no mapping, so code
written against the raw rows of earlier versions fails at once instead of meeting decoded
values where it expected text.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .sql import Row

logger = logging.getLogger(__name__)

# -- tolerant decoding --------------------------------------------------------------------


def _finite_or_none(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None


_SURROGATE = re.compile("[\ud800-\udfff]")


def fix_text(value: str) -> str:
    """``value`` with each lone surrogate replaced by U+FFFD."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", value)
    return value


def _sanitize(value: Any) -> Any:
    """``value`` (from :func:`json.loads`) without lone surrogates."""
    if isinstance(value, str):
        return fix_text(value)
    if isinstance(value, list):
        return [_sanitize(v) for v in value]
    if isinstance(value, dict):
        return {fix_text(k): _sanitize(v) for k, v in value.items()}
    return value


def loads(text: object, default: Any = None) -> Any:
    """Stored JSON text as a value JSON can hold again; ``default`` for None, for a value
    that is not text, or for text that is not JSON (logged, never raised)."""
    if text is None:
        return default
    if isinstance(text, bytes | memoryview):
        text = bytes(text).decode("utf-8", "replace")
    if not isinstance(text, str):
        return default
    try:
        value = json.loads(text, parse_constant=lambda _: None,
                           parse_float=_finite_or_none)
    except (ValueError, RecursionError):
        logger.warning("stored JSON is unreadable; shown as its default",
                       extra={"detail": text[:80]})
        return default
    # json.dumps escapes non-ASCII by default, so a lone surrogate is stored as "\\udXXX"
    return _sanitize(value) if "\\ud" in text or "\\uD" in text else value


def _map(text: object) -> dict[str, Any]:
    value = loads(text, {})
    return value if isinstance(value, dict) else {}


def _list(text: object) -> list[Any]:
    value = loads(text, [])
    return value if isinstance(value, list) else []


def _text(value: object) -> str | None:
    return fix_text(value) if isinstance(value, str) else None


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return int(value)
    return value if isinstance(value, int) else None


def _count(value: object) -> int:
    """A counter column (``sum()`` is a Decimal on PostgreSQL, NULL on no rows)."""
    if isinstance(value, bool) or value is None:
        return 0
    try:
        return int(value)  # type: ignore[call-overload,no-any-return]
    except (TypeError, ValueError, OverflowError):
        return 0


def _time(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


# -- records --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """A node as stored (its live session, if any, is the gateway's to add)."""

    node_id: str
    labels: dict[str, Any]
    enabled: bool
    created_at: float | None
    current_session: str | None
    last_seen_at: float | None
    closed_at: float | None
    closed_by_goodbye: bool
    runtime_state: str | None
    runtime_version: str | None
    sidecar: dict[str, Any]
    capabilities: list[Any]
    policy: Any  # the node's last report, any JSON value, None when it never sent one
    apps: dict[str, Any]
    dead_letters_total: int
    current_replica: str | None = None  # the replica holding current_session, if named
    # the node's last health report (protocol/health.py, as checked on arrival); {} when none
    health: dict[str, Any] = field(default_factory=dict)
    # its bundles as its bundle.status reports left them (store/rollouts.py); {} when none
    bundles: dict[str, Any] = field(default_factory=dict)

    COLUMNS = ("node_id, labels, enabled, created_at, current_session, last_seen_at, "
               "closed_at, closed_by_goodbye, runtime_state, runtime_version, sidecar, "
               "capabilities, policy, apps, dead_letters_total, current_replica, health, "
               "bundles")

    @classmethod
    def from_row(cls, row: Row) -> NodeRecord:
        return cls(node_id=str(row["node_id"]), labels=_map(row["labels"]),
                   enabled=bool(row["enabled"]), created_at=_time(row["created_at"]),
                   current_session=_text(row["current_session"]),
                   last_seen_at=_time(row["last_seen_at"]), closed_at=_time(row["closed_at"]),
                   closed_by_goodbye=bool(row["closed_by_goodbye"]),
                   runtime_state=_text(row["runtime_state"]),
                   runtime_version=_text(row["runtime_version"]),
                   sidecar=_map(row["sidecar"]), capabilities=_list(row["capabilities"]),
                   policy=loads(row["policy"]), apps=_map(row["apps"]),
                   dead_letters_total=_count(row["dead_letters_total"]),
                   current_replica=_text(row["current_replica"]),
                   health=_map(row["health"]), bundles=_map(row["bundles"]))


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One edge session of a node's history."""

    session_id: str
    opened_at: float | None
    closed_at: float | None
    close_code: int | None
    reason: str | None
    resumed: bool
    remote: str | None
    replica_id: str | None = None  # the replica that held it; None: a single controller

    COLUMNS = ("session_id, opened_at, closed_at, close_code, reason, resumed, remote, "
               "replica_id")

    @classmethod
    def from_row(cls, row: Row) -> SessionRecord:
        return cls(session_id=str(row["session_id"]), opened_at=_time(row["opened_at"]),
                   closed_at=_time(row["closed_at"]), close_code=_int(row["close_code"]),
                   reason=_text(row["reason"]), resumed=bool(row["resumed"]),
                   remote=_text(row["remote"]), replica_id=_text(row["replica_id"]))


@dataclass(frozen=True, slots=True)
class CommandEvent:
    """One entry of a command's timeline."""

    state: str
    at: float | None
    detail: str | None


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """A command; ``timeline`` is empty in lists (only single reads load it)."""

    command_id: str
    node_id: str
    kind: str
    args: dict[str, Any]
    state: str
    epoch: int | None
    q: int | None
    created_at: float | None
    deadline: float | None
    idem_key: str | None
    exit_code: int | None
    error: str | None
    result: Any
    started_ms: int | None
    finished_ms: int | None
    updated_at: float | None
    log_bytes: int
    log_dropped_bytes: int
    timeline: tuple[CommandEvent, ...] = ()

    COLUMNS = ("command_id, node_id, kind, args, state, epoch, q, created_at, deadline, "
               "idem_key, exit_code, error, result, started_ms, finished_ms, updated_at, "
               "log_bytes, log_dropped_bytes")

    @classmethod
    def from_row(cls, row: Row, timeline: tuple[CommandEvent, ...] = ()) -> CommandRecord:
        result = row["result"]
        return cls(command_id=str(row["command_id"]), node_id=str(row["node_id"]),
                   kind=_text(row["kind"]) or "", args=_map(row["args"]),
                   state=str(row["state"]), epoch=_int(row["epoch"]), q=_int(row["q"]),
                   created_at=_time(row["created_at"]), deadline=_time(row["deadline"]),
                   idem_key=_text(row["idem_key"]), exit_code=_int(row["exit_code"]),
                   error=_text(row["error"]), result=loads(result) if result else None,
                   started_ms=_int(row["started_ms"]), finished_ms=_int(row["finished_ms"]),
                   updated_at=_time(row["updated_at"]), log_bytes=_count(row["log_bytes"]),
                   log_dropped_bytes=_count(row["log_dropped_bytes"]), timeline=timeline)


@dataclass(frozen=True, slots=True)
class NodeEventRecord:
    """One stored node event (``data`` decoded; None when unreadable)."""

    id: int
    kind: str | None
    data: Any
    at: float | None

    @classmethod
    def from_row(cls, row: Row) -> NodeEventRecord:
        return cls(id=int(row["id"]), kind=_text(row["kind"]), data=loads(row["data"]),
                   at=_time(row["at"]))


@dataclass(frozen=True, slots=True)
class LogChunk:
    """One stored log chunk (class C): its exact bytes."""

    id: int
    command_id: str | None
    source: str
    seq: int
    data: bytes
    dropped: int


@dataclass(frozen=True, slots=True)
class LogPage:
    """A page of log chunks in id order; ``more`` is True when a further chunk was stored
    after it when it was read (the page was cut by its count or its bytes). Iterates, sizes
    and indexes as its chunks."""

    items: tuple[LogChunk, ...] = ()
    more: bool = False

    def __iter__(self) -> Iterator[LogChunk]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> LogChunk:
        return self.items[index]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A class A frame refused for its content (docs/protocol.md §5, poison frames)."""

    id: int
    stream: str
    q: int
    frame_type: str
    frame_id: str | None
    reason: str
    excerpt: str
    at: float | None

    COLUMNS = "id, stream, q, frame_type, frame_id, reason, excerpt, at"

    @classmethod
    def from_row(cls, row: Row) -> DeadLetter:
        return cls(id=int(row["id"]), stream=_text(row["stream"]) or "",
                   q=_count(row["q"]), frame_type=_text(row["frame_type"]) or "",
                   frame_id=_text(row["frame_id"]), reason=_text(row["reason"]) or "",
                   excerpt=_text(row["excerpt"]) or "", at=_time(row["at"]))


@dataclass(frozen=True, slots=True)
class SessionOpened:
    """What :meth:`Store.open_session` did."""

    session_id: str
    resumed: bool
    cmd_epoch: int
    evt_applied: int
    evt_epoch_reset: bool
    cmd_epoch_rotated: bool
    superseded_session: str | None
    superseded_replica: str | None = None  # the replica that held the superseded session
    owner_epoch: int = 0  # the node's ownership epoch this session claimed (one more each)


class Touch(NamedTuple):
    """What a touch writes for one node: when its session last heard a frame (wall clock),
    the runtime state it reported (None: keep the stored one), and the session it is
    about: a session that no longer holds the node writes nothing."""

    at: float
    state: str | None
    session_id: str


@dataclass(frozen=True, slots=True)
class StatusEffect:
    """What one applied cmd.status did, for events pushed to subscribers."""

    command_id: str
    state: str
    applied: bool


@dataclass(frozen=True, slots=True)
class Poisoned:
    """A class A frame that decoded as an envelope but whose body broke the value rules
    (docs/protocol.md §5, poison frames): it takes the place of the body in
    :meth:`Store.apply_evt`, which records it as a dead letter instead of applying it, in
    the transaction that moves the cursor past it."""

    reason: str
    excerpt: str


def usage_counts(row: Row) -> dict[str, int]:
    """One budget's totals (``node_usage``) as plain ints."""
    return {key: _count(row[key]) for key in ("items", "bytes", "pruned_items",
                                               "pruned_bytes", "refused_items",
                                               "refused_bytes")}
