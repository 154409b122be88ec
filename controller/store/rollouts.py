"""Rollouts and the node's bundles (issue 15; the rules are ``protocol/rollout.py``, the
engine ``services/rollouts.py``; this module only stores them).

**The node's bundles.** ``nodes.bundles`` is a JSON map ``{name: {"active",
"last_known_good", "state", "version", "reason", "code", "updated_at"}}`` written by
:func:`apply_bundle_status` in the transaction of ``apply_evt`` that moves the node's evt
cursor past the ``bundle.status`` (effect and cursor together, fenced like every class A
effect). Bounded: at most :data:`MAX_BUNDLE_NAMES` names per node; a new name past it
evicts the name updated longest ago (a node cannot grow its row without limit).

**A rollout** is a ``rollouts`` row (its checked request in ``spec``, its current ring,
its state and the ``why`` of its last stop) and one ``rollout_nodes`` row per node
(``pending``; ``offering`` while its ``update.now`` is being submitted; then what its
``bundle.status`` reports about the rollout's version, written by :func:`apply_bundle_status`
too; or ``skipped`` when the rollout stopped before offering it). A node's rollback offer
and its reports about that version are the row's ``rollback_*`` columns.

Concurrency: every change the engine or an operator makes to a rollout locks its
``rollouts`` row first (PostgreSQL) and is a compare-and-set on the state it read (the
ring, ``pending``, ``offering``), so two replicas that both believe they lead, or an
operator's pause racing the engine, never offer twice or move a ring twice. A report from
a node updates only its own ``rollout_nodes`` row (no lock on the rollout: the edge path
never waits for the engine).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tether.protocol.errors import Conflict, InvalidRequest, NotFound
from tether.protocol.frames import TERMINAL_STATES
from tether.protocol.rollout import FAILED, IN_FLIGHT
from tether.protocol.update import BundleStatus

from .base import FOR_UPDATE, StoreBase, add_audit, opt_peer_text, peer_text, wall_now
from .records import _int, _text, _time, loads
from .sql import Tx

MAX_BUNDLE_NAMES = 16  # per node: a node's row stays a few KiB whatever it reports
_AUDIT_ACTION = {"running": "rollout.resume", "paused": "rollout.pause",
                 "aborted": "rollout.abort"}
_NODES = ("SELECT rn.node_id, rn.ring, rn.pos, rn.state, rn.code, rn.reason, rn.command_id, "
          "c.state AS command_state, c.error AS command_error, rn.rollback_version, "
          "rn.rollback_state, rn.rollback_command_id, rc.state AS rollback_command_state "
          "FROM rollout_nodes rn LEFT JOIN commands c ON c.command_id=rn.command_id "
          "LEFT JOIN commands rc ON rc.command_id=rn.rollback_command_id")


def shown_state(stored: str, command_state: str | None) -> str:
    """A node's state in a rollout as shown: the stored one, except that an offer whose
    command ended without a terminal report ended too (``healthy`` for a command that
    succeeded; ``failed`` for one that failed, was cancelled or expired)."""
    if stored in IN_FLIGHT and command_state in TERMINAL_STATES:
        return "healthy" if command_state == "succeeded" else "failed"
    return stored


@dataclass(frozen=True, slots=True)
class RolloutNode:
    """One node of a rollout as stored, with its offer's command state."""

    node_id: str
    ring: int
    pos: int
    stored: str
    code: str | None
    reason: str | None
    command_id: str | None
    command_state: str | None
    command_error: str | None
    rollback_version: int | None
    rollback_stored: str | None
    rollback_command_id: str | None
    rollback_command_state: str | None

    @property
    def state(self) -> str:
        return shown_state(self.stored, self.command_state)

    @property
    def shown_reason(self) -> str:
        """``<state>: <code>: <reason>`` for a failure (what the command's error says), the
        reported reason otherwise."""
        if self.stored in FAILED:
            return f"{self.stored}: {self.code or '-'}: {self.reason or ''}"
        if self.state == "failed" and self.stored != "failed":
            return f"offer {self.command_state}: {self.command_error or ''}"
        return self.reason or ""

    @property
    def rollback_state(self) -> str | None:
        if self.rollback_stored is None:
            return None
        return shown_state(self.rollback_stored, self.rollback_command_state)

    @classmethod
    def from_row(cls, row: Any) -> RolloutNode:
        return cls(node_id=str(row["node_id"]), ring=int(row["ring"]), pos=int(row["pos"]),
                   stored=str(row["state"]), code=_text(row["code"]),
                   reason=_text(row["reason"]), command_id=_text(row["command_id"]),
                   command_state=_text(row["command_state"]),
                   command_error=_text(row["command_error"]),
                   rollback_version=_int(row["rollback_version"]),
                   rollback_stored=_text(row["rollback_state"]),
                   rollback_command_id=_text(row["rollback_command_id"]),
                   rollback_command_state=_text(row["rollback_command_state"]))


