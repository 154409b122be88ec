"""Store contract: commands from submit to their end, the downlink, acks and epoch
rotation, control actions, expiry (every backend)."""

from __future__ import annotations

import pytest

from tether.controller.store.controller_store import ControllerStore
from tether.controller.store.records import CommandRecord
from tether.controller.store.sql import Tx
from tether.protocol.codec import decode_msgpack
from tether.protocol.deliver import CommandTooLarge
from tether.protocol.errors import Conflict, NotFound

from .helpers import enrolled, evt, hello, status

EXEC = {"argv": ["true"]}


async def submit(store: ControllerStore, *, node_id: str = "n1", idem: str | None = None,
                 ttl_s: float | None = None, args: dict[str, object] | None = None
                 ) -> tuple[CommandRecord, bool]:
    return await store.submit_command(node_id=node_id, kind="exec", args=args or EXEC,
                                      ttl_s=ttl_s, idem_key=idem, actor="admin")


def timeline(command: CommandRecord) -> list[str]:
    return [e.state for e in command.timeline]


async def test_a_command_for_an_offline_node_is_queued_unsequenced(
        store: ControllerStore) -> None:
    await enrolled(store)
    command, created = await submit(store)
    assert created and command.state == "queued" and command.q is None
    assert command.args == EXEC and command.kind == "exec" and timeline(command) == ["queued"]
    assert await store.get_command(command.command_id) == command
    with pytest.raises(NotFound):
        await submit(store, node_id="ghost")
    with pytest.raises(NotFound):
        await store.get_command("c_nope")


async def test_an_idempotency_key_gives_back_the_first_command(
        store: ControllerStore) -> None:
    await enrolled(store)
    first, created = await submit(store, idem="once")
    again, created_again = await submit(store, idem="once", args={"argv": ["false"]})
    assert created and not created_again and again.command_id == first.command_id
    other, created_other = await submit(store, idem="twice")
    assert created_other and other.command_id != first.command_id
    rows, counts = await store.list_commands(node_id="n1", state=None, limit=10)
    assert len(rows) == 2 and counts == {"queued": 2}


async def test_a_command_too_large_for_the_nodes_frame_cap_is_refused_and_not_stored(
        store: ControllerStore) -> None:
    await enrolled(store)
    with pytest.raises(CommandTooLarge):
        await store.submit_command(node_id="n1", kind="exec",
                                   args={"argv": ["x" * 5000]}, ttl_s=None, idem_key=None,
                                   actor="admin", max_frame=1000)
    assert (await store.list_commands(node_id="n1", state=None, limit=10))[0] == []


async def test_queued_commands_are_sequenced_at_hello_and_delivered_by_the_nodes_ack(
        store: ControllerStore) -> None:
    await enrolled(store)
    first, _ = await submit(store)
    second, _ = await submit(store)
    opened = await hello(store)
    frames = await store.downlink_after("n1", opened.cmd_epoch, 0, 10)
    assert [q for q, _ in frames] == [1, 2]
    wire = decode_msgpack(frames[0][1])
    assert (wire.t, wire.s, wire.q, wire.b["command_id"]) == ("cmd.deliver", "cmd", 1,
                                                             first.command_id)
    assert wire.b["args"] == EXEC
    await store.note_cmd_sent("n1", opened.session_id, opened.cmd_epoch, 2)
    assert await store.ack_cmd("n1", opened.session_id, opened.cmd_epoch, 1) == [
        first.command_id]
    assert await store.ack_cmd("n1", opened.session_id, opened.cmd_epoch, 1) == []
    assert [q for q, _ in await store.downlink_after("n1", opened.cmd_epoch, 0, 10)] == [2]
    delivered = await store.get_command(first.command_id)
    assert delivered.state == "delivered" and timeline(delivered) == ["queued", "delivered"]
    assert (await store.command_states([first.command_id, second.command_id, "c_x"])) == {
        first.command_id: "delivered", second.command_id: "queued"}


async def test_a_command_submitted_while_the_node_is_online_is_sequenced_at_once(
        store: ControllerStore) -> None:
    await enrolled(store)
    opened = await hello(store)
    command, _ = await submit(store)
    assert command.q == 1 and command.epoch == opened.cmd_epoch


async def test_an_ack_beyond_what_was_sent_starts_a_new_epoch_that_resequences_from_1(
        store: ControllerStore) -> None:
    await enrolled(store)
    opened = await hello(store)
    ids = [(await submit(store))[0].command_id for _ in range(3)]
    await store.note_cmd_sent("n1", opened.session_id, opened.cmd_epoch, 3)
    await store.ack_cmd("n1", opened.session_id, opened.cmd_epoch, 1)
    again = await hello(store, cmd_acked=1)  # the node is where the store thinks: no reset
    assert not again.cmd_epoch_rotated and again.cmd_epoch == opened.cmd_epoch
    rotated = await hello(store, cmd_acked=9)  # beyond anything sent: a new epoch
    assert rotated.cmd_epoch_rotated and rotated.cmd_epoch != opened.cmd_epoch
    assert 0 < rotated.cmd_epoch < 1 << 63
    frames = await store.downlink_after("n1", rotated.cmd_epoch, 0, 10)
    assert [q for q, _ in frames] == [1, 2]
    assert [decode_msgpack(f).b["command_id"] for _, f in frames] == ids[1:]
    assert [decode_msgpack(f).q for _, f in frames] == [1, 2]
    moved = await store.get_command(ids[2])
    assert (moved.epoch, moved.q) == (rotated.cmd_epoch, 2)


