"""The bundle plane on the session: the controller's offer (``update.now``) and the node's
progress (``bundle.status``), as typed values (docs/protocol.md "Bundle updates").

An offer is a command of kind :data:`UPDATE_KIND` (class A ``cmd.deliver``): its ``args``
name one published bundle version and how the node must treat it. The node fetches the
file (``GET /api/v1/bundles/{name}/{version}/file``, authenticated as itself), checks it
(protocol/bundle.py) and reports each step as ``bundle.status`` (class A on ``evt``).

Rule 1 (parsed once): both bodies are parsed here, at the boundary, into frozen values;
anything off the rules is :class:`~.errors.BadFrame` (a poison ``bundle.status``; an
``update.now`` the node rejects without fetching anything).
Rule 2 (bounded): every text has a character limit, ``detail`` is a plain map of at most
:data:`MAX_DETAIL_BYTES` as JSON and 2 levels; unknown keys are dropped (a newer peer's
additions reach an older one as nothing).
Rule 3 (the states): :data:`BUNDLE_STATES` in the order an attempt goes through them;
:data:`TERMINAL_STATES` end one attempt. ``rejected`` carries a code of
:data:`~.bundle.REJECT_CODES`; ``failed`` and ``rolled_back`` one of :data:`FAILURE_CODES`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .bundle import KINDS, MAX_VERSION, REJECT_CODES
from .errors import BadFrame
from .values import Limits, int_in, number_in, plain, text

UPDATE_KIND = "update.now"
# Stops a bundle's app for good (docs/protocol.md "Stopping a bundle's app"): the node
# marks the name stopped in its state.json, so no runtime start restores it, until a later
# ``update.now`` of the name activates a version again.
BUNDLE_STOP_KIND = "bundle.stop"

BUNDLE_STATES = ("downloading", "verified", "deferred", "activated", "healthy", "rejected",
                 "failed", "rolled_back")
TERMINAL_STATES = frozenset({"healthy", "rejected", "failed", "rolled_back"})
FAILURE_CODES = frozenset({
    "download_failed",  # the file could not be fetched (after the retries), nothing changed
    "activation_failed",  # unpacking or the swap failed; the previous version stays
    "start_failed",  # the app exited failure_threshold times within the probation window
    "health_failed",  # the app's health check failed within the probation window
    "update_failed",  # a runtime candidate failed a stage (detail: stage, slot, backup_path)
    "superseded",  # a newer offer for the same name replaced this one before it finished
    "interrupted",  # the runtime stopped during the attempt; the node is on a whole version
})
CODES = REJECT_CODES | FAILURE_CODES

MAX_REASON_CHARS = 500
MAX_SIZE = 1 << 40
MAX_PROBATION_S = 86_400.0
DEFAULT_PROBATION_S = 30.0
MAX_FAILURE_THRESHOLD = 100
DEFAULT_FAILURE_THRESHOLD = 3
MAX_DETAIL_BYTES = 8 << 10
MAX_MS = 2**53
DETAIL_LIMITS = Limits(max_depth=2, max_entries=64, max_bytes=MAX_DETAIL_BYTES,
                       max_key_len=64)
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_ROLLOUT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def _map(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise BadFrame(f"{what} must be a map")
    return value


def _match(value: object, name: str, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise BadFrame(f"field {name!r} must be {what}")
    return value


def _flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise BadFrame(f"field {name!r} must be a boolean")
    return value


def _opt_version(value: object, name: str) -> int | None:
    return None if value is None else int_in(value, name, 1, MAX_VERSION)


def _opt_rollout(value: object) -> str | None:
    if value is None:
        return None
    return _match(value, "rollout_id", _ROLLOUT_ID, "1-64 of [A-Za-z0-9_-]")


@dataclass(frozen=True, slots=True)
class UpdateOffer:
    """``update.now`` args: fetch bundle ``name`` ``version`` (a file of ``size`` bytes and
    ``sha256``, both the **file's** as the bundle API gives them) and activate it.

    ``rollback`` allows a version below the highest ever activated (the rollout's explicit
    rollback); ``probation_s`` is how long a started app must stay up and healthy to be
    ``healthy``; ``failure_threshold`` the failed starts within it that roll it back;
    ``force`` applies a runtime update even while live media runs (else ``deferred``)."""

    name: str
    version: int
    kind: str
    sha256: str
    size: int
    rollout_id: str | None = None
    rollback: bool = False
    probation_s: float = DEFAULT_PROBATION_S
    failure_threshold: int = DEFAULT_FAILURE_THRESHOLD
    force: bool = False

    def args(self) -> dict[str, Any]:
        """The ``update.now`` args that parse back to this offer."""
        return {"name": self.name, "version": self.version, "kind": self.kind,
                "sha256": self.sha256, "size": self.size, "rollout_id": self.rollout_id,
                "rollback": self.rollback, "probation_s": self.probation_s,
                "failure_threshold": self.failure_threshold, "force": self.force}


def parse_update_offer(args: object) -> UpdateOffer:
    """``update.now`` args by Rule 1; :class:`BadFrame` names the first field off the rules."""
    a = _map(args, "update.now args")
    kind = a.get("kind", "app")
    if kind not in KINDS:
        raise BadFrame(f"field 'kind' must be one of {', '.join(KINDS)}")
    return UpdateOffer(
        name=_match(a.get("name"), "name", _NAME, "a bundle name ([a-z0-9][a-z0-9-]{0,62})"),
        version=int_in(a.get("version"), "version", 1, MAX_VERSION),
        kind=str(kind),
        sha256=_match(a.get("sha256"), "sha256", _SHA256, "64 lowercase hex digits"),
        size=int_in(a.get("size"), "size", 1, MAX_SIZE),
        rollout_id=_opt_rollout(a.get("rollout_id")),
        rollback=_flag(a.get("rollback", False), "rollback"),
        probation_s=number_in(a.get("probation_s", DEFAULT_PROBATION_S), "probation_s", 0,
                              MAX_PROBATION_S),
        failure_threshold=int_in(a.get("failure_threshold", DEFAULT_FAILURE_THRESHOLD),
                                 "failure_threshold", 1, MAX_FAILURE_THRESHOLD),
        force=_flag(a.get("force", False), "force"))


@dataclass(frozen=True, slots=True)
class BundleStop:
    """``bundle.stop`` args: stop the app of bundle ``name`` and keep it stopped across
    runtime restarts (its versions stay on disk; a later offer starts it again)."""

    name: str

    def args(self) -> dict[str, Any]:
        return {"name": self.name}


def parse_bundle_stop(args: object) -> BundleStop:
    """``bundle.stop`` args by Rule 1 (unknown keys dropped, Rule 2); :class:`BadFrame`
    names the field."""
    a = _map(args, "bundle.stop args")
    return BundleStop(name=_match(a.get("name"), "name", _NAME,
                                  "a bundle name ([a-z0-9][a-z0-9-]{0,62})"))


@dataclass(frozen=True, slots=True)
class BundleStatus:
    """One step of one attempt (Rule 3). ``version`` is the version the step is about;
    ``active`` and ``last_known_good`` what the node runs and keeps after it (None: none);
    ``at_ms`` the node's clock. ``detail`` (read-only) holds the figures: e.g. ``bytes``
    and ``resumed_from`` while downloading; ``failed_starts``, ``exit_code``, ``check``
    and ``log_tail`` for a rollback; ``stage``, ``slot`` and ``backup_path`` for a runtime
    update."""

    name: str
    version: int
    state: str
    at_ms: int
    code: str | None = None
    reason: str = ""
    rollout_id: str | None = None
    kind: str = "app"
    active: int | None = None
    last_known_good: int | None = None
    detail: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def body(self) -> dict[str, Any]:
        """The ``bundle.status`` body that parses back to this value."""
        return {"name": self.name, "version": self.version, "state": self.state,
                "at_ms": self.at_ms, "code": self.code, "reason": self.reason,
                "rollout_id": self.rollout_id, "kind": self.kind, "active": self.active,
                "last_known_good": self.last_known_good, "detail": dict(self.detail)}


def parse_bundle_status(body: object) -> BundleStatus:
    """A ``bundle.status`` body by Rules 1-3."""
    b = _map(body, "bundle.status body")
    state = b.get("state")
    if state not in BUNDLE_STATES:
        raise BadFrame(f"field 'state' must be one of {', '.join(BUNDLE_STATES)}")
    code = b.get("code")
    if state == "rejected":
        if code not in REJECT_CODES:
            raise BadFrame("a rejected bundle.status needs a 'code' of the reject codes")
    elif state in ("failed", "rolled_back"):
        if code not in FAILURE_CODES:
            raise BadFrame(f"a {state} bundle.status needs a 'code' of the failure codes")
    elif code is not None and code not in CODES:
        raise BadFrame("field 'code' is not a known code")
    kind = b.get("kind", "app")
    if kind not in KINDS:
        raise BadFrame(f"field 'kind' must be one of {', '.join(KINDS)}")
    detail = b.get("detail") or {}
    if not isinstance(detail, Mapping):
        raise BadFrame("field 'detail' must be a map")
    return BundleStatus(
        name=_match(b.get("name"), "name", _NAME, "a bundle name"),
        version=int_in(b.get("version"), "version", 1, MAX_VERSION),
        state=str(state),
        at_ms=int_in(b.get("at_ms"), "at_ms", 0, MAX_MS),
        code=None if code is None else str(code),
        reason=text(b.get("reason", ""), "reason", max_len=MAX_REASON_CHARS),
        rollout_id=_opt_rollout(b.get("rollout_id")),
        kind=str(kind),
        active=_opt_version(b.get("active"), "active"),
        last_known_good=_opt_version(b.get("last_known_good"), "last_known_good"),
        detail=MappingProxyType(plain(detail, "detail", DETAIL_LIMITS)))


__all__ = ["BUNDLE_STATES", "BUNDLE_STOP_KIND", "CODES", "FAILURE_CODES", "TERMINAL_STATES",
           "UPDATE_KIND", "BundleStatus", "BundleStop", "UpdateOffer", "parse_bundle_status",
           "parse_bundle_stop", "parse_update_offer"]
