"""Node liveness as the API and ``/ws`` report it (PROTOCOL.md §6 thresholds), and the
``session.*`` / ``runtime.changed`` events that carry it.

A node with a live session is judged from its :class:`~.presence.SessionSnapshot`. A node
whose session closed recently is remembered in the recently-closed map, in closing order,
until ``offline_after_s`` has passed: it is ``stale`` meanwhile (unless it said goodbye),
and :meth:`NodeLiveness.expire` pushes its turn to ``offline``. The map is this process's
memory: a node that closed on another replica is judged from its stored row instead
(services/nodes.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tether.protocol.liveness import Liveness, Thresholds, liveness

from .bus import EventBus
from .presence import Presence


class NodeLiveness:
    """Invariants: the recently-closed map holds each node at most once, in the order their
    sessions closed; a node leaves it when a session opens for it or :meth:`expire` found it
    older than ``offline_after_s``."""

    def __init__(self, presence: Presence, bus: EventBus, thresholds: Thresholds, *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._presence = presence
        self._bus = bus
        self._thresholds = thresholds
        self._monotonic = monotonic
        # node_id -> (monotonic close time, closed by goodbye)
        self._recently_closed: dict[str, tuple[float, bool]] = {}

    def node_changed(self, node_id: str, kind: str, data: dict[str, Any]) -> None:
        """A node's session opened or closed, or its runtime changed: remember a close,
        forget it on an open, and push ``kind`` with the node's liveness now to ``nodes``
        and ``node:<id>``."""
        if kind == "session.closed":
            goodbye = data.get("reason") == "goodbye"
            self._recently_closed.pop(node_id, None)  # keep the dict in closing order
            self._recently_closed[node_id] = (self._monotonic(), goodbye)
        elif kind == "session.opened":
            self._recently_closed.pop(node_id, None)
        payload = {"node_id": node_id, **data, "liveness": self.liveness(node_id)}
        self._bus.publish("nodes", kind, payload)
        self._bus.publish(f"node:{node_id}", kind, payload)

    def liveness(self, node_id: str) -> str:
        """The node's liveness now, from its live session or its recent close."""
        live = self._presence.snapshot(node_id)
        th = self._thresholds
        if live is not None:
            return liveness(session_open=True, last_frame_age_s=live.last_frame_age_s,
                            runtime_state=live.runtime.get("state"), closed_age_s=None,
                            closed_by_goodbye=False, thresholds=th,
                            updating=bool(live.update)).value
        closed = self._recently_closed.get(node_id)
        if closed is None:
            return Liveness.OFFLINE.value
        return liveness(session_open=False, last_frame_age_s=None, runtime_state=None,
                        closed_age_s=self._monotonic() - closed[0],
                        closed_by_goodbye=closed[1], thresholds=th).value

    def expire(self) -> list[str]:
        """Forget the nodes closed ``offline_after_s`` ago or more, pushing
        ``liveness.changed`` (offline) to ``nodes`` for each; returns their ids."""
        now = self._monotonic()
        offline_after = self._thresholds.offline_after_s
        expired = []
        for node_id, (closed_mono, _) in self._recently_closed.items():
            if now - closed_mono < offline_after:
                break  # in closing order: the rest closed later
            expired.append(node_id)
        for node_id in expired:
            del self._recently_closed[node_id]
            self._bus.publish("nodes", "liveness.changed",
                              {"node_id": node_id, "liveness": "offline"})
        return expired
