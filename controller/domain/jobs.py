"""The rules of jobs (one command over many nodes), as pure code: which nodes a selector
picks, what each node's part is when a job starts, how many parts may be released now, and
what a job's state and summary are. No I/O, no clock: the store and the job service ask.

A job's part on one node is in one of these *stored* states (``job_nodes.state``)::

    pending --claim--> releasing --submitted--> submitted (then: its command's state)
       |                    |
       +--cancel-->  cancelled        +--> offline | failed   (no command)
    skipped | offline   (decided when the job is created; no command)

Rule 1 (selection): a selector picks the enrolled nodes whose labels hold every
``labels`` pair exactly and, when ``liveness`` is given, whose liveness is one of it;
``nodes`` names them instead (each must be enrolled). A job has 1 to :data:`MAX_JOB_NODES`
nodes.
Rule 2 (offline): a node is *reachable* when its liveness is ``online`` or ``degraded``
(its session is open). For one that is not, ``offline="queue"`` holds its command until
it comes back (an ordinary queued command); ``"fail"`` ends its part at once as
``offline``; ``"skip"`` leaves it out, shown as ``skipped``. Decided when the job is
created, and for ``fail`` again when a pending part is released.
Rule 3 (in flight): a part is in flight while it is ``releasing``, or ``submitted`` with
its command not terminal. With ``max_in_flight`` = m, a claim releases at most
``m - in_flight`` pending parts, lowest ``pos`` first; without it, all of them.
Rule 4 (state): a job is ``cancelled`` once cancelled; else ``done`` when every part is
terminal; else ``running``. The summary counts parts by their shown state.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tether.protocol.frames import TERMINAL_STATES

MAX_JOB_NODES = 10_000  # nodes in one job: its rows are written in one transaction
OFFLINE_POLICIES = ("queue", "fail", "skip")
REACHABLE = frozenset({"online", "degraded", "updating"})
LIVENESS_STATES = ("online", "degraded", "updating", "stale", "offline")
JOB_STATES = ("running", "done", "cancelled")

# stored part states that end a part without a command
ENDED_WITHOUT_COMMAND = frozenset({"offline", "skipped", "cancelled", "failed"})
PART_TERMINAL = frozenset(TERMINAL_STATES) | ENDED_WITHOUT_COMMAND


@dataclass(frozen=True, slots=True)
class Selector:
    """Rule 1. Exactly one of: ``nodes`` (ids), or ``labels`` and/or ``liveness``."""

    labels: Mapping[str, str] | None = None
    liveness: frozenset[str] | None = None
    nodes: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        if self.nodes is not None:
            return {"nodes": list(self.nodes)}
        out: dict[str, Any] = {"labels": dict(self.labels or {})}
        if self.liveness is not None:
            out["liveness"] = sorted(self.liveness)
        return out


def matches(labels: Mapping[str, Any], liveness: str, *,
            want_labels: Mapping[str, str] | None,
            want_liveness: frozenset[str] | None) -> bool:
    """Rule 1 for one node: every wanted label equal, and its liveness wanted."""
    if want_liveness is not None and liveness not in want_liveness:
        return False
    return all(labels.get(k) == v for k, v in (want_labels or {}).items())


def initial_part(liveness: str, offline: str) -> str:
    """Rule 2: a node's stored part state when the job is created."""
    if liveness in REACHABLE or offline == "queue":
        return "pending"
    return "skipped" if offline == "skip" else "offline"


def shown_state(stored: str, command_state: str | None) -> str:
    """The state the API shows for a part: its command's once submitted; ``pending``
    while releasing (its command may not exist yet)."""
    if stored == "submitted":
        return command_state or "queued"
    return "pending" if stored == "releasing" else stored


def in_flight(parts: Iterable[tuple[str, str | None]]) -> int:
    """Rule 3: parts (stored state, command state) in flight."""
    return sum(1 for stored, cmd in parts
               if stored == "releasing"
               or (stored == "submitted" and (cmd or "queued") not in TERMINAL_STATES))


def release_slots(max_in_flight: int | None, flying: int, pending: int) -> int:
    """Rule 3: how many pending parts a claim releases now."""
    if max_in_flight is None:
        return pending
    return max(0, min(pending, max_in_flight - flying))


def job_state(stored: str, shown: Iterable[str]) -> str:
    """Rule 4 from the stored job state and the parts' shown states."""
    if stored == "cancelled":
        return "cancelled"
    return "done" if all(s in PART_TERMINAL for s in shown) else "running"


def summary(shown: Iterable[str]) -> dict[str, int]:
    """Parts counted by shown state (Rule 4)."""
    return dict(sorted(Counter(shown).items()))
