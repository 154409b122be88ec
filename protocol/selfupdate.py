"""Runtime self-update under a supervisor (docs/operations.md "Upgrading", docs/protocol.md
"Addition: heartbeat `update`"): the values that cross a process boundary, pure.

* :class:`UpdateInfo`: the heartbeat's ``update`` (sidecar -> controller) while the node's
  runtime is being replaced: its ``stage``, the target ``version`` and ``slot``, how long the
  stage has lasted and may last.
* :class:`UpdateRequest`: ``<state-dir>/runtime/update-request.json``, written by the
  runtime once a verified runtime bundle is unpacked into the inactive slot; read by the
  supervisor.
* :class:`UpdateRecord`: ``<state-dir>/runtime/update.json``, the supervisor's state of the
  update in progress (or the outcome of the last one): what a restarted supervisor resumes
  from, and what the runtime reads to report the outcome.
* :class:`SlotPointer`: ``<state-dir>/runtime/active.json``, the slot the runtime starts
  from. Rule 1: **switching the pointer is the commit point of an update**; an update
  whose record is not terminal is decided by it (pointer on the new slot: promoted; else
  rolled back), so a supervisor killed at any instant resolves the same way.

Rule 2 (parsed once, bounded): every parser takes bytes and returns a frozen value or raises
:class:`~.errors.BadFrame` naming the field; a file over its byte bound is refused unread,
unknown keys are dropped, every text is bounded, every number in range.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from .errors import BadFrame
from .fields import _sub, _SubValue, omit_none, opt_field, seconds, version_text
from .values import int_in, text

# The stages of one update, in order. ``applying``: the old runtime is stopping (detached,
# ``restarting``); ``starting``: the candidate process starts from the new slot;
# ``attaching``: it must attach to the sidecar; ``readiness``: its readiness tree must say
# ready; ``replay``: it must have the outbox it inherited acked by the controller;
# ``restoring``: a stage failed and the previous slot's runtime is starting again.
STAGES = ("applying", "starting", "attaching", "readiness", "replay", "restoring")
OUTCOMES = ("promoted", "rolled_back")
SLOTS = ("base", "a", "b")  # base: the installed package (no slot directory)
UPDATE_SLOTS = ("a", "b")  # where a bundle can be installed

MAX_FILE_BYTES = 64 << 10
MAX_LOG_LINES = 20
MAX_LOG_LINE_CHARS = 300
MAX_REASON_CHARS = 500
MAX_PATH_CHARS = 1024
MAX_MS = 2**53
MAX_BUNDLE_VERSION = 2**53
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_COMMAND_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")


def _choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise BadFrame(f"field {name!r} must be one of {', '.join(choices)}")
    return value


def _match(value: object, name: str, pattern: re.Pattern[str]) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise BadFrame(f"field {name!r} is not a valid value")
    return value


def _opt(b: Mapping[str, Any], name: str, check: Any, *args: Any) -> Any:
    value = b.get(name)
    return None if value is None else check(value, name, *args)


def _ms(value: object, name: str) -> int:
    return int_in(value, name, 0, MAX_MS)


def _load(raw: bytes, what: str) -> Mapping[str, Any]:
    if len(raw) > MAX_FILE_BYTES:
        raise BadFrame(f"{what} is {len(raw)} bytes, over {MAX_FILE_BYTES}")
    try:
        value = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise BadFrame(f"{what} is not JSON ({type(exc).__name__})") from None
    if not isinstance(value, dict):
        raise BadFrame(f"{what} must be a JSON object")
    return value


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def dumps(value: Mapping[str, Any]) -> bytes:
    """The bytes a file of this module holds (compact, sorted, UTF-8)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


# --- the heartbeat addition ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpdateInfo(_SubValue):
    """Heartbeat ``update``: present only while the runtime is being replaced. Empty (no
    ``stage``) means no update is in progress, and emits nothing."""

    stage: str | None = None
    version: str | None = None  # the candidate runtime's version, when known
    slot: str | None = None
    age_s: float | None = None  # how long the stage has lasted
    deadline_s: float | None = None  # how long the stage may last in all

    @classmethod
    def from_map(cls, value: object, name: str) -> UpdateInfo:
        b = _sub(value, name)
        stage = opt_field(b, "stage", _choice, STAGES, at=name)
        if stage is None:
            return cls()
        return cls(stage=stage, version=opt_field(b, "version", version_text, at=name),
                   slot=opt_field(b, "slot", _choice, SLOTS, at=name),
                   age_s=opt_field(b, "age_s", seconds, at=name),
                   deadline_s=opt_field(b, "deadline_s", seconds, at=name))

    def to_map(self) -> dict[str, Any]:
        if self.stage is None:
            return {}
        return omit_none({"stage": self.stage, "version": self.version, "slot": self.slot,
                          "age_s": self.age_s, "deadline_s": self.deadline_s})


