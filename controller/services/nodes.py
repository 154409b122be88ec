"""The API shape of a node: its stored row joined with its live session, if any.

A list is built from the store and this replica's presence only. One node's view
(:meth:`NodeViews.view_one`) of a node another replica holds also asks that replica for its
live session (services/peek.py), so its transport, resources and runtime show from every
replica; when nobody answers it is the list's view.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from tether.protocol.liveness import Thresholds, liveness

from ..store.records import NodeRecord
from ..views import iso
from .peek import NodePeek
from .presence import Presence, SessionSnapshot


class NodeViews:
    """Reads sessions through :class:`~.presence.Presence` only. Total: the record's values
    are decoded and checked by the store (records.py), and the live values come from typed
    bodies."""

    def __init__(self, presence: Presence, thresholds: Thresholds, *,
                 replica_id: str | None = None,
                 wall: Callable[[], float] = time.time,
                 remote_session: Callable[[str], Awaitable[NodePeek | None]] | None = None
                 ) -> None:
        self._presence = presence
        self._remote_session = remote_session
        self._replica_id = replica_id
        self._thresholds = thresholds
        self._wall = wall

    def _held_elsewhere(self, row: NodeRecord) -> bool:
        """The store names an open session of another replica (a session of this replica
        that presence no longer holds is one whose close is being recorded)."""
        return (row.current_session is not None and row.last_seen_at is not None
                and row.current_replica not in (None, self._replica_id))

    async def view_one(self, row: NodeRecord) -> dict[str, Any]:
        """:meth:`view`, with the live session of a node another replica holds, read from
        that replica (one peek, bounded by the router's timeout) when it answers, and the
        node's last health report (``health``: readiness tree and recent incidents, None
        when it never sent one; stored, so every replica has it). Lists leave ``health``
        out: it is up to 32 KiB a node."""
        view = None
        if self._remote_session is not None and self._held_elsewhere(row) \
                and self._presence.snapshot(row.node_id) is None:
            peeked = await self._remote_session(row.node_id)
            if peeked is not None and peeked.session is not None \
                    and peeked.session.session_id is not None:
                view = self._view(row, peeked.session, peeked.replica_id)
        view = self.view(row) if view is None else view
        view["health"] = row.health or None
        return view

    def view(self, row: NodeRecord) -> dict[str, Any]:
        return self._view(row, self._presence.snapshot(row.node_id), None)

    def _view(self, row: NodeRecord, live_session: SessionSnapshot | None,
              replica: str | None) -> dict[str, Any]:
        """``replica`` names the replica that holds ``live_session`` when it is not this one;
        ``session.replica`` always names the holder (this replica's id for its own)."""
        node_id = row.node_id
        th = self._thresholds
        now = self._wall()
        session = None
        last_seen = row.last_seen_at
        runtime: dict[str, Any]
        transport: dict[str, Any] | None = None
        resources: dict[str, Any] = {}
        rtc: dict[str, Any] | None = None
        if live_session is not None and live_session.session_id is not None:
            age = live_session.last_frame_age_s
            last_seen = now - age
            runtime = dict(live_session.runtime)
            live = liveness(session_open=True, last_frame_age_s=age,
                            runtime_state=runtime.get("state"), closed_age_s=None,
                            closed_by_goodbye=False, thresholds=th,
                            updating=bool(live_session.update))
            if live_session.update:  # a runtime self-update: its stage, version, slot
                runtime["update"] = dict(live_session.update)
            session = {"session_id": live_session.session_id,
                       "opened_at": iso(live_session.opened_at),
                       "remote": live_session.remote, "resumed": live_session.resumed,
                       "replica": replica if replica is not None else self._replica_id}
            tr = live_session.transport
            transport = {"sidecar": dict(live_session.sidecar),
                         "outbox": dict(live_session.outbox),
                         "rtt_ms": tr.get("rtt_ms"),
                         "reconnects": tr.get("reconnects"),
                         "clock_offset_ms": tr.get("clock_offset_ms"),
                         "logs_dropped_total": live_session.logs_dropped_total}
            resources = dict(live_session.resources)
            rtc = dict(live_session.rtc) or None
        elif self._held_elsewhere(row):
            # Open on another replica; its owner touches last_seen_at and the runtime state
            # every touch_interval_s, well inside stale_after_s: judged from what the owner
            # last wrote.
            runtime = {"state": row.runtime_state, "version": row.runtime_version}
            live = liveness(session_open=True, last_frame_age_s=max(0.0, now - last_seen),
                            runtime_state=row.runtime_state, closed_age_s=None,
                            closed_by_goodbye=False, thresholds=th)
            session = {"session_id": row.current_session, "replica": row.current_replica}
        else:
            # Without a session nobody knows the runtime's state: the stored one is only
            # what it was when the session ended.
            runtime = {"state": "unknown", "version": row.runtime_version,
                       "last_state": row.runtime_state}
            closed_at = row.closed_at
            live = liveness(session_open=False, last_frame_age_s=None, runtime_state=None,
                            closed_age_s=None if closed_at is None else now - closed_at,
                            closed_by_goodbye=row.closed_by_goodbye, thresholds=th)
        return {
            "node_id": node_id,
            "labels": row.labels,
            "enabled": row.enabled,
            "liveness": live.value,
            "session": session,
            "runtime": runtime,
            "transport": transport,
            "resources": resources,
            # the media plane (node.rtc), apart from liveness: null until the node reports
            "rtc": rtc,
            "last_seen_at": iso(last_seen),
            "capabilities": row.capabilities,
            "policy": row.policy,
            "apps": row.apps,
            # {name: {"active", "last_known_good", "state", ...}}: its bundle.status reports
            "bundles": row.bundles,
            "enrolled_at": iso(row.created_at),
        }

