"""A node's health report: its readiness tree and its recent incidents, as one bounded value.

It travels as the ``data`` of a ``node.event`` of kind :data:`HEALTH_KIND` (class A on
``evt``; docs/protocol.md, "node.event"), which the node sends when the report changes
(node/readiness.py). The controller keeps the latest on the node and shows it on the
node page.

Rule 1 (bounded): at most :data:`MAX_CHECKS` checks, :data:`MAX_REASONS` reasons and
:data:`MAX_INCIDENTS` incidents, each text bounded in characters, and the whole report at
most :data:`MAX_HEALTH_BYTES` as JSON; a report past any rule is refused as a whole
(:class:`~.errors.BadFrame`: the ``node.event`` is a poison frame).
Rule 2 (typed): every value has its type (booleans are booleans, times are integers of
milliseconds, close codes 0..65535); unknown keys are dropped, so a newer node's additions
reach an older controller as nothing rather than as unchecked data.
Rule 3 (text is text): messages are shown to operators as text only, never as markup;
this module checks they are valid Unicode and bounded, not what they say.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import BadFrame
from .fields import MAX_MS
from .values import Limits, int_in, plain, text

HEALTH_KIND = "health"
MAX_CHECKS = 16
MAX_REASONS = 16
MAX_INCIDENTS = 20
MAX_REASON_CHARS = 200
MAX_STATE_CHARS = 64
MAX_DETAIL_CHARS = 256
MAX_CLASS_CHARS = 32
MAX_MESSAGE_CHARS = 512
MAX_HEALTH_BYTES = 32 << 10
# the report's shape: a map of lists and maps of maps, never deeper than 4 levels
HEALTH_LIMITS = Limits(max_depth=4, max_entries=256, max_bytes=MAX_HEALTH_BYTES,
                       max_key_len=64)
_CHECK_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


def clip(value: str, max_chars: int) -> str:
    """``value`` cut to ``max_chars`` characters (an ellipsis marks the cut): what a sender
    does to its own text before building a report that must pass Rule 1."""
    return value if len(value) <= max_chars else value[:max_chars - 1] + "…"


def _flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise BadFrame(f"field {name!r} must be a boolean")
    return value


def _map(value: object, name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise BadFrame(f"field {name!r} must be a map")
    return value


def _list(value: object, name: str, max_items: int) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list | tuple) or len(value) > max_items:
        raise BadFrame(f"field {name!r} must be a list of at most {max_items} items")
    return list(value)


def _ms(value: object, name: str) -> int:
    return int_in(value, name, 0, int(MAX_MS))


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """One branch of the readiness tree: is it ``ok``, its ``state`` (``connected``,
    ``fresh``, ``saturated``...) and, when there is one, why."""

    ok: bool
    state: str
    detail: str | None = None

    def to_map(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.ok, "state": self.state}
        if self.detail is not None:
            out["detail"] = self.detail
        return out

    @classmethod
    def from_map(cls, value: object, name: str) -> HealthCheck:
        m = _map(value, name)
        detail = m.get("detail")
        return cls(ok=_flag(m.get("ok"), f"{name}.ok"),
                   state=text(m.get("state"), f"{name}.state", min_len=1,
                              max_len=MAX_STATE_CHARS),
                   detail=None if detail is None else text(detail, f"{name}.detail",
                                                           max_len=MAX_DETAIL_CHARS))


@dataclass(frozen=True, slots=True)
class HealthIncident:
    """Something that went wrong on the node: when (its wall clock, ms), its class (the
    close code's incident, ``store``, ``transport``...), what, and the close code if any."""

    at_ms: int
    klass: str
    message: str
    close_code: int | None = None

    def to_map(self) -> dict[str, Any]:
        out: dict[str, Any] = {"at_ms": self.at_ms, "class": self.klass,
                               "message": self.message}
        if self.close_code is not None:
            out["close_code"] = self.close_code
        return out

    @classmethod
    def from_map(cls, value: object, name: str) -> HealthIncident:
        m = _map(value, name)
        code = m.get("close_code")
        return cls(at_ms=_ms(m.get("at_ms"), f"{name}.at_ms"),
                   klass=text(m.get("class"), f"{name}.class", min_len=1,
                              max_len=MAX_CLASS_CHARS),
                   message=text(m.get("message"), f"{name}.message",
                                max_len=MAX_MESSAGE_CHARS),
                   close_code=None if code is None else int_in(code, f"{name}.close_code",
                                                               0, 65535))


@dataclass(frozen=True, slots=True)
class NodeHealth:
    """The report (module docstring). ``incidents`` are oldest first; ``incidents_total``
    counts every incident the node recorded since it started, reported or not."""

    at_ms: int
    ready: bool
    reasons: tuple[str, ...] = ()
    checks: Mapping[str, HealthCheck] = field(default_factory=dict)
    incidents: tuple[HealthIncident, ...] = ()
    incidents_total: int = 0

    def to_map(self) -> dict[str, Any]:
        return {"at_ms": self.at_ms, "ready": self.ready, "reasons": list(self.reasons),
                "checks": {k: c.to_map() for k, c in self.checks.items()},
                "incidents": [i.to_map() for i in self.incidents],
                "incidents_total": self.incidents_total}

    @classmethod
    def from_map(cls, value: object) -> NodeHealth:
        """The report ``value`` holds; raises BadFrame past any rule (module docstring)."""
        m = _map(plain(value, "health", HEALTH_LIMITS), "health")  # depth, size, plain
        checks_in = _map(m.get("checks") or {}, "checks")
        if len(checks_in) > MAX_CHECKS:
            raise BadFrame(f"field 'checks' must hold at most {MAX_CHECKS} checks")
        checks: dict[str, HealthCheck] = {}
        for key, check in checks_in.items():
            if not isinstance(key, str) or _CHECK_NAME.fullmatch(key) is None:
                raise BadFrame("a check's name must match [a-z][a-z0-9_]{0,63}")
            checks[key] = HealthCheck.from_map(check, f"checks.{key}")
        total = m.get("incidents_total", 0)
        return cls(
            at_ms=_ms(m.get("at_ms"), "at_ms"),
            ready=_flag(m.get("ready"), "ready"),
            reasons=tuple(text(r, "reasons", max_len=MAX_REASON_CHARS)
                          for r in _list(m.get("reasons"), "reasons", MAX_REASONS)),
            checks=checks,
            incidents=tuple(HealthIncident.from_map(i, "incidents") for i in
                            _list(m.get("incidents"), "incidents", MAX_INCIDENTS)),
            incidents_total=int_in(total, "incidents_total", 0))
