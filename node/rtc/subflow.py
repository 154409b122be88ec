"""One subflow of a peer (``control``, ``file``, ``video``, ``audio``): its own identity,
state, bytes and errors, so a failure in one shows (and is recovered) there first.

States: ``idle`` (not in use: no channel, or the track is stopped), ``open`` (flowing),
``degraded`` (it failed but the peer lives: recovery is local, a renegotiation or a new
channel), ``failed`` (recovery failed), ``closed`` (its peer is gone). Only a failure of
the peer's transport makes every subflow fail; one channel's error never does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SUBFLOWS = ("control", "file", "video", "audio")
STATES = ("idle", "open", "degraded", "failed", "closed")
MAX_LAST_ERROR = 200


@dataclass(slots=True)
class Subflow:
    name: str
    state: str = "idle"
    bytes_in: int = 0
    bytes_out: int = 0
    errors_total: int = 0
    last_error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def set(self, state: str) -> None:
        assert state in STATES, state
        self.state = state

    def error(self, message: str, *, state: str = "degraded") -> None:
        """Count an error of this subflow and move it to ``state`` (degraded by default:
        the peer and the other subflows are untouched)."""
        self.errors_total += 1
        self.last_error = message[:MAX_LAST_ERROR]
        self.set(state)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state, "bytes_in": self.bytes_in,
                               "bytes_out": self.bytes_out, "errors_total": self.errors_total}
        if self.last_error is not None:
            out["last_error"] = self.last_error
        if self.detail:
            out.update(self.detail)
        return out


def new_subflows() -> dict[str, Subflow]:
    return {name: Subflow(name) for name in SUBFLOWS}
