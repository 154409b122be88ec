"""Store contract: enrolment, tokens, nodes, sessions and fencing (every backend)."""

from __future__ import annotations

import pytest

from tether.controller.store.controller_store import ControllerStore, Fenced
from tether.controller.store.records import NodeRecord, Touch
from tether.controller.store.sql import Tx
from tether.protocol.errors import AuthError, Conflict, NotFound

from .helpers import enrolled, event, evt, hello


async def test_the_controller_id_is_made_once_and_kept(store: ControllerStore) -> None:
    first = await store.controller_id()
    assert first.startswith("ctl-") and await store.controller_id() == first


async def test_an_admin_token_is_made_when_missing_and_kept_while_valid(
        store: ControllerStore) -> None:
    token = await store.ensure_admin_token(None)
    assert token is not None and await store.operator_role(token) == "admin"
    assert await store.ensure_admin_token(token) is None
    assert await store.operator_role("tok_unknown") is None


async def test_enrolment_consumes_a_join_token_and_merges_its_labels(
        store: ControllerStore) -> None:
    token, _ = await store.create_join_token(ttl_s=60, uses=1, labels={"site": "a"},
                                             actor="admin")
    await store.enroll(join_token=token, node_id="n1", public_key=b"k" * 32,
                       labels={"rack": "r1"})
    node = await store.get_node("n1")
    assert isinstance(node, NodeRecord)
    assert node.labels == {"site": "a", "rack": "r1"} and node.enabled
    assert node.current_session is None and node.dead_letters_total == 0
    assert await store.node_key("n1") == (b"k" * 32, True)
    with pytest.raises(AuthError):  # used up
        await store.enroll(join_token=token, node_id="n2", public_key=b"j" * 32, labels={})
    with pytest.raises(AuthError):
        await store.enroll(join_token="join_nope", node_id="n2", public_key=b"j" * 32,
                           labels={})


async def test_an_enrolled_id_is_refused_to_another_key_and_updated_for_its_own(
        store: ControllerStore) -> None:
    await enrolled(store)
    token, _ = await store.create_join_token(ttl_s=60, uses=5, labels={}, actor="admin")
    with pytest.raises(Conflict) as info:
        await store.enroll(join_token=token, node_id="n1", public_key=b"x" * 32, labels={})
    assert info.value.code == "node_id_taken"
    await store.enroll(join_token=token, node_id="n1", public_key=b"k" * 32,
                       labels={"site": "b"})
    node = await store.get_node("n1")
    assert node is not None and node.labels == {"site": "b"}


async def test_an_expired_join_token_is_refused(store: ControllerStore) -> None:
    token, _ = await store.create_join_token(ttl_s=-1, uses=5, labels={}, actor="admin")
    with pytest.raises(AuthError):
        await store.enroll(join_token=token, node_id="n1", public_key=b"k" * 32, labels={})


async def test_disabling_a_node_is_stored_and_an_unknown_node_is_not_found(
        store: ControllerStore) -> None:
    await enrolled(store)
    await store.set_enabled("n1", False, actor="admin")
    assert await store.node_key("n1") == (b"k" * 32, False)
    with pytest.raises(NotFound):
        await store.set_enabled("ghost", False, actor="admin")
    assert await store.node_key("ghost") is None and await store.get_node("ghost") is None


async def test_a_session_makes_the_node_current_and_merges_its_hello_labels(
        store: ControllerStore) -> None:
    await enrolled(store)
    opened = await hello(store, labels={"zone": "z"})
    node = await store.get_node("n1")
    assert node is not None and node.current_session == opened.session_id
    assert node.labels == {"site": "a", "zone": "z"}
    assert node.runtime_state == "ready" and node.runtime_version == "1.0"
    assert node.sidecar == {"version": "s1"} and node.capabilities == ["exec"]
    assert not opened.resumed and opened.superseded_session is None
    with pytest.raises(NotFound):
        await hello(store, "ghost")


async def test_a_new_session_supersedes_the_old_one_which_is_fenced(
        store: ControllerStore) -> None:
    await enrolled(store)
    old = await hello(store)
    new = await hello(store, previous=old.session_id)
    assert new.superseded_session == old.session_id and new.resumed
    history = await store.sessions("n1")
    assert [s.session_id for s in history] == [new.session_id, old.session_id]
    assert history[1].close_code == 4409 and history[1].reason == "superseded"
    assert history[1].closed_at is not None and history[0].closed_at is None
    with pytest.raises(Fenced):
        await store.apply_evt(node_id="n1", session_id=old.session_id,
                              frames=[evt(1, event())])
    with pytest.raises(Fenced):
        await store.ack_cmd("n1", old.session_id, new.cmd_epoch, 1)
    with pytest.raises(Fenced):
        await store.note_cmd_sent("n1", old.session_id, new.cmd_epoch, 1)
    # the old session closing late does not take the node from the new one
    await store.close_session(node_id="n1", session_id=old.session_id, close_code=4409,
                              reason="superseded", goodbye=False)
    node = await store.get_node("n1")
    assert node is not None and node.current_session == new.session_id


async def test_closing_a_session_records_its_end_and_frees_the_node(
        store: ControllerStore) -> None:
    await enrolled(store)
    opened = await hello(store)
    await store.close_session(node_id="n1", session_id=opened.session_id, close_code=1000,
                              reason="goodbye", goodbye=True)
    node = await store.get_node("n1")
    assert node is not None and node.current_session is None and node.closed_by_goodbye
    (session,) = await store.sessions("n1")
    assert session.close_code == 1000 and session.reason == "goodbye"


