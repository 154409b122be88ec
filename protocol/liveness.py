"""Liveness rules (PROTOCOL.md §5) and controller-authority freshness, as pure functions.

Callers pass ages in seconds measured on their own monotonic clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Liveness(StrEnum):
    ONLINE = "online"
    DEGRADED = "degraded"
    UPDATING = "updating"  # a runtime self-update in progress (heartbeat `update`)
    STALE = "stale"
    OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class Thresholds:
    heartbeat_s: float = 15.0
    stale_after_s: float = 60.0
    offline_after_s: float = 300.0

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat_s < self.stale_after_s < self.offline_after_s:
            raise ValueError("thresholds must satisfy 0 < heartbeat_s < stale_after_s "
                             f"< offline_after_s, got {self}")


def liveness(*, session_open: bool, last_frame_age_s: float | None, runtime_state: str | None,
             closed_age_s: float | None, closed_by_goodbye: bool,
             thresholds: Thresholds, updating: bool = False) -> Liveness:
    """The liveness of one node.

    * open session: ``stale`` after ``stale_after_s`` with no frame, else ``degraded`` when the
      runtime is reported ``detached`` or ``restarting``, else ``online`` (a session that
      never reported a runtime state, ``None``, counts as attached); ``updating`` rather
      than either while the sidecar reports a runtime self-update in progress
      (``updating``: heartbeat ``update``), the runtime being replaced on purpose;
    * no session: ``stale`` for ``offline_after_s`` after a close that was not a goodbye,
      otherwise ``offline`` (never connected, goodbye, or long gone).
    """
    if session_open:
        if last_frame_age_s is not None and last_frame_age_s >= thresholds.stale_after_s:
            return Liveness.STALE
        if updating:
            return Liveness.UPDATING
        if runtime_state not in (None, "attached"):
            return Liveness.DEGRADED
        return Liveness.ONLINE
    if closed_by_goodbye or closed_age_s is None:
        return Liveness.OFFLINE
    if closed_age_s < thresholds.offline_after_s:
        return Liveness.STALE
    return Liveness.OFFLINE


class Freshness(StrEnum):
    FRESH = "fresh"
    AGING = "aging"
    STALE = "stale"
    MISSING = "missing"


def authority_freshness(last_ack_age_s: float | None, *, heartbeat_s: float,
                        stale_after_s: float) -> Freshness:
    """How fresh the controller's authority is, from the age of the last heartbeat_ack."""
    if last_ack_age_s is None:
        return Freshness.MISSING
    if last_ack_age_s >= stale_after_s:
        return Freshness.STALE
    if last_ack_age_s < 2 * heartbeat_s:
        return Freshness.FRESH
    return Freshness.AGING
