"""Store contract: the node's bundles and rollouts (store/rollouts.py), on every backend: a
``bundle.status`` moves the node's ``bundles`` and its rollout row with the evt cursor in
one transaction, the names a node keeps are bounded, a fenced session changes nothing; a
rollout is stored with its nodes, a claim offers each node once, a ring moves once, a stop
skips what was not offered, and one rollout of a bundle runs at a time."""

from __future__ import annotations

import pytest

from tether.controller.store.controller_store import ControllerStore, Fenced
from tether.controller.store.records import Poisoned
from tether.controller.store.rollouts import MAX_BUNDLE_NAMES
from tether.protocol.errors import Conflict, NotFound
from tether.protocol.frames import BundleStatusReport
from tether.protocol.update import BundleStatus

from .helpers import enrolled, evt, hello

SHA = "a" * 64


def report(state: str = "healthy", *, name: str = "web", version: int = 2,
           rollout_id: str | None = None, active: int | None = 2,
           lkg: int | None = 1, code: str | None = None,
           reason: str = "") -> BundleStatusReport:
    return BundleStatusReport(BundleStatus(
        name=name, version=version, state=state, at_ms=1, code=code, reason=reason,
        rollout_id=rollout_id, active=active, last_known_good=lkg))


async def rollout(store: ControllerStore, nodes: list[tuple[str, int]],
                  bundle: str = "web") -> str:
    record = await store.create_rollout(
        spec={"bundle": bundle, "version": 2, "rings": [{"name": "a", "percent": 50},
                                                        {"name": "b", "percent": 100}]},
        bundle=bundle, version=2, kind="app", sha256=SHA, size=10, actor="admin",
        nodes=nodes)
    assert record.state == "running" and record.ring == 0
    return record.rollout_id


async def evt_cursor(store: ControllerStore, node_id: str) -> int:
    async def fn(tx):  # type: ignore[no-untyped-def]
        return int(await tx.fetchval("SELECT applied FROM stream_cursors WHERE "
                                     "node_id=$1 AND stream='evt'", node_id))
    return await store.driver.read(fn)  # type: ignore[no-any-return]


async def test_a_bundle_status_sets_the_nodes_bundles_with_the_cursor(
        store: ControllerStore) -> None:
    await enrolled(store, "n1")
    opened = await hello(store, "n1")
    await store.apply_evt(node_id="n1", session_id=opened.session_id,
                          frames=[evt(1, report("activated", active=2, lkg=1))])
    row = await store.get_node("n1")
    assert row is not None and await evt_cursor(store, "n1") == 1
    entry = row.bundles["web"]
    assert (entry["active"], entry["last_known_good"], entry["state"], entry["version"]) \
        == (2, 1, "activated", 2)
    assert isinstance(entry["updated_at"], float) and entry["reason"] == ""
    await store.apply_evt(node_id="n1", session_id=opened.session_id, frames=[
        evt(2, report("rolled_back", active=1, lkg=None, code="start_failed",
                      reason="exited 3 times"))])
    row = await store.get_node("n1")
    assert row is not None and row.bundles["web"]["state"] == "rolled_back"
    assert row.bundles["web"]["code"] == "start_failed" and row.bundles["web"]["active"] == 1
    events = await store.node_events("n1", limit=10)
    assert [e.kind for e in events].count("bundle.status") == 2


async def test_a_node_keeps_a_bounded_number_of_bundle_names_dropping_the_oldest(
        store: ControllerStore) -> None:
    await enrolled(store, "n1")
    opened = await hello(store, "n1")
    frames = [evt(q, report(name=f"b{q}")) for q in range(1, MAX_BUNDLE_NAMES + 4)]
    for frame in frames:  # one batch each: each name gets its own, later, time
        await store.apply_evt(node_id="n1", session_id=opened.session_id, frames=[frame])
    row = await store.get_node("n1")
    assert row is not None and len(row.bundles) == MAX_BUNDLE_NAMES
    assert "b1" not in row.bundles and f"b{MAX_BUNDLE_NAMES + 3}" in row.bundles


async def test_a_poison_bundle_status_and_a_fenced_session_change_nothing(
        store: ControllerStore) -> None:
    await enrolled(store, "n1")
    old = await hello(store, "n1")
    await hello(store, "n1", previous=old.session_id)
    with pytest.raises(Fenced):
        await store.apply_evt(node_id="n1", session_id=old.session_id,
                              frames=[evt(1, report())])
    row = await store.get_node("n1")
    assert row is not None and row.bundles == {}
    current = await hello(store, "n1")
    frame, _ = evt(1, report())
    await store.apply_evt(node_id="n1", session_id=current.session_id,
                          frames=[(frame, Poisoned(reason="bad state", excerpt="{}"))])
    row = await store.get_node("n1")
    assert row is not None and row.bundles == {} and await evt_cursor(store, "n1") == 1