@dataclass(frozen=True, slots=True)
class RolloutRecord:
    """A rollout as stored; ``nodes`` is empty in a list, ``counts`` counts its nodes by
    shown state."""

    COLUMNS = ("rollout_id, bundle, version, kind, sha256, size, spec, state, ring, why, "
               "accepted_failures, actor, created_at, updated_at, finished_at")

    rollout_id: str
    bundle: str
    version: int
    kind: str
    sha256: str
    size: int
    spec: dict[str, Any]
    state: str
    ring: int
    why: dict[str, Any] | None
    accepted_failures: int
    actor: str
    created_at: float | None
    updated_at: float | None
    finished_at: float | None
    counts: dict[str, int]
    nodes: tuple[RolloutNode, ...] = ()

    @classmethod
    def from_row(cls, row: Any, counts: dict[str, int],
                 nodes: tuple[RolloutNode, ...] = ()) -> RolloutRecord:
        spec, why = loads(row["spec"], {}), loads(row["why"])
        return cls(rollout_id=str(row["rollout_id"]), bundle=str(row["bundle"]),
                   version=int(row["version"]), kind=str(row["kind"]),
                   sha256=str(row["sha256"]), size=int(row["size"]),
                   spec=spec if isinstance(spec, dict) else {}, state=str(row["state"]),
                   ring=int(row["ring"]), why=why if isinstance(why, dict) else None,
                   accepted_failures=int(row["accepted_failures"]),
                   actor=str(row["actor"]), created_at=_time(row["created_at"]),
                   updated_at=_time(row["updated_at"]),
                   finished_at=_time(row["finished_at"]), counts=counts, nodes=nodes)


def bundle_entry(st: BundleStatus) -> dict[str, Any]:
    """A node's ``bundles`` entry for ``st`` (the stored one adds ``updated_at``); what a
    ``bundle.updated`` event carries."""
    return {"active": st.active, "last_known_good": st.last_known_good, "state": st.state,
            "version": st.version, "reason": st.reason, "code": st.code, "kind": st.kind,
            "rollout_id": st.rollout_id}


async def apply_bundle_status(tx: Tx, node_id: str, st: BundleStatus, now: float) -> None:
    """The effect of one ``bundle.status`` (module docstring), inside ``apply_evt``'s
    transaction: the node's ``bundles`` entry for ``st.name``, and, when it names a
    rollout this node is part of, its row there (a report about the rollout's version
    moves the node's state; one about its rollback version, the rollback's)."""
    raw = await tx.fetchval("SELECT bundles FROM nodes WHERE node_id=$1", node_id)
    bundles = loads(raw, {})
    if not isinstance(bundles, dict):
        bundles = {}
    bundles[st.name] = {**bundle_entry(st), "updated_at": now}
    while len(bundles) > MAX_BUNDLE_NAMES:  # evict the name updated longest ago
        oldest = min(bundles, key=lambda n: (
            bundles[n].get("updated_at") if isinstance(bundles[n], dict)
            and isinstance(bundles[n].get("updated_at"), int | float) else 0.0, n))
        del bundles[oldest]
    await tx.execute("UPDATE nodes SET bundles=$1 WHERE node_id=$2",
                     json.dumps(bundles, allow_nan=False), node_id)
    if st.rollout_id is None:
        return
    row = await tx.fetchrow("SELECT r.version, rn.rollback_version FROM rollouts r JOIN "
                            "rollout_nodes rn ON rn.rollout_id=r.rollout_id WHERE "
                            "r.rollout_id=$1 AND rn.node_id=$2 AND r.bundle=$3",
                            st.rollout_id, node_id, st.name)
    if row is None:
        return
    reason = peer_text(st.reason)
    if st.version == int(row["version"]):
        await tx.execute("UPDATE rollout_nodes SET state=$1, code=$2, reason=$3, "
                         "updated_at=$4 WHERE rollout_id=$5 AND node_id=$6",
                         st.state, st.code, reason, now, st.rollout_id, node_id)
    elif row["rollback_version"] is not None and st.version == int(row["rollback_version"]):
        await tx.execute("UPDATE rollout_nodes SET rollback_state=$1, updated_at=$2 "
                         "WHERE rollout_id=$3 AND node_id=$4",
                         st.state, now, st.rollout_id, node_id)