async def test_sessions_left_open_by_a_crash_are_closed_at_start(
        store: ControllerStore) -> None:
    await enrolled(store)
    await enrolled(store, "n2")
    await hello(store)
    await hello(store, "n2")
    assert await store.close_orphan_sessions() == 2
    assert all(n.current_session is None for n in await store.list_nodes())
    assert (await store.sessions("n1"))[0].reason == "controller_restart"


async def test_touch_stores_last_seen_and_runtime_state(store: ControllerStore) -> None:
    await enrolled(store)
    opened = await hello(store)
    await store.touch_nodes({"n1": Touch(1234.5, "busy", opened.session_id)})
    node = await store.get_node("n1")
    assert node is not None and node.last_seen_at == 1234.5 and node.runtime_state == "busy"
    await store.touch_nodes({"n1": Touch(1300.0, None, opened.session_id)})  # keep state
    node = await store.get_node("n1")
    assert node is not None and node.last_seen_at == 1300.0 and node.runtime_state == "busy"


async def test_a_touch_from_a_session_that_lost_the_node_writes_nothing(
        store: ControllerStore) -> None:
    """Fenced like every other write of a session: a replica still holding a superseded
    session cannot keep the node looking alive, or overwrite the new session's state."""
    await enrolled(store)
    old = await hello(store)
    new = await hello(store, previous=old.session_id)
    await store.touch_nodes({"n1": Touch(2000.0, "ready", new.session_id)})
    await store.touch_nodes({"n1": Touch(9999.0, "zombie", old.session_id)})
    node = await store.get_node("n1")
    assert node is not None and (node.last_seen_at, node.runtime_state) == (2000.0, "ready")
    await store.close_session(node_id="n1", session_id=new.session_id, close_code=1000,
                              reason="bye", goodbye=True)
    await store.touch_nodes({"n1": Touch(9999.0, "zombie", new.session_id)})  # closed
    node = await store.get_node("n1")
    assert node is not None and node.runtime_state == "ready"


@pytest.mark.parametrize("epoch", [1, (1 << 63) - 1, 1 << 63, (1 << 64) - 1])
async def test_a_nodes_evt_epoch_resumes_when_equal_and_resets_when_not(
        store: ControllerStore, epoch: int) -> None:
    """Any unsigned 64-bit epoch a node sends is stored in a signed 64-bit column."""
    await enrolled(store)
    first = await hello(store, evt_epoch=epoch)
    assert not first.evt_epoch_reset and first.evt_applied == 0
    await store.apply_evt(node_id="n1", session_id=first.session_id,
                          frames=[evt(1, event()), evt(2, event())])
    again = await hello(store, evt_epoch=epoch)
    assert not again.evt_epoch_reset and again.evt_applied == 2
    other = epoch - 1 if epoch > 1 else 2
    reset = await hello(store, evt_epoch=other)
    assert reset.evt_epoch_reset and reset.evt_applied == 0
    (ev,) = [e for e in await store.node_events("n1") if e.kind == "stream.epoch_reset"
             and e.data["stream"] == "evt"]
    assert ev.data["old"] == epoch and ev.data["new"] == other


async def test_reading_stored_json_that_is_not_json_gives_defaults(
        store: ControllerStore) -> None:
    await enrolled(store)

    async def spoil(tx: Tx) -> None:
        await tx.execute("UPDATE nodes SET labels='{not json', capabilities='{}', "
                         "policy='[1', apps='7' WHERE node_id='n1'")
    await store.driver.write(spoil)
    node = await store.get_node("n1")
    assert node is not None
    assert (node.labels, node.capabilities, node.policy, node.apps) == ({}, [], None, {})
    assert [n.node_id for n in await store.list_nodes()] == ["n1"]


async def test_a_sessions_history_names_its_replica_and_a_takeover_closes_the_dead_one(
        store: ControllerStore) -> None:
    await enrolled(store)
    held = await store.open_session(
        node_id="n1", remote="r", previous_session=None, evt_epoch=7, cmd_acked=0,
        runtime={}, sidecar={}, capabilities=[], labels={}, replica_id="replica-a")
    taken = await store.open_session(
        node_id="n1", remote="r", previous_session=held.session_id, evt_epoch=7,
        cmd_acked=0, runtime={}, sidecar={}, capabilities=[], labels={},
        replica_id="replica-b")
    assert taken.superseded_session == held.session_id
    assert taken.superseded_replica == "replica-a"
    node = await store.get_node("n1")
    assert node is not None and node.current_replica == "replica-b"
    new, old = await store.sessions("n1")
    assert (new.replica_id, old.replica_id) == ("replica-b", "replica-a")
    assert old.closed_at is not None and new.opened_at is not None
    assert old.closed_at <= new.opened_at  # closed no later than the new one opened


async def test_a_restarting_replica_closes_only_the_sessions_it_held(
        store: ControllerStore) -> None:
    for node_id, replica in (("n1", "replica-a"), ("n2", "replica-b")):
        await enrolled(store, node_id)
        await store.open_session(
            node_id=node_id, remote="r", previous_session=None, evt_epoch=7, cmd_acked=0,
            runtime={}, sidecar={}, capabilities=[], labels={}, replica_id=replica)
    assert await store.close_orphan_sessions("replica-a") == 1
    n1, n2 = await store.get_node("n1"), await store.get_node("n2")
    assert n1 is not None and n1.current_session is None
    assert n2 is not None and n2.current_session is not None  # replica-b's is live
    assert (await store.sessions("n1"))[0].reason == "controller_restart"
    assert (await store.sessions("n2"))[0].closed_at is None