async def test_a_report_naming_the_rollout_moves_its_node_and_its_rollback(
        store: ControllerStore) -> None:
    for n in ("n1", "n2", "n3"):
        await enrolled(store, n)
    rid = await rollout(store, [("n1", 0), ("n2", 1)])
    outsider = await hello(store, "n3")  # not part of it: its claims change nothing there
    await store.apply_evt(node_id="n3", session_id=outsider.session_id,
                          frames=[evt(1, report("failed", rollout_id=rid, code="start_failed",
                                                active=1))])
    assert [n.node_id for n in (await store.get_rollout(rid)).nodes] == ["n1", "n2"]
    opened = await hello(store, "n1")
    await store.apply_evt(node_id="n1", session_id=opened.session_id, frames=[
        evt(1, report("downloading", rollout_id=rid, active=1)),
        evt(2, report("healthy", rollout_id=rid)),
        evt(3, report("healthy", rollout_id="r_other"))])  # no such rollout: only bundles
    got = await store.get_rollout(rid)
    assert [(n.node_id, n.state) for n in got.nodes] == [("n1", "healthy"), ("n2", "pending")]
    assert got.counts == {"healthy": 1, "pending": 1}
    assert await store.set_rollout_rollback(rid, "n1", version=1, command_id=None)
    assert not await store.set_rollout_rollback(rid, "n1", version=1, command_id=None)
    await store.apply_evt(node_id="n1", session_id=opened.session_id, frames=[
        evt(4, report("healthy", rollout_id=rid, version=1, active=1, lkg=None))])
    node = (await store.get_rollout(rid)).nodes[0]
    assert (node.state, node.rollback_version, node.rollback_state) == ("healthy", 1,
                                                                        "healthy")


async def test_a_claim_offers_each_pending_node_of_the_current_ring_once(
        store: ControllerStore) -> None:
    for n in ("n1", "n2", "n3"):
        await enrolled(store, n)
    rid = await rollout(store, [("n1", 0), ("n2", 0), ("n3", 1)])
    assert await store.claim_rollout_offers(rid, 0, ["n1", "n3"]) == ["n1"]  # n3: ring 1
    assert await store.claim_rollout_offers(rid, 1, ["n3"]) == []  # not the current ring
    assert await store.claim_rollout_offers(rid, 0, []) == ["n1"]  # left offering: again
    assert await store.set_rollout_offer(rid, "n1", command_id="c1")
    assert not await store.set_rollout_offer(rid, "n1", command_id="c2")
    assert await store.claim_rollout_offers(rid, 0, ["n1"]) == []
    node = (await store.get_rollout(rid)).nodes[0]
    assert (node.stored, node.command_id) == ("offered", "c1")
    assert await store.claim_rollout_offers(rid, 0, ["n2"]) == ["n2"]
    assert await store.set_rollout_offer(rid, "n2", command_id=None, failed="node removed")
    node = (await store.get_rollout(rid)).nodes[1]
    assert (node.state, node.code) == ("failed", "offer_failed")


async def test_a_ring_moves_once_and_the_last_one_completes_the_rollout(
        store: ControllerStore) -> None:
    await enrolled(store, "n1")
    rid = await rollout(store, [("n1", 0)])
    assert await store.advance_rollout(rid, from_ring=0, rings=2)
    assert not await store.advance_rollout(rid, from_ring=0, rings=2)  # a second leader
    assert (await store.get_rollout(rid)).ring == 1
    assert await store.advance_rollout(rid, from_ring=1, rings=2)
    got = await store.get_rollout(rid)
    assert (got.state, got.ring) == ("completed", 1)
    assert await store.finish_rollout(rid) and not await store.finish_rollout(rid)
    assert await store.unfinished_rollouts() == []


async def test_stopping_a_rollout_skips_what_was_not_offered_and_records_the_why(
        store: ControllerStore) -> None:
    for n in ("n1", "n2"):
        await enrolled(store, n)
    rid = await rollout(store, [("n1", 0), ("n2", 1)])
    await store.claim_rollout_offers(rid, 0, ["n1"])
    paused = await store.set_rollout_state(rid, "paused", why=None, actor="admin")
    assert paused.state == "paused"
    with pytest.raises(Conflict):
        await store.set_rollout_state(rid, "paused", why=None)
    assert await store.claim_rollout_offers(rid, 0, ["n1"]) == []  # nothing while paused
    resumed = await store.set_rollout_state(rid, "running", why=None, accept_failures=2)
    assert resumed.accepted_failures == 2
    why = {"check": "failure_threshold", "nodes": ["n1"], "figures": {"failed": 1}}
    halted = await store.set_rollout_state(rid, "halted", why=why)
    assert halted.why == why
    assert [(n.node_id, n.stored) for n in halted.nodes] == [("n1", "offering"),
                                                             ("n2", "skipped")]
    assert await store.skip_rollout_offer(rid, "n1")
    with pytest.raises(Conflict):
        await store.set_rollout_state(rid, "aborted", why=None)
    with pytest.raises(NotFound):
        await store.set_rollout_state("r_nope", "aborted", why=None)
    audit = [a.action for a in await store.audit_page(before=None, limit=10)]
    assert "rollout.start" in audit and "rollout.pause" in audit


async def test_one_rollout_of_a_bundle_runs_at_a_time(store: ControllerStore) -> None:
    await enrolled(store, "n1")
    rid = await rollout(store, [("n1", 0)])
    with pytest.raises(Conflict) as err:
        await rollout(store, [("n1", 0)])
    assert err.value.code == "rollout_running"
    other = await rollout(store, [("n1", 0)], bundle="db")  # another bundle: fine
    await store.set_rollout_state(rid, "aborted", why=None, actor="admin")
    again = await rollout(store, [("n1", 0)])
    listed = [r.rollout_id for r in await store.list_rollouts(limit=10)]
    assert listed == [again, other, rid]