# --- the slot pointer --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SlotPointer:
    """Which slot the runtime starts from; ``base`` when no update was ever promoted."""

    slot: str = "base"
    version: str | None = None  # the runtime version in the slot
    name: str | None = None  # the bundle's name and version that filled it
    bundle_version: int | None = None
    update_id: str | None = None

    def to_map(self) -> dict[str, Any]:
        return omit_none({"slot": self.slot, "version": self.version, "name": self.name,
                          "bundle_version": self.bundle_version, "update_id": self.update_id})


def parse_pointer(raw: bytes) -> SlotPointer:
    b = _load(raw, "active.json")
    return SlotPointer(slot=_choice(b.get("slot"), "slot", SLOTS),
                       version=_opt(b, "version", version_text),
                       name=_opt(b, "name", _match, _NAME),
                       bundle_version=_opt(b, "bundle_version", int_in, 1, MAX_BUNDLE_VERSION),
                       update_id=_opt(b, "update_id", _match, _TOKEN))


# --- the request (runtime -> supervisor) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpdateRequest:
    """Start the runtime of ``slot`` (unpacked and checked already) as a candidate.

    ``command_id`` is the ``update.now`` command the outcome finishes (None when the update
    was driven otherwise, e.g. by a test); ``force`` is recorded for the report only (the
    deferral is decided before the request is written)."""

    update_id: str
    slot: str
    name: str
    bundle_version: int
    requested_at_ms: int
    version: str | None = None  # the runtime version inside the slot (its __version__)
    command_id: str | None = None
    rollout_id: str | None = None
    force: bool = False

    def to_map(self) -> dict[str, Any]:
        return omit_none({"update_id": self.update_id, "slot": self.slot, "name": self.name,
                          "bundle_version": self.bundle_version,
                          "requested_at_ms": self.requested_at_ms, "version": self.version,
                          "command_id": self.command_id, "rollout_id": self.rollout_id,
                          "force": self.force})


def _request_from(b: Mapping[str, Any]) -> UpdateRequest:
    force = b.get("force", False)
    if not isinstance(force, bool):
        raise BadFrame("field 'force' must be a boolean")
    return UpdateRequest(
        update_id=_match(b.get("update_id"), "update_id", _TOKEN),
        slot=_choice(b.get("slot"), "slot", UPDATE_SLOTS),
        name=_match(b.get("name"), "name", _NAME),
        bundle_version=int_in(b.get("bundle_version"), "bundle_version", 1,
                              MAX_BUNDLE_VERSION),
        requested_at_ms=_ms(b.get("requested_at_ms"), "requested_at_ms"),
        version=_opt(b, "version", version_text),
        command_id=_opt(b, "command_id", _match, _COMMAND_ID),
        rollout_id=_opt(b, "rollout_id", _match, _TOKEN),
        force=force)


def parse_update_request(raw: bytes) -> UpdateRequest:
    """``update-request.json`` by Rule 2."""
    return _request_from(_load(raw, "update-request.json"))