class RolloutTransactions(StoreBase):
    """Rollouts and their nodes (module docstring)."""

    async def create_rollout(self, *, spec: dict[str, Any], bundle: str, version: int,
                             kind: str, sha256: str, size: int, actor: str,
                             nodes: Sequence[tuple[str, int]]) -> RolloutRecord:
        """Store a running rollout at ring 0 with ``nodes`` = (node_id, ring index) in
        placement order. Raises Conflict ``rollout_running`` while another rollout of the
        same bundle name is running or paused (two would offer against each other)."""
        rollout_id = "r_" + uuid.uuid4().hex

        async def fn(tx: Tx) -> RolloutRecord:
            now = wall_now()
            busy = await tx.fetchval("SELECT rollout_id FROM rollouts WHERE bundle=$1 AND "
                                     "state IN ('running', 'paused') LIMIT 1", bundle)
            if busy is not None:
                raise Conflict(f"rollout {busy} of bundle {bundle!r} is still running or "
                               f"paused; abort it first ('tether rollout abort {busy}')",
                               code="rollout_running")
            await tx.execute(
                "INSERT INTO rollouts (rollout_id, bundle, version, kind, sha256, size, "
                "spec, state, ring, accepted_failures, actor, created_at, updated_at) "
                "VALUES ($1,$2,$3,$4,$5,$6,$7,'running',0,0,$8,$9,$9)",
                rollout_id, bundle, version, kind, sha256, size,
                json.dumps(spec, allow_nan=False), peer_text(actor), now)
            await tx.executemany(
                "INSERT INTO rollout_nodes (rollout_id, node_id, ring, pos, state, "
                "updated_at) VALUES ($1,$2,$3,$4,'pending',$5)",
                [(rollout_id, node, ring, pos, now)
                 for pos, (node, ring) in enumerate(nodes)])
            await add_audit(tx, actor, "rollout.start", rollout_id,
                            {"bundle": bundle, "version": version, "nodes": len(nodes)})
            return await self._rollout(tx, rollout_id)
        return await self.driver.write(fn)

    async def claim_rollout_offers(self, rollout_id: str, ring: int,
                                   node_ids: Sequence[str]) -> list[str]:
        """While the rollout is running at ``ring``: its ``pending`` nodes of ``node_ids``
        become ``offering``; returns every node of that ring now ``offering`` (one a
        caller that died left behind is returned again), lowest ``pos`` first. The caller
        submits their offers (idempotently) and records each with
        :meth:`set_rollout_offer`."""
        async def fn(tx: Tx) -> list[str]:
            row = await tx.fetchrow("SELECT state, ring FROM rollouts WHERE rollout_id=$1"
                                    f"{FOR_UPDATE[tx.dialect]}", rollout_id)
            if row is None or row["state"] != "running" or int(row["ring"]) != ring:
                return []
            now = wall_now()
            await tx.executemany("UPDATE rollout_nodes SET state='offering', updated_at=$1 "
                                 "WHERE rollout_id=$2 AND node_id=$3 AND ring=$4 AND "
                                 "state='pending'",
                                 [(now, rollout_id, n, ring) for n in node_ids])
            return [str(r[0]) for r in await tx.fetch(
                "SELECT node_id FROM rollout_nodes WHERE rollout_id=$1 AND ring=$2 AND "
                "state='offering' ORDER BY pos", rollout_id, ring)]
        return await self.driver.write(fn)

    async def set_rollout_offer(self, rollout_id: str, node_id: str, *,
                                command_id: str | None, failed: str | None = None) -> bool:
        """Record a node's offer: its command (an ``offering`` node becomes ``offered``;
        one whose report already arrived keeps that state), or ``failed`` (the reason the
        offer could not be submitted). False when it was recorded before."""
        async def fn(tx: Tx) -> bool:
            await tx.fetchval("SELECT state FROM rollouts WHERE rollout_id=$1"
                              f"{FOR_UPDATE[tx.dialect]}", rollout_id)
            if failed is not None:
                return bool(await tx.execute(
                    "UPDATE rollout_nodes SET state='failed', code='offer_failed', "
                    "reason=$1, updated_at=$2 WHERE rollout_id=$3 AND node_id=$4 AND "
                    "state='offering'", peer_text(failed[:500]), wall_now(), rollout_id,
                    node_id))
            return bool(await tx.execute(
                "UPDATE rollout_nodes SET command_id=$1, state=CASE WHEN state='offering' "
                "THEN 'offered' ELSE state END, updated_at=$2 WHERE rollout_id=$3 AND "
                "node_id=$4 AND command_id IS NULL AND state <> 'pending'",
                command_id, wall_now(), rollout_id, node_id))
        return await self.driver.write(fn)

    async def set_rollout_rollback(self, rollout_id: str, node_id: str, *, version: int,
                                   command_id: str | None, state: str = "offered",
                                   reason: str | None = None) -> bool:
        """Record a node's rollback offer (once: False when it has one already)."""
        async def fn(tx: Tx) -> bool:
            await tx.fetchval("SELECT state FROM rollouts WHERE rollout_id=$1"
                              f"{FOR_UPDATE[tx.dialect]}", rollout_id)
            return bool(await tx.execute(
                "UPDATE rollout_nodes SET rollback_version=$1, rollback_command_id=$2, "
                "rollback_state=$3, reason=COALESCE($4, reason), updated_at=$5 "
                "WHERE rollout_id=$6 AND node_id=$7 AND rollback_state IS NULL",
                version, command_id, state, opt_peer_text(reason), wall_now(), rollout_id,
                node_id))
        return await self.driver.write(fn)

    async def advance_rollout(self, rollout_id: str, *, from_ring: int, rings: int) -> bool:
        """A running rollout at ``from_ring`` moves to the next ring, or, after the last of
        ``rings``, becomes ``completed``. False when it was not running at that ring."""
        async def fn(tx: Tx) -> bool:
            now = wall_now()
            done = from_ring + 1 >= rings
            return bool(await tx.execute(
                "UPDATE rollouts SET ring=$1, state=$2, updated_at=$3, why=NULL "
                "WHERE rollout_id=$4 AND state='running' AND ring=$5",
                from_ring + (0 if done else 1), "completed" if done else "running", now,
                rollout_id, from_ring))
        return await self.driver.write(fn)

    async def set_rollout_state(self, rollout_id: str, state: str, *,
                                why: dict[str, Any] | None, actor: str | None = None,
                                accept_failures: int | None = None) -> RolloutRecord:
        """Move a rollout to ``state`` (module docstring). ``halted`` and ``aborted`` skip
        the nodes not yet offered; ``running`` (a resume) sets ``accepted_failures``.
        ``actor`` (an operator's action) is audited. Raises NotFound; Conflict
        ``rollout_state`` for a move its state does not allow (a finished rollout, a
        resume of one not paused, a pause of one not running)."""
        allowed = {"paused": ("running",), "running": ("paused",),
                   "halted": ("running", "paused"), "aborted": ("running", "paused")}[state]
        rollout_id = peer_text(rollout_id)

        async def fn(tx: Tx) -> RolloutRecord:
            current = await tx.fetchval("SELECT state FROM rollouts WHERE rollout_id=$1"
                                        f"{FOR_UPDATE[tx.dialect]}", rollout_id)
            if current is None:
                raise NotFound(f"rollout {rollout_id[:80]!r} does not exist; see "
                               "'tether rollout list'")
            if current not in allowed:
                raise Conflict(f"rollout {rollout_id} is {current}; it cannot become "
                               f"{state}", code="rollout_state")
            now = wall_now()
            await tx.execute(
                "UPDATE rollouts SET state=$1, why=$2, updated_at=$3, "
                "accepted_failures=COALESCE($4, accepted_failures) WHERE rollout_id=$5",
                state, None if why is None else json.dumps(why, allow_nan=False), now,
                accept_failures, rollout_id)
            if state in ("halted", "aborted"):
                await tx.execute("UPDATE rollout_nodes SET state='skipped', updated_at=$1 "
                                 "WHERE rollout_id=$2 AND state='pending'", now, rollout_id)
            if actor is not None:
                await add_audit(tx, actor, _AUDIT_ACTION.get(state, f"rollout.{state}"),
                                rollout_id, None)
            return await self._rollout(tx, rollout_id)
        return await self.driver.write(fn)

    async def skip_rollout_offer(self, rollout_id: str, node_id: str) -> bool:
        """A node whose offer was cancelled before it reached the node (the rollout
        stopped) is ``skipped``; False when its state moved meanwhile."""
        async def fn(tx: Tx) -> bool:
            return bool(await tx.execute(
                "UPDATE rollout_nodes SET state='skipped', updated_at=$1 WHERE "
                "rollout_id=$2 AND node_id=$3 AND state IN ('offering', 'offered')",
                wall_now(), rollout_id, node_id))
        return await self.driver.write(fn)

    async def finish_rollout(self, rollout_id: str) -> bool:
        """Record that nothing of a stopped or completed rollout is in flight any more."""
        async def fn(tx: Tx) -> bool:
            now = wall_now()
            return bool(await tx.execute(
                "UPDATE rollouts SET finished_at=$1, updated_at=$1 WHERE rollout_id=$2 AND "
                "finished_at IS NULL AND state IN ('completed', 'halted', 'aborted')",
                now, rollout_id))
        return await self.driver.write(fn)

    async def unfinished_rollouts(self, *, limit: int = 100) -> list[RolloutRecord]:
        """Rollouts the engine still looks after, oldest first, each with its nodes."""
        async def fn(tx: Tx) -> list[RolloutRecord]:
            ids = [str(r[0]) for r in await tx.fetch(
                "SELECT rollout_id FROM rollouts WHERE finished_at IS NULL ORDER BY seq "
                "LIMIT $1", limit)]
            return [await self._rollout(tx, rid) for rid in ids]
        return await self.driver.read(fn)

    async def get_rollout(self, rollout_id: str) -> RolloutRecord:
        """The rollout with its nodes. Raises NotFound."""
        rollout_id = peer_text(rollout_id)

        async def fn(tx: Tx) -> RolloutRecord:
            return await self._rollout(tx, rollout_id)
        return await self.driver.read(fn)

    async def list_rollouts(self, *, limit: int) -> list[RolloutRecord]:
        """Newest first, without nodes, each with its counts."""
        if not 1 <= limit <= 1000:
            raise InvalidRequest("limit must be from 1 to 1000")

        async def fn(tx: Tx) -> list[RolloutRecord]:
            rows = await tx.fetch(f"SELECT {RolloutRecord.COLUMNS} FROM rollouts "
                                  "ORDER BY seq DESC LIMIT $1", limit)
            out = []
            for row in rows:
                nodes = [RolloutNode.from_row(r) for r in await tx.fetch(
                    f"{_NODES} WHERE rn.rollout_id=$1", row["rollout_id"])]
                out.append(RolloutRecord.from_row(row, _count(nodes)))
            return out
        return await self.driver.read(fn)

    @staticmethod
    async def _rollout(tx: Tx, rollout_id: str) -> RolloutRecord:
        row = await tx.fetchrow(f"SELECT {RolloutRecord.COLUMNS} FROM rollouts "
                                "WHERE rollout_id=$1", rollout_id)
        if row is None:
            raise NotFound(f"rollout {rollout_id[:80]!r} does not exist; see "
                           "'tether rollout list'")
        nodes = tuple(RolloutNode.from_row(r) for r in await tx.fetch(
            f"{_NODES} WHERE rn.rollout_id=$1 ORDER BY rn.pos", rollout_id))
        return RolloutRecord.from_row(row, _count(nodes), nodes)


def _count(nodes: Sequence[RolloutNode]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in nodes:
        counts[n.state] = counts.get(n.state, 0) + 1
    return dict(sorted(counts.items()))
