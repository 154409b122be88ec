"""Session presence: what the views know of a node's live session, as a value.

The views and the liveness service read a node's session through :class:`Presence` only,
never through the connection object that serves it: a :class:`SessionSnapshot` is a frozen
value taken when asked, so a presence that lives in another process (a replica's, over the
bus) can answer the same question without handing out a live object.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class SessionSnapshot:
    """One node's live session as it was when the snapshot was taken.

    ``session_id`` is None while the session is still handshaking (the node is claimed but
    not yet welcomed). Ages are seconds before the snapshot; ``opened_at`` is wall-clock
    seconds. Mappings are read-only: a local session hands out its own, which it replaces
    rather than changes in place."""

    node_id: str
    session_id: str | None
    last_frame_age_s: float
    opened_at: float
    runtime: Mapping[str, Any]
    remote: str = ""
    resumed: bool = False
    max_frame: int = 0  # the session's frame cap, both ways (docs/protocol.md §4)
    sidecar: Mapping[str, Any] = field(default_factory=dict)
    outbox: Mapping[str, Any] = field(default_factory=dict)
    transport: Mapping[str, Any] = field(default_factory=dict)
    resources: Mapping[str, Any] = field(default_factory=dict)
    logs_dropped_total: int = 0
    rtc: Mapping[str, Any] = field(default_factory=dict)  # the node's last node.rtc report
    update: Mapping[str, Any] = field(default_factory=dict)  # heartbeat `update`, if any


class Presence(Protocol):
    """Which nodes have a live session, and how each looks now."""

    def snapshot(self, node_id: str) -> SessionSnapshot | None:
        """The node's live session now, or None when no session holds it."""
        ...

    def __len__(self) -> int:
        """Live (claimed) sessions."""
        ...
