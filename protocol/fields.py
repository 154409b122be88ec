"""Typed fields of the bodies a peer sends: the field helpers, the small frozen values
nested in bodies (``runtime``, ``sidecar``, ``outbox``, ``transport``, usage) and their
value rules (finite numbers in the range of where they are kept, bounded text, no bytes
where text belongs). Pure; mypy --strict. ``frames.py`` builds the bodies from these.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import BadFrame
from .values import INT64_MAX, INT64_MIN, Limits, int_in, number_in, plain_map, text, text_map

MAX_ID_LEN = 128


def opt_field(b: Mapping[str, Any], name: str, check: Any, *args: Any, at: str = "",
              **kwargs: Any) -> Any:
    """``check(value, name, ...)`` for an optional field; None when absent or nil. ``at``
    names the map that holds it, so an error names ``outbox.depth``, not ``depth``."""
    value = b.get(name)
    return None if value is None else check(value, f"{at}.{name}" if at else name, *args,
                                            **kwargs)


def req_field(b: Mapping[str, Any], name: str, check: Any, *args: Any, **kwargs: Any) -> Any:
    """``check(value, name, ...)`` for a required field."""
    value = b.get(name)
    if value is None:
        raise BadFrame(f"body field {name!r} is required")
    return check(value, name, *args, **kwargs)


def _sub(value: object, name: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise BadFrame(f"body field {name!r} must be a map")
    return value


def bounded_text(value: object, name: str, *, max_len: int, min_len: int = 0) -> str:
    """:func:`values.text`, with a fast path for short ASCII text (always valid Unicode)."""
    if type(value) is str and min_len <= len(value) <= max_len and value.isascii():
        return value
    return text(value, name, max_len=max_len, min_len=min_len)


def omit_none(out: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in out.items() if v is not None}


# --- typed sub-values and their rules --------------------------------------------------------
#
# Rule 1: every number a peer sends is finite and within the range of where it is kept
# (signed 64-bit integers in the store; floats in JSON); every text is valid Unicode and
# bounded; bytes never stand in for text. Rule 2: unknown keys inside these values are
# dropped (never stored or pushed), so a newer peer can add fields without breaking an older
# controller. Rule 3: a sender may construct a body with a plain map where a sub-value is
# expected; it is checked and converted on construction, so every instance holds typed
# values and ``to_body()`` never emits anything the rules refuse.

MAX_VERSION_LEN = 64
MAX_CAPABILITIES = 64
MAX_CAPABILITY_LEN = 128
MAX_KIND_LEN = 128
MAX_ERROR_LEN = 4096
MAX_SOURCE_LEN = 64
MAX_REASON_LEN = 1024
MAX_PID = (1 << 31) - 1
MAX_PATH_LEN = 4096
MAX_CPUS = 1 << 20
EXIT_CODE_MIN = -(1 << 31)  # signed or unsigned 32-bit exit statuses (POSIX, Windows)
EXIT_CODE_MAX = (1 << 32) - 1
MAX_SECONDS = 1e12  # about 31,700 years: any duration or age a peer reports
MAX_MS = 1e15
# Free-form maps a peer sends (node.event data, cmd.status result, monitor.packet data):
# at most 64 KiB as compact JSON, 16 levels, 4,096 entries. A class A body past it is a
# poison frame (docs/protocol.md §5); a class C one is dropped with a bad_frame error.
DATA_LIMITS = Limits(max_depth=16, max_entries=4096, max_bytes=64 * 1024)
# Command args (cmd.deliver, controller -> node): plain data bounded by the frame itself.
ARGS_LIMITS = Limits(max_depth=32, max_entries=65_536, max_bytes=1 << 20)
RUNTIME_STATES = frozenset({"attached", "detached", "restarting"})

_SubT = TypeVar("_SubT", bound="_SubValue")


class _SubValue:
    """Base of the typed maps nested in bodies: ``from_map`` checks, ``to_map`` emits."""

    __slots__ = ()

    @classmethod
    def from_map(cls: type[_SubT], value: object, name: str) -> _SubT:  # pragma: no cover
        raise NotImplementedError

    def to_map(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def coerce(cls: type[_SubT], value: object, name: str) -> _SubT:
        """``value`` itself when already typed, else :meth:`from_map` of it (Rule 3)."""
        return value if isinstance(value, cls) else cls.from_map(value, name)


def _runtime_state(value: object, name: str) -> str:
    if not isinstance(value, str) or value not in RUNTIME_STATES:  # a map is unhashable
        raise BadFrame(f"field {name!r} must be one of {sorted(RUNTIME_STATES)}")
    return str(value)


def version_text(value: object, name: str) -> str:
    return text(value, name, max_len=MAX_VERSION_LEN)


def nonneg_int(value: object, name: str) -> int:
    return int_in(value, name, 0, INT64_MAX)


def seconds(value: object, name: str) -> float:
    return number_in(value, name, 0, MAX_SECONDS)


@dataclass(frozen=True, slots=True)
class RuntimeInfo(_SubValue):
    """The node runtime as a hello or heartbeat reports it."""

    state: str | None = None
    version: str | None = None

    @classmethod
    def from_map(cls, value: object, name: str) -> RuntimeInfo:
        b = _sub(value, name)
        return cls(state=opt_field(b, "state", _runtime_state, at=name),
                   version=opt_field(b, "version", version_text, at=name))

    def to_map(self) -> dict[str, Any]:
        return omit_none({"state": self.state, "version": self.version})


@dataclass(frozen=True, slots=True)
class SidecarInfo(_SubValue):
    version: str | None = None
    pid: int | None = None

    @classmethod
    def from_map(cls, value: object, name: str) -> SidecarInfo:
        b = _sub(value, name)
        return cls(version=opt_field(b, "version", version_text, at=name),
                   pid=opt_field(b, "pid", int_in, 0, MAX_PID, at=name))

    def to_map(self) -> dict[str, Any]:
        return omit_none({"version": self.version, "pid": self.pid})


@dataclass(frozen=True, slots=True)
class OutboxInfo(_SubValue):
    """The node's evt outbox: frames not yet acked, the age of the oldest, its cursors."""

    depth: int | None = None
    oldest_age_s: float | None = None
    last: int | None = None
    acked: int | None = None

    @classmethod
    def from_map(cls, value: object, name: str) -> OutboxInfo:
        b = _sub(value, name)
        return cls(depth=opt_field(b, "depth", nonneg_int, at=name),
                   oldest_age_s=opt_field(b, "oldest_age_s", seconds, at=name),
                   last=opt_field(b, "last", nonneg_int, at=name),
                   acked=opt_field(b, "acked", nonneg_int, at=name))

    def to_map(self) -> dict[str, Any]:
        return omit_none({"depth": self.depth, "oldest_age_s": self.oldest_age_s,
                           "last": self.last, "acked": self.acked})