# --- the supervisor's record ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpdateRecord:
    """One update as the supervisor runs it. While ``outcome`` is None, ``stage`` is where
    it stands and ``deadline_ms`` (wall clock) when that stage fails for want of progress.
    Once decided: ``outcome`` promoted or rolled_back, and for a rollback the recovery
    metadata: ``failed_stage``, ``reason``, the ``slot`` that failed, ``backup_slot`` and
    ``backup_path`` (what runs again), ``log_tail`` (the candidate's last log lines)."""

    request: UpdateRequest
    previous: SlotPointer
    stage: str
    stage_started_ms: int
    deadline_ms: int
    outcome: str | None = None
    failed_stage: str | None = None
    reason: str = ""
    backup_path: str | None = None
    log_tail: tuple[str, ...] = ()
    decided_at_ms: int | None = None
    candidate_pid: int | None = None
    inherited_outbox: int | None = None  # the outbox's last frame when the candidate started

    def to_map(self) -> dict[str, Any]:
        return omit_none({
            "request": self.request.to_map(), "previous": self.previous.to_map(),
            "stage": self.stage, "stage_started_ms": self.stage_started_ms,
            "deadline_ms": self.deadline_ms, "outcome": self.outcome,
            "failed_stage": self.failed_stage, "reason": self.reason,
            "backup_path": self.backup_path, "log_tail": list(self.log_tail),
            "decided_at_ms": self.decided_at_ms, "candidate_pid": self.candidate_pid,
            "inherited_outbox": self.inherited_outbox})

    def at(self, stage: str, now_ms: int, deadline_s: float) -> UpdateRecord:
        """This record moved to ``stage`` at ``now_ms``, failing at ``deadline_s`` from now."""
        return replace(self, stage=stage, stage_started_ms=now_ms,
                       deadline_ms=now_ms + int(deadline_s * 1000))

    def recovery(self) -> dict[str, Any]:
        """The ``detail`` of the ``bundle.status rolled_back`` a restored runtime reports
        (within protocol/update.py's detail bounds: 2 levels, 8 KiB)."""
        return omit_none({"stage": self.failed_stage, "slot": self.request.slot,
                          "backup_slot": self.previous.slot, "backup_path": self.backup_path,
                          "runtime_version": self.request.version,
                          "log_tail": [line[:200] for line in self.log_tail[-10:]],
                          "update_id": self.request.update_id})


def _log_tail(value: object, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_LOG_LINES:
        raise BadFrame(f"field {name!r} must be a list of at most {MAX_LOG_LINES} lines")
    return tuple(text(v, name, max_len=MAX_LOG_LINE_CHARS) for v in value)


def parse_update_record(raw: bytes) -> UpdateRecord:
    """``update.json`` by Rule 2."""
    b = _load(raw, "update.json")
    request = b.get("request")
    previous = b.get("previous")
    if not isinstance(request, dict) or not isinstance(previous, dict):
        raise BadFrame("update.json needs 'request' and 'previous' objects")
    outcome = _opt(b, "outcome", _choice, OUTCOMES)
    return UpdateRecord(
        request=_request_from(request),
        previous=parse_pointer(dumps(previous)),
        stage=_choice(b.get("stage"), "stage", STAGES),
        stage_started_ms=_ms(b.get("stage_started_ms"), "stage_started_ms"),
        deadline_ms=_ms(b.get("deadline_ms"), "deadline_ms"),
        outcome=outcome,
        failed_stage=_opt(b, "failed_stage", _choice, STAGES),
        reason=text(b.get("reason", ""), "reason", max_len=MAX_REASON_CHARS),
        backup_path=_opt_text(b, "backup_path", MAX_PATH_CHARS),
        log_tail=_log_tail(b.get("log_tail", []), "log_tail"),
        decided_at_ms=_opt(b, "decided_at_ms", _ms),
        candidate_pid=_opt(b, "candidate_pid", int_in, 1, (1 << 31) - 1),
        inherited_outbox=_opt(b, "inherited_outbox", int_in, 0, MAX_MS))


def _opt_text(b: Mapping[str, Any], name: str, max_len: int) -> str | None:
    value = b.get(name)
    return None if value is None else text(value, name, max_len=max_len)


def resolve_interrupted(record: UpdateRecord, pointer: SlotPointer, now_ms: int,
                        reason: str) -> UpdateRecord:
    """Rule 1: an undecided ``record`` found at a supervisor's start is decided by the
    pointer: on the candidate's slot (the switch happened) it was promoted, else it is
    rolled back at the stage it had reached."""
    if record.outcome is not None:
        return record
    if pointer.slot == record.request.slot and pointer.update_id == record.request.update_id:
        return replace(record, outcome="promoted", decided_at_ms=now_ms)
    return replace(record, outcome="rolled_back", failed_stage=record.stage, reason=reason,
                   decided_at_ms=now_ms)


__all__ = ["OUTCOMES", "SLOTS", "STAGES", "UPDATE_SLOTS", "SlotPointer", "UpdateInfo",
           "UpdateRecord", "UpdateRequest", "dumps", "parse_pointer", "parse_update_record",
           "parse_update_request", "resolve_interrupted"]
