"""Store contract: the evt stream (node events, idempotency keys, poison frames), logs and
budgets (every backend)."""

from __future__ import annotations

from tether.controller.store.controller_store import ControllerStore
from tether.controller.store.records import Poisoned
from tether.protocol.health import HEALTH_KIND, HealthCheck, HealthIncident, NodeHealth

from .conftest import QUOTAS
from .helpers import enrolled, event, evt, hello, status


async def test_node_events_are_stored_in_order_and_policy_and_apps_become_the_nodes_view(
        store: ControllerStore) -> None:
    await enrolled(store)
    opened = await hello(store)
    await store.apply_evt(node_id="n1", session_id=opened.session_id, frames=[
        evt(1, event("a", i=1)), evt(2, event("policy", allow=["exec"])),
        evt(3, event("apps", web={"state": "running"})), evt(4, event("b", x=1.5)),
    ])
    events = await store.node_events("n1")
    assert [e.kind for e in events] == ["b", "apps", "policy", "a"]  # newest first
    assert events[-1].data == {"i": 1} and events[0].data == {"x": 1.5}
    assert all(e.at is not None for e in events)
    node = await store.get_node("n1")
    assert node is not None and node.policy == {"allow": ["exec"]}
    assert node.apps == {"web": {"state": "running"}}
    assert await store.count_node_events("n1", "a") == 1
    assert (await store.node_usage("n1"))["events"]["items"] == 4


async def test_a_frame_whose_key_was_applied_before_moves_the_cursor_without_effect(
        store: ControllerStore) -> None:
    await enrolled(store)
    opened = await hello(store)
    await store.apply_evt(node_id="n1", session_id=opened.session_id,
                          frames=[evt(1, event("once"), k="k1")])
    await store.apply_evt(node_id="n1", session_id=opened.session_id,
                          frames=[evt(2, event("once"), k="k1"), evt(3, event("twice"))])
    assert await store.count_node_events("n1", "once") == 1
    assert (await hello(store)).evt_applied == 3
    assert await store.prune_idempotency_keys(older_than_s=-60) == 1


async def test_a_status_for_another_nodes_command_is_recorded_not_applied(
        store: ControllerStore) -> None:
    await enrolled(store)
    await enrolled(store, "n2")
    theirs, _ = await store.submit_command(node_id="n2", kind="exec",
                                           args={"argv": ["true"]}, ttl_s=None,
                                           idem_key=None, actor="admin")
    opened = await hello(store)
    effects = await store.apply_evt(node_id="n1", session_id=opened.session_id,
                                    frames=[evt(1, status(theirs.command_id, "running"))])
    assert [e.applied for e in effects] == [False]
    assert (await store.get_command(theirs.command_id)).state == "queued"
    (unknown,) = await store.node_events("n1")
    assert unknown.kind == "status.unknown_command"
    assert unknown.data == {"command_id": theirs.command_id, "state": "running"}


async def test_a_poison_frame_becomes_a_dead_letter_and_the_newest_are_kept(
        store: ControllerStore) -> None:
    await enrolled(store)
    opened = await hello(store)
    frames = [evt(q, Poisoned(reason=f"bad {q}", excerpt="{...}")) for q in range(1, 6)]
    assert await store.apply_evt(node_id="n1", session_id=opened.session_id,
                                 frames=frames) == []
    letters, total = await store.dead_letters("n1")
    assert total == 5 and await store.dead_letters_total() == 5
    assert [d.reason for d in letters] == ["bad 5", "bad 4", "bad 3"]  # 3 kept per node
    assert (letters[0].stream, letters[0].q, letters[0].frame_type) == ("evt", 5,
                                                                         "node.event")
    assert (await hello(store)).evt_applied == 5  # the cursor moved past them
    node = await store.get_node("n1")
    assert node is not None and node.dead_letters_total == 5


