"""Rollouts: one published bundle version offered ring by ring, advanced, halted and rolled
back on what the controller observes (docs/protocol.md "Rollouts"; the rules are
``protocol/rollout.py``, the rows ``store/rollouts.py``).

Each node's offer is an ordinary ``update.now`` command (``protocol/update.py``), submitted
through :class:`CommandService` (stored with its outbox row, so a node that is offline gets
it when it returns) with the idempotency key ``rollout:<rollout_id>`` (its rollback offer:
``rollout:<rollout_id>:rollback``): submitting twice gives back the one command.

**The engine** (:class:`RolloutDriver`) runs on every replica and acts only while that
replica is leader (``services/leader.py``), like the job driver. It keeps nothing the store
lacks: each tick re-reads the unfinished rollouts, their nodes, and the nodes' rows (their
``bundles`` and their session), and applies ``protocol/rollout.py``'s :func:`decide`;
every move is a compare-and-set in the store (a claim of ``pending`` nodes, a ring moved
from the one read, a state moved from the one read), so a new leader resumes where the
store says and two leaders at once never offer twice or skip a ring. A node is *connected*
when the controller sees its session open and the node ``online``, cluster-wide (the node
views: this replica's presence, or the touches of the replica that holds it): a node that
reported ``healthy`` and then went away does not count until it is back.

When the failures pass the threshold, the rollout trips ``on_failure``: ``halt`` and
``rollback`` halt it (later rings are never offered; offers still queued for a node that
has not received them are cancelled; with ``rollback`` every node of the current ring that
runs the new version gets ``update.now`` for its ``last_known_good`` with ``rollback:
true``), ``pause`` pauses it. A stopped rollout is *finished* once nothing of it is in
flight.

**Events** (``/ws``): topic ``rollout:<id>``, kind ``rollout.updated``, data ``{"rollout_id",
"state", "why", "ring", "counts", "nodes"}`` where ``nodes`` holds only the nodes that
changed (at most :data:`EVENT_NODES` an event): a patch of ``GET /api/v1/rollouts/{id}``.
Topic ``rollouts`` gets the same without ``nodes``. The engine publishes within a tick of a
change (a ``bundle.status`` on this replica wakes it at once); whoever creates, pauses,
resumes or aborts a rollout publishes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from tether.protocol.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    StoreError,
    TetherError,
)
from tether.protocol.rollout import (
    FAILED,
    IN_FLIGHT,
    MAX_ROLLOUT_NODES,
    NodeFacts,
    RolloutSpec,
    decide,
    place,
    spec_from_json,
)
from tether.protocol.update import UPDATE_KIND, UpdateOffer

from ..store.bundles import BundleRecord
from ..store.records import CommandRecord, NodeRecord
from ..store.rollouts import RolloutNode, RolloutRecord
from ..views import iso
from .bus import EventBus
from .driver import LeaderDriver

logger = logging.getLogger(__name__)

EVENT_NODES = 100  # nodes per rollout.updated event: keeps each event a few KiB
SUBMIT_CONCURRENCY = 32


class RolloutStore(Protocol):
    """The store methods rollouts use (store/rollouts.py, bundles, nodes)."""

    async def create_rollout(self, *, spec: dict[str, Any], bundle: str, version: int,
                             kind: str, sha256: str, size: int, actor: str,
                             nodes: Sequence[tuple[str, int]]) -> RolloutRecord: ...

    async def claim_rollout_offers(self, rollout_id: str, ring: int,
                                   node_ids: Sequence[str]) -> list[str]: ...

    async def set_rollout_offer(self, rollout_id: str, node_id: str, *,
                                command_id: str | None, failed: str | None = ...) -> bool: ...

    async def set_rollout_rollback(self, rollout_id: str, node_id: str, *, version: int,
                                   command_id: str | None, state: str = ...,
                                   reason: str | None = ...) -> bool: ...

    async def advance_rollout(self, rollout_id: str, *, from_ring: int,
                              rings: int) -> bool: ...

    async def set_rollout_state(self, rollout_id: str, state: str, *,
                                why: dict[str, Any] | None, actor: str | None = ...,
                                accept_failures: int | None = ...) -> RolloutRecord: ...

    async def skip_rollout_offer(self, rollout_id: str, node_id: str) -> bool: ...

    async def finish_rollout(self, rollout_id: str) -> bool: ...

    async def unfinished_rollouts(self, *, limit: int = ...) -> list[RolloutRecord]: ...

    async def get_rollout(self, rollout_id: str) -> RolloutRecord: ...

    async def list_rollouts(self, *, limit: int) -> list[RolloutRecord]: ...

    async def get_bundle(self, name: str, version: int) -> BundleRecord: ...

    async def list_nodes(self) -> list[NodeRecord]: ...


class Commands(Protocol):
    """What rollouts use of services/commands.py."""

    async def submit(self, node_id: str, *, kind: str, args: dict[str, Any],
                     ttl_s: float | None, idem_key: str | None, actor: str,
                     offline: str = ...) -> tuple[CommandRecord, bool]: ...

    async def control(self, command_id: str, action: str, *, actor: str
                      ) -> CommandRecord: ...


def active_version(row: NodeRecord | None, bundle: str) -> int | None:
    """The version of ``bundle`` the node last said it runs (its ``bundles``), or None."""
    entry = None if row is None else row.bundles.get(bundle)
    active = entry.get("active") if isinstance(entry, dict) else None
    return active if isinstance(active, int) and not isinstance(active, bool) else None


def last_known_good(row: NodeRecord | None, bundle: str) -> int | None:
    entry = None if row is None else row.bundles.get(bundle)
    lkg = entry.get("last_known_good") if isinstance(entry, dict) else None
    return lkg if isinstance(lkg, int) and not isinstance(lkg, bool) else None


def node_view(n: RolloutNode, rollout: RolloutRecord,
              row: NodeRecord | None = None, connected: bool | None = None
              ) -> dict[str, Any]:
    """One node of a rollout as the API shows it: ``state`` and ``reason`` in the rollout,
    ``version`` the version that state is about (the rollout's), ``active`` what the node
    last said it runs (when the node rows were read), its ring, its offer's command, and
    its rollback offer when it got one."""
    out: dict[str, Any] = {"state": n.state, "version": rollout.version,
                           "reason": n.shown_reason, "code": n.code, "ring": n.ring,
                           "command_id": n.command_id}
    if row is not None:
        out["active"] = active_version(row, rollout.bundle)
    if connected is not None:
        out["connected"] = connected
    if n.rollback_stored is not None:
        out["rollback"] = {"version": n.rollback_version, "state": n.rollback_state,
                           "command_id": n.rollback_command_id}
    return out


def ring_head(r: RolloutRecord) -> dict[str, Any]:
    """The current ring as the view, the list and every event show it: index and name."""
    rings = r.spec.get("rings") if isinstance(r.spec.get("rings"), list) else []
    current = rings[r.ring] if isinstance(rings, list) and 0 <= r.ring < len(rings) else None
    return {"index": r.ring,
            "name": current.get("name") if isinstance(current, dict) else None}


def rollout_view(r: RolloutRecord, *, with_nodes: bool = True,
                 rows: dict[str, NodeRecord] | None = None,
                 connected: Callable[[NodeRecord], bool] | None = None) -> dict[str, Any]:
    """The API shape of a rollout (docs/protocol.md "Rollouts")."""
    spec = r.spec
    rings = spec.get("rings") if isinstance(spec.get("rings"), list) else []
    assert isinstance(rings, list)
    sizes: dict[int, int] = {}
    for n in r.nodes:
        sizes[n.ring] = sizes.get(n.ring, 0) + 1
    ring_views = []
    for i, ring in enumerate(rings):
        stage = ("done" if i < r.ring or r.state == "completed"
                 else "current" if i == r.ring else "waiting")
        ring_views.append({**(ring if isinstance(ring, dict) else {}), "index": i,
                           "stage": stage,
                           **({"size": sizes.get(i, 0)} if with_nodes else {})})
    out: dict[str, Any] = {
        "rollout_id": r.rollout_id, "state": r.state, "why": r.why,
        "bundle": r.bundle, "version": r.version, "kind": r.kind,
        "selector": spec.get("selector", {}), "rings": ring_views,
        "ring": ring_head(r), "counts": r.counts,
        **{k: spec.get(k) for k in ("max_unavailable", "probation_s", "failure_threshold",
                                    "on_failure", "max_failed_starts", "force")},
        "accepted_failures": r.accepted_failures, "actor": r.actor,
        "created_at": iso(r.created_at), "updated_at": iso(r.updated_at),
        "finished_at": iso(r.finished_at),
    }
    if with_nodes:
        out["nodes"] = {
            n.node_id: node_view(
                n, r, None if rows is None else rows.get(n.node_id),
                None if connected is None or rows is None or n.node_id not in rows
                else connected(rows[n.node_id]))
            for n in r.nodes}
    return out


def facts_of(r: RolloutRecord, rows: dict[str, NodeRecord],
             connected: Callable[[NodeRecord], bool]) -> list[NodeFacts]:
    """What ``decide`` needs of each node: its shown state, and whether it is ready
    (healthy, running the rollout's version by its last report, connected now)."""
    facts = []
    for n in r.nodes:
        row = rows.get(n.node_id)
        ready = (n.state == "healthy" and row is not None
                 and active_version(row, r.bundle) == r.version and connected(row))
        facts.append(NodeFacts(node_id=n.node_id, ring=n.ring, pos=n.pos, state=n.state,
                               ready=ready, reason=n.shown_reason))
    return facts


class RolloutService:
    """Creates, pauses, resumes, aborts and reads rollouts, and publishes them.
    ``view(row)`` is a node's API view (services/nodes.py: its session and ``liveness``
    judged across replicas); ``wake`` tells this process's engine to look now."""

    def __init__(self, store: RolloutStore, commands: Commands, bus: EventBus, *,
                 view: Callable[[NodeRecord], dict[str, Any]],
                 wake: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self.commands = commands
        self._bus = bus
        self._view = view
        self.wake = wake

    def connected(self, row: NodeRecord) -> bool:
        """The controller sees the node on an open session now, and ``online``."""
        v = self._view(row)
        return v.get("session") is not None and v.get("liveness") == "online"

    async def create(self, spec: RolloutSpec, *, actor: str) -> RolloutRecord:
        """Check that the bundle version is published (NotFound otherwise), select and
        place the nodes (``protocol/rollout.py`` Rule 2), store the rollout and wake the
        engine, which makes the first offers. Raises NotFound for an explicit node not
        enrolled or when no node is reached; InvalidRequest past
        :data:`MAX_ROLLOUT_NODES`; Conflict ``rollout_running``."""
        bundle = await self.store.get_bundle(spec.bundle, spec.version)
        rows = {r.node_id: r for r in await self.store.list_nodes()}
        listed = [n for ring in spec.rings for n in ring.nodes or ()]
        missing = [n for n in listed if n not in rows]
        if missing:
            raise NotFound(f"node(s) not enrolled: {', '.join(missing[:5])}"
                           f"{' ...' if len(missing) > 5 else ''}; see 'tether nodes list'")
        selected = [n for n, row in rows.items()
                    if all(row.labels.get(k) == v for k, v in spec.selector.items())]
        placed = place(spec, selected)
        if not placed:
            raise NotFound("no enrolled node is reached by the selector and the rings; see "
                           "'tether nodes list'")
        if len(placed) > MAX_ROLLOUT_NODES:
            raise InvalidRequest(f"the rollout reaches {len(placed)} nodes; at most "
                                 f"{MAX_ROLLOUT_NODES}: narrow the selector")
        rollout = await self.store.create_rollout(
            spec=spec.to_json(), bundle=bundle.name, version=bundle.version,
            kind=bundle.kind, sha256=bundle.sha256, size=bundle.size, actor=actor,
            nodes=placed)
        self.publish(rollout, {n.node_id for n in rollout.nodes})
        self.wake()
        return rollout

    async def pause(self, rollout_id: str, *, actor: str) -> RolloutRecord:
        """No new offers until resumed (offers in flight go on). Conflict unless running."""
        r = await self.store.set_rollout_state(
            rollout_id, "paused", actor=actor,
            why={"check": "operator", "nodes": [], "figures": {}, "actor": actor})
        return self._changed(r)

    async def resume(self, rollout_id: str, *, actor: str) -> RolloutRecord:
        """Running again; the failures counted so far are accepted (they no longer count
        against ``failure_threshold``). Conflict unless paused."""
        current = await self.store.get_rollout(rollout_id)
        failed = sum(1 for n in current.nodes if n.state in FAILED)
        r = await self.store.set_rollout_state(rollout_id, "running", why=None, actor=actor,
                                               accept_failures=failed)
        return self._changed(r)

    async def abort(self, rollout_id: str, *, actor: str) -> RolloutRecord:
        """Stop for good: no new offers; offers not yet received are cancelled (by the
        engine, within a tick). Conflict for a finished rollout."""
        r = await self.store.set_rollout_state(
            rollout_id, "aborted", actor=actor,
            why={"check": "operator", "nodes": [], "figures": {}, "actor": actor})
        return self._changed(r)

    def _changed(self, r: RolloutRecord) -> RolloutRecord:
        self.publish(r, set())
        self.wake()
        return r

    async def get_view(self, rollout_id: str) -> dict[str, Any]:
        """``GET /api/v1/rollouts/{id}``: with each node's ``active`` version and whether it
        is connected now, and for a running rollout ``waiting``: why its ring has not
        advanced (``protocol/rollout.py`` :func:`decide`), or None."""
        r = await self.store.get_rollout(rollout_id)
        rows = {row.node_id: row for row in await self.store.list_nodes()}
        view = rollout_view(r, rows=rows, connected=self.connected)
        if r.state == "running":  # what the ring waits for, as the engine judges it now
            spec = spec_from_json(r.spec)
            d = decide(ring=r.ring, rings=len(spec.rings),
                       nodes=facts_of(r, rows, self.connected),
                       max_unavailable=spec.max_unavailable,
                       failure_threshold=spec.failure_threshold,
                       accepted_failures=r.accepted_failures)
            view["waiting"] = None if d.waiting is None else dict(d.waiting)
        return view

    async def list_rollouts(self, *, limit: int) -> list[RolloutRecord]:
        return await self.store.list_rollouts(limit=limit)

    async def get(self, rollout_id: str) -> RolloutRecord:
        return await self.store.get_rollout(rollout_id)

    def publish(self, r: RolloutRecord, changed: set[str]) -> None:
        """``rollout.updated`` on ``rollout:<id>`` (the nodes in ``changed``, at most
        :data:`EVENT_NODES` an event) and on ``rollouts`` (module docstring)."""
        head = {"rollout_id": r.rollout_id, "state": r.state, "why": r.why,
                "ring": ring_head(r), "counts": r.counts, "bundle": r.bundle,
                "version": r.version}
        nodes = [n for n in r.nodes if n.node_id in changed]
        for i in range(0, max(1, len(nodes)), EVENT_NODES):
            self._bus.publish(f"rollout:{r.rollout_id}", "rollout.updated", {
                **head, "nodes": {n.node_id: node_view(n, r)
                                  for n in nodes[i:i + EVENT_NODES]}})
        self._bus.publish("rollouts", "rollout.updated", head)


class RolloutDriver(LeaderDriver):
    """The engine (module docstring; the loop is :class:`LeaderDriver`'s): looks after
    every unfinished rollout. Its only memory is what it last published, rebuilt from
    nothing after a restart (at worst an event is repeated)."""

    def __init__(self, rollouts: RolloutService, *, is_leader: Callable[[], bool],
                 tick_s: float = 0.5) -> None:
        super().__init__(name="rollout engine", is_leader=is_leader, tick_s=tick_s,
                         logger=logger)
        self._svc = rollouts
        self._store = rollouts.store
        self._seen: dict[str, tuple[Any, dict[str, Any]]] = {}
        self._cancel_asked: dict[str, set[str]] = {}  # per rollout: commands asked once

    def forget(self) -> None:
        self._seen.clear()

    async def tick(self) -> None:
        """One pass over the unfinished rollouts."""
        rollouts = await self._store.unfinished_rollouts()
        live = {r.rollout_id for r in rollouts}
        if rollouts:
            rows = {row.node_id: row for row in await self._store.list_nodes()}
            for r in rollouts:
                try:
                    await self._drive(r, rows)
                except TetherError as exc:  # e.g. the store refused one write: next tick
                    if isinstance(exc, StoreError) and exc.code == "unavailable":
                        raise  # an outage: logged once by RoundFailures, not per rollout
                    logger.warning("rollout step failed; the next tick retries", extra={
                        "rollout_id": r.rollout_id, "detail": exc.message[:200]})
        for gone in set(self._seen) - live:
            del self._seen[gone]
        for gone in set(self._cancel_asked) - live:
            del self._cancel_asked[gone]

    async def _drive(self, r: RolloutRecord, rows: dict[str, NodeRecord]) -> None:
        spec = spec_from_json(r.spec)
        if r.state == "running":
            d = decide(ring=r.ring, rings=len(spec.rings),
                       nodes=facts_of(r, rows, self._svc.connected),
                       max_unavailable=spec.max_unavailable,
                       failure_threshold=spec.failure_threshold,
                       accepted_failures=r.accepted_failures)
            if d.trip is not None:
                state = "paused" if spec.on_failure == "pause" else "halted"
                with contextlib.suppress(Conflict):  # an operator moved it meanwhile
                    await self._store.set_rollout_state(r.rollout_id, state,
                                                        why=dict(d.trip))
                    logger.warning("rollout tripped on_failure", extra={
                        "rollout_id": r.rollout_id, "state": state,
                        "detail": str(d.trip)[:300]})
            elif d.advance is not None:
                if await self._store.advance_rollout(r.rollout_id, from_ring=r.ring,
                                                     rings=len(spec.rings)):
                    self.wake()  # the next ring's first offers: now, not a tick later
            elif d.offer or any(n.stored == "offering" for n in r.nodes):
                await self._offer(r, spec, d.offer)
            r = await self._store.get_rollout(r.rollout_id)
        if r.state in ("halted", "aborted"):
            await self._cancel_queued(r)
            if r.state == "halted" and spec.on_failure == "rollback":
                await self._rollback(r, spec, rows)
            r = await self._store.get_rollout(r.rollout_id)
        if r.state in ("halted", "aborted", "completed") and not any(
                n.state in IN_FLIGHT or n.stored == "offering"
                or (n.rollback_state or "") in IN_FLIGHT for n in r.nodes):
            if await self._store.finish_rollout(r.rollout_id):
                r = await self._store.get_rollout(r.rollout_id)
        self._publish_changes(r)

    async def _offer(self, r: RolloutRecord, spec: RolloutSpec, nodes: Sequence[str]) -> None:
        claimed = await self._store.claim_rollout_offers(r.rollout_id, r.ring, nodes)
        offer = UpdateOffer(name=r.bundle, version=r.version, kind=r.kind, sha256=r.sha256,
                            size=r.size, rollout_id=r.rollout_id, rollback=False,
                            probation_s=spec.probation_s,
                            failure_threshold=spec.max_failed_starts, force=spec.force)
        for i in range(0, len(claimed), SUBMIT_CONCURRENCY):
            await asyncio.gather(*(self._submit(r, node_id, offer, f"rollout:{r.rollout_id}")
                                   for node_id in claimed[i:i + SUBMIT_CONCURRENCY]))

    async def _submit(self, r: RolloutRecord, node_id: str, offer: UpdateOffer,
                      idem_key: str) -> None:
        try:
            command, _ = await self._svc.commands.submit(
                node_id, kind=UPDATE_KIND, args=offer.args(), ttl_s=None,
                idem_key=idem_key, actor=r.actor, offline="queue")
        except TetherError as exc:  # NotFound (node removed), CommandTooLarge
            await self._store.set_rollout_offer(r.rollout_id, node_id, command_id=None,
                                                failed=exc.message)
            return
        await self._store.set_rollout_offer(r.rollout_id, node_id,
                                            command_id=command.command_id)

    async def _cancel_queued(self, r: RolloutRecord) -> None:
        """Offers of a stopped rollout that no node has received are cancelled, and their
        nodes ``skipped`` (an offline node must not get them on its return)."""
        asked = self._cancel_asked.setdefault(r.rollout_id, set())
        for n in r.nodes:
            if n.stored == "offering" or (n.stored == "offered" and n.command_id is None):
                await self._store.skip_rollout_offer(r.rollout_id, n.node_id)
            elif (n.stored in ("offered", "skipped") and n.command_state == "queued"
                    and n.command_id not in asked):
                assert n.command_id is not None
                asked.add(n.command_id)
                with contextlib.suppress(Conflict, NotFound):  # delivered meanwhile
                    row = await self._svc.commands.control(n.command_id, "cancel",
                                                           actor=r.actor)
                    # not yet sent: cancelled now; sent but not acked: the node decides,
                    # and its report (or the command's end) gives the node's state
                    if row.state == "cancelled":
                        await self._store.skip_rollout_offer(r.rollout_id, n.node_id)

    async def _rollback(self, r: RolloutRecord, spec: RolloutSpec,
                        rows: dict[str, NodeRecord]) -> None:
        """Every node of the current ring running the new version gets an offer of its
        last-known-good (once)."""
        for n in r.nodes:
            if n.ring != r.ring or n.rollback_stored is not None:
                continue
            row = rows.get(n.node_id)
            if active_version(row, r.bundle) != r.version:
                continue
            lkg = last_known_good(row, r.bundle)
            if lkg is None:
                await self._store.set_rollout_rollback(
                    r.rollout_id, n.node_id, version=r.version, command_id=None,
                    state="none")
                continue
            try:
                previous = await self._store.get_bundle(r.bundle, lkg)
            except NotFound:
                await self._store.set_rollout_rollback(
                    r.rollout_id, n.node_id, version=lkg, command_id=None,
                    state="unavailable")
                continue
            offer = UpdateOffer(name=r.bundle, version=lkg, kind=previous.kind,
                                sha256=previous.sha256, size=previous.size,
                                rollout_id=r.rollout_id, rollback=True,
                                probation_s=spec.probation_s,
                                failure_threshold=spec.max_failed_starts, force=spec.force)
            try:
                command, _ = await self._svc.commands.submit(
                    n.node_id, kind=UPDATE_KIND, args=offer.args(), ttl_s=None,
                    idem_key=f"rollout:{r.rollout_id}:rollback", actor=r.actor,
                    offline="queue")
            except TetherError as exc:
                logger.warning("rollback offer not submitted", extra={
                    "rollout_id": r.rollout_id, "node_id": n.node_id,
                    "detail": exc.message[:200]})
                continue
            await self._store.set_rollout_rollback(r.rollout_id, n.node_id, version=lkg,
                                                   command_id=command.command_id)

    def _publish_changes(self, r: RolloutRecord) -> None:
        head = (r.state, r.ring, r.why, r.counts, r.finished_at)
        nodes = {n.node_id: (n.state, n.shown_reason, n.command_id, n.rollback_state)
                 for n in r.nodes}
        seen = self._seen.get(r.rollout_id)
        if seen is None:
            changed = set(nodes)
        else:
            changed = {k for k, v in nodes.items() if seen[1].get(k) != v}
        if seen is None or changed or seen[0] != head:
            self._svc.publish(r, changed)
        self._seen[r.rollout_id] = (head, nodes)