@dataclass(frozen=True, slots=True)
class TransportInfo(_SubValue):
    """The sidecar's view of the link (heartbeat ``transport``, docs/protocol.md §5)."""

    rtt_ms: float | None = None
    reconnects: int | None = None
    clock_offset_ms: float | None = None

    @classmethod
    def from_map(cls, value: object, name: str) -> TransportInfo:
        b = _sub(value, name)
        return cls(rtt_ms=opt_field(b, "rtt_ms", number_in, 0, MAX_MS, at=name),
                   reconnects=opt_field(b, "reconnects", nonneg_int, at=name),
                   clock_offset_ms=opt_field(b, "clock_offset_ms", number_in, -MAX_MS, MAX_MS,
                                        at=name))

    def to_map(self) -> dict[str, Any]:
        return omit_none({"rtt_ms": self.rtt_ms, "reconnects": self.reconnects,
                           "clock_offset_ms": self.clock_offset_ms})


def capabilities_list(value: object, name: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or len(value) > MAX_CAPABILITIES:
        raise BadFrame(f"body field {name!r} must be a list of at most {MAX_CAPABILITIES} "
                       "strings")
    return tuple(bounded_text(c, name, max_len=MAX_CAPABILITY_LEN) for c in value)


def labels_map(value: object, name: str) -> dict[str, str]:
    return text_map(value, name)


_FAST_SCALARS = (int, float, str, bool, type(None))
_FAST_MAX_ENTRIES = 64
_FAST_MAX_TEXT = 4096


def plain_data(value: object, name: str) -> dict[str, Any]:
    """A free-form map within :data:`DATA_LIMITS`. Hot path (every node.event): a flat map
    of short ASCII text keys to scalars is checked here in one pass, counting each text at
    6 bytes a character (the worst JSON escape), so it can only over-count; anything else,
    or anything near the byte bound, takes the exact walk of :func:`plain_map`."""
    if type(value) is dict and len(value) <= _FAST_MAX_ENTRIES:
        size = 2 + 2 * len(value)
        for key, item in value.items():
            kind = type(item)
            if (type(key) is not str or len(key) > _FAST_MAX_TEXT or not key.isascii()
                    or kind not in _FAST_SCALARS):
                break
            size += 6 * len(key) + 2
            if kind is str:
                if len(item) > _FAST_MAX_TEXT or not item.isascii():
                    break
                size += 6 * len(item) + 2
            elif kind is int:
                if not INT64_MIN <= item <= INT64_MAX:
                    break
                size += 20
            elif kind is float:
                if not math.isfinite(item):
                    break
                size += 24
            else:
                size += 5
        else:
            if size <= DATA_LIMITS.max_bytes:
                return dict(value)
    return plain_map(value, name, DATA_LIMITS)


@dataclass(frozen=True, slots=True)
class UsageInfo(_SubValue):
    """Memory or disk usage in ``node.resources``: bytes, a percentage, the disk's path."""

    total: int | None = None
    available: int | None = None
    free: int | None = None
    percent: float | None = None
    path: str | None = None

    @classmethod
    def from_map(cls, value: object, name: str) -> UsageInfo:
        b = _sub(value, name)
        return cls(total=opt_field(b, "total", nonneg_int, at=name),
                   available=opt_field(b, "available", nonneg_int, at=name),
                   free=opt_field(b, "free", nonneg_int, at=name),
                   percent=opt_field(b, "percent", number_in, 0, 100, at=name),
                   path=opt_field(b, "path", bounded_text, max_len=MAX_PATH_LEN, at=name))

    def to_map(self) -> dict[str, Any]:
        return omit_none({"total": self.total, "available": self.available,
                           "free": self.free, "percent": self.percent, "path": self.path})



def load_list(value: object, name: str) -> tuple[float, ...]:
    if not isinstance(value, list | tuple) or len(value) > 3:
        raise BadFrame(f"body field {name!r} must be a list of at most 3 numbers")
    return tuple(number_in(x, name, 0, 1e9) for x in value)