async def test_an_event_over_the_per_event_limit_is_refused_and_counted(
        store: ControllerStore) -> None:
    await enrolled(store)
    opened = await hello(store)
    big = "x" * (QUOTAS.node_event_max_bytes + 1)
    assert store.node_event_refusal("big", {"blob": big}) is not None
    await store.apply_evt(node_id="n1", session_id=opened.session_id,
                          frames=[evt(1, event("big", blob=big))])
    (refused,) = await store.node_events("n1")
    assert refused.kind == "node.event.refused" and refused.data["kind"] == "big"
    usage = (await store.node_usage("n1"))["events"]
    assert usage["refused_items"] == 1 and usage["refused_bytes"] > len(big)


async def test_a_node_past_its_event_budget_keeps_its_newest_and_counts_the_rest(
        store: ControllerStore) -> None:
    await enrolled(store)
    opened = await hello(store)
    for start in range(1, 200, 20):
        await store.apply_evt(node_id="n1", session_id=opened.session_id,
                              frames=[evt(q, event("e", i=q)) for q in range(start,
                                                                                start + 20)])
    kept = await store.node_events("n1", limit=1000)
    assert len(kept) <= QUOTAS.node_events_per_node and kept[0].data == {"i": 200}
    usage = (await store.node_usage("n1"))["events"]
    assert usage["items"] == len(kept) and usage["pruned_items"] == 200 - len(kept)
    assert all(isinstance(v, int) for v in usage.values())


async def test_logs_are_paged_in_order_and_bounded_per_command_and_per_node(
        store: ControllerStore) -> None:
    await enrolled(store)
    command, _ = await store.submit_command(node_id="n1", kind="exec",
                                            args={"argv": ["true"]}, ttl_s=None,
                                            idem_key=None, actor="admin")
    cid = command.command_id
    stored = await store.append_logs("n1", [(cid, "stdout", i, b"%03d" % i, 0)
                                            for i in range(10)]
                                     + [("c_unknown", "stdout", 0, b"lost", 0)])
    assert [c.seq for c in stored] == list(range(10)) and stored[0].data == b"000"
    page = await store.command_logs(cid, limit=4)
    assert [c.seq for c in page] == [0, 1, 2, 3] and page.more
    rest = await store.command_logs(cid, after=page[-1].id, limit=100)
    assert [c.seq for c in rest] == list(range(4, 10)) and not rest.more
    assert len(await store.command_logs(cid, max_bytes=7)) == 2  # 3 bytes a chunk
    for i in range(30):  # node-level logs past their 20-chunk budget
        await store.append_logs("n1", [(None, "app:web", i, b"line", 0)])
    newest = await store.node_logs("n1", source="app:web", after=0)
    assert len(newest) <= QUOTAS.node_log_chunks_per_node and newest[-1].seq == 29
    assert len(await store.node_logs("n1", source="app:other")) == 0
    usage = await store.node_usage("n1")
    assert usage["node_logs"]["items"] == len(newest)
    assert usage["node_logs"]["pruned_items"] == 30 - len(newest)
    assert (await store.get_command(cid)).log_bytes == 30


async def test_the_latest_health_report_becomes_the_nodes_health(
        store: ControllerStore) -> None:
    await enrolled(store)
    assert (await store.get_node("n1")).health == {}  # type: ignore[union-attr]
    opened = await hello(store)
    first = NodeHealth(at_ms=1, ready=False, reasons=("transport",),
                       checks={"transport": HealthCheck(False, "disconnected", "<b>x</b>")})
    second = NodeHealth(at_ms=2, ready=True, checks={"transport": HealthCheck(True, "up")},
                        incidents=(HealthIncident(1, "transport", "lost", 1006),),
                        incidents_total=1)
    await store.apply_evt(node_id="n1", session_id=opened.session_id, frames=[
        evt(1, event(HEALTH_KIND, **first.to_map())),
        evt(2, event(HEALTH_KIND, **second.to_map())), evt(3, event("other", x=1))])
    node = await store.get_node("n1")
    assert node is not None and node.health == second.to_map()
    assert NodeHealth.from_map(node.health) == second
    assert [n.health for n in await store.list_nodes()] == [second.to_map()]