async def test_statuses_move_a_command_to_its_end_and_late_ones_are_ignored(
        store: ControllerStore) -> None:
    await enrolled(store)
    opened = await hello(store)
    command, _ = await submit(store)
    cid = command.command_id
    effects = await store.apply_evt(node_id="n1", session_id=opened.session_id, frames=[
        evt(1, status(cid, "running", started_ms=5)),
        evt(2, status(cid, "succeeded", exit_code=0, finished_ms=9, result={"ok": True})),
        evt(3, status(cid, "failed", exit_code=1)),
    ])
    assert [(e.state, e.applied) for e in effects] == [("running", True),
                                                       ("succeeded", True),
                                                       ("succeeded", False)]
    done = await store.get_command(cid)
    assert done.state == "succeeded" and done.exit_code == 0 and done.result == {"ok": True}
    assert (done.started_ms, done.finished_ms) == (5, 9)
    assert timeline(done) == ["queued", "delivered", "running", "succeeded", "failed"]
    assert done.timeline[-1].detail == "ignored: command already succeeded"


async def test_control_actions_follow_the_state_table(store: ControllerStore) -> None:
    await enrolled(store)
    waiting, _ = await submit(store)
    with pytest.raises(Conflict) as info:
        await store.control_command(waiting.command_id, "pause", actor="admin")
    assert info.value.code == "command_not_running"
    with pytest.raises(Conflict) as info:
        await store.control_command(waiting.command_id, "resume", actor="admin")
    assert info.value.code == "command_not_paused"
    cancelled, sent = await store.control_command(waiting.command_id, "cancel", actor="admin")
    assert not sent and cancelled.state == "cancelled"  # never sequenced: done here
    with pytest.raises(Conflict) as info:
        await store.control_command(waiting.command_id, "cancel", actor="admin")
    assert info.value.code == "command_terminal"
    opened = await hello(store)
    running, _ = await submit(store)
    await store.apply_evt(node_id="n1", session_id=opened.session_id,
                          frames=[evt(1, status(running.command_id, "running"))])
    target, sent = await store.control_command(running.command_id, "pause", actor="admin")
    assert sent and target.state == "running"
    frames = await store.downlink_after("n1", opened.cmd_epoch, 1, 10)
    control = decode_msgpack(frames[0][1])
    assert control.b["kind"] == "pause" and control.b["args"] == {
        "command_id": running.command_id}
    with pytest.raises(NotFound):
        await store.control_command("c_nope", "cancel", actor="admin")


async def test_a_command_past_its_deadline_expires_without_reaching_the_node(
        store: ControllerStore) -> None:
    await enrolled(store)
    command, _ = await submit(store, ttl_s=0.001)

    async def overdue(tx: Tx) -> None:
        await tx.execute("UPDATE commands SET deadline=1 WHERE command_id=$1",
                         command.command_id)
    await store.driver.write(overdue)
    assert await store.expire_due() == [command.command_id]
    expired = await store.get_command(command.command_id)
    assert expired.state == "expired" and expired.error == "deadline passed before delivery"
    opened = await hello(store)
    assert await store.downlink_after("n1", opened.cmd_epoch, 0, 10) == []


async def test_stored_args_that_no_longer_build_a_frame_reject_the_command_at_delivery(
        store: ControllerStore) -> None:
    await enrolled(store)
    bad, _ = await submit(store)
    good, _ = await submit(store)

    async def spoil(tx: Tx) -> None:
        await tx.execute("UPDATE commands SET args='{not json' WHERE command_id=$1",
                         bad.command_id)
    await store.driver.write(spoil)
    opened = await hello(store)
    rejected = await store.get_command(bad.command_id)
    assert rejected.state == "rejected" and "not valid JSON" in (rejected.error or "")
    assert rejected.args == {}  # reading it is total all the same
    frames = await store.downlink_after("n1", opened.cmd_epoch, 0, 10)
    assert [decode_msgpack(f).b["command_id"] for _, f in frames] == [good.command_id]


async def test_downlink_pending_names_each_node_with_a_session_and_unacked_frames(
        store: ControllerStore) -> None:
    for node_id in ("n1", "n2", "n3"):
        await enrolled(store, node_id)
    assert await store.downlink_pending() == {}
    first = await hello(store, "n1")
    await hello(store, "n2")
    assert await store.downlink_pending() == {}  # sessions, but nothing queued
    await submit(store, node_id="n1")
    await submit(store, node_id="n1")
    await submit(store, node_id="n3")  # offline: queued, not sequenced, not pending
    assert await store.downlink_pending() == {"n1": (first.cmd_epoch, 2)}
    await store.note_cmd_sent("n1", first.session_id, first.cmd_epoch, 2)
    await store.ack_cmd("n1", first.session_id, first.cmd_epoch, 1)
    assert await store.downlink_pending() == {"n1": (first.cmd_epoch, 2)}  # q=2 unacked
    await store.close_session(node_id="n1", session_id=first.session_id, close_code=1006,
                              reason="lost", goodbye=False)
    assert await store.downlink_pending() == {}  # its frames wait for its next session
    again = await hello(store, "n1", cmd_acked=1)
    assert await store.downlink_pending() == {"n1": (again.cmd_epoch, 2)}
    await store.ack_cmd("n1", again.session_id, again.cmd_epoch, 2)
    assert await store.downlink_pending() == {}
