"""The node store's at-most-once and exactly-once rules, on real SQLite files."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import msgpack
import pytest

from tether.node.policy import Policy
from tether.node.store import NodeStore
from tether.protocol.errors import StoreError
from tether.protocol.fields import MAX_ERROR_LEN
from tether.protocol.frames import CmdDeliver, CmdStatus, Frame


def deliver(q: int, command_id: str, kind: str = "exec", **extra: object) -> Frame:
    return CmdDeliver(command_id=command_id, kind=kind, args={"argv": ["true"]},
                      created_ms=1, **extra).frame(s="cmd", q=q)  # type: ignore[arg-type]


async def statuses(store: NodeStore) -> list[tuple[str, str]]:
    frames = await store.outbox_after(0, 1000)
    return [(f.b["command_id"], f.b["state"]) for f in frames]


async def test_a_command_running_at_a_crash_is_reported_interrupted_and_never_rerun(
        tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "n.db")
    await store.open()
    applied = await store.apply_downlink([deliver(1, "c1"), deliver(2, "c2")])
    assert [c["command_id"] for c in applied.to_run] == ["c1", "c2"]
    assert await store.start_command("c1") is not None
    await store.close()  # the runtime dies here, c1 running, c2 delivered

    store = NodeStore(tmp_path / "n.db")
    state = await store.open()
    assert state.cmd_applied == 2
    to_run = await store.recover()
    assert [c["command_id"] for c in to_run] == ["c2"]
    assert await store.command_state("c1") == "failed"
    assert ("c1", "failed") in await statuses(store)
    assert await store.start_command("c1") is None  # never started again
    await store.close()


async def test_the_same_command_under_a_new_epoch_is_not_applied_twice(tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "n.db")
    await store.open()
    assert await store.set_session("s1", cmd_epoch=11) is False
    await store.apply_downlink([deliver(1, "c1")])
    assert await store.set_session("s2", cmd_epoch=22) is True  # controller re-sequenced
    again = await store.apply_downlink([deliver(1, "c1")])
    assert again.to_run == []
    assert (await store.stream_state()).cmd_applied == 1
    await store.close()


async def test_unknown_kinds_are_rejected_and_diag_ping_is_answered_in_the_same_commit(
        tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "n.db")
    await store.open()
    applied = await store.apply_downlink([deliver(1, "c1", kind="teleport"),
                                          deliver(2, "c2", kind="diag.ping"),
                                          deliver(3, "c3", deadline_ms=1)])
    assert applied.to_run == []
    assert await statuses(store) == [("c1", "rejected"), ("c2", "succeeded"),
                                     ("c3", "expired")]
    await store.close()


async def test_acked_outbox_frames_are_deleted_and_a_new_epoch_resequences_the_rest(
        tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "n.db")
    first = await store.open()
    for i in range(5):
        await store.append_event("node.event", {"kind": "k", "data": {"i": i}})
    await store.ack_evt(2)
    assert [f.q for f in await store.outbox_after(0, 100)] == [3, 4, 5]
    state = await store.rotate_evt_epoch()
    assert state.evt_epoch != first.evt_epoch
    frames = await store.outbox_after(0, 100)
    assert [f.q for f in frames] == [1, 2, 3]
    assert [f.b["data"]["i"] for f in frames] == [2, 3, 4]
    assert (state.evt_last, state.evt_acked) == (3, 0)
    await store.close()


async def test_an_ack_heard_in_an_old_epoch_does_not_delete_resequenced_frames(
        tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "n.db")
    old = await store.open()
    for i in range(4):
        await store.append_event("node.event", {"kind": "k", "data": {"i": i}})
    new = await store.rotate_evt_epoch()
    # an ack for q=3 of the old epoch arrives late: the new epoch's q=1..3 must survive
    assert await store.ack_evt(3, epoch=old.evt_epoch) is False
    assert [f.q for f in await store.outbox_after(0, 100)] == [1, 2, 3, 4]
    assert (await store.stream_state()).evt_acked == 0
    assert await store.ack_evt(3, epoch=new.evt_epoch) is True
    assert [f.q for f in await store.outbox_after(0, 100)] == [4]
    await store.close()


async def test_sequences_stay_gapless_when_a_write_that_appended_is_rolled_back(
        tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "n.db")
    await store.open()
    assert await store.append_event("node.event", {"kind": "k", "data": {}}) == 1

    def appends_then_fails(conn: sqlite3.Connection) -> None:
        store._append(conn, "node.event", {"kind": "lost", "data": {}})
        raise RuntimeError("boom")

    results = await asyncio.gather(
        store.db.write(appends_then_fails),
        store.append_event("node.event", {"kind": "k", "data": {}}), return_exceptions=True)
    assert isinstance(results[0], RuntimeError)
    assert results[1] == 2  # not 3: the rolled-back row's number was not kept
    assert await store.append_event("node.event", {"kind": "k", "data": {}}) == 3
    assert [f.q for f in await store.outbox_after(0, 100)] == [1, 2, 3]
    assert (await store.stream_state()).evt_last == 3
    await store.close()
    reopened = NodeStore(tmp_path / "n.db")
    assert (await reopened.open()).evt_last == 3  # derived from the rows, not a counter
    await reopened.ack_evt(3)
    await reopened.close()
    again = NodeStore(tmp_path / "n.db")
    assert (await again.open()).evt_last == 3  # and from the acked cursor once they are gone
    assert await again.append_event("node.event", {"kind": "k", "data": {}}) == 4
    await again.close()


async def test_an_outbox_read_is_bounded_by_bytes_as_well_as_count(tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "n.db")
    await store.open()
    for i in range(10):
        await store.append_event("node.event", {"kind": "k", "data": {"blob": "x" * 1000,
                                                                      "i": i}})
    frames = await store.outbox_after(0, 10, max_bytes=2500)
    assert [f.q for f in frames] == [1, 2, 3]  # the third crosses 2,500 bytes
    assert [f.q for f in await store.outbox_after(9, 10, max_bytes=1)] == [10]
    assert len(await store.outbox_after(0, 10)) == 10
    await store.close()


def test_outbox_bodies_are_plain_msgpack_maps() -> None:
    body = {"kind": "k", "data": {"b": b"\x00\x01"}}
    assert msgpack.unpackb(msgpack.packb(body, use_bin_type=True), raw=False) == body


async def test_a_repeated_idempotency_key_is_applied_once_but_the_cursor_moves(
        tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "n.db")
    await store.open()
    first = CmdDeliver(command_id="c1", kind="exec", args={}, created_ms=1).frame(
        s="cmd", q=1, k="key-1")
    second = CmdDeliver(command_id="c2", kind="exec", args={}, created_ms=1).frame(
        s="cmd", q=2, k="key-1")
    applied = await store.apply_downlink([first, second])
    assert [c["command_id"] for c in applied.to_run] == ["c1"]
    assert (await store.stream_state()).cmd_applied == 2
    await store.close()


async def test_pausing_and_resuming_queue_their_statuses_and_a_paused_crash_is_interrupted(
        tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "n.db")
    await store.open()
    await store.apply_downlink([deliver(1, "c1")])
    await store.start_command("c1")
    assert await store.set_paused("c1", True) is not None
    assert await store.set_paused("c1", True) is None  # already paused
    assert await store.set_paused("c1", False) is not None
    assert await store.set_paused("c1", True) is not None
    await store.close()
    store = NodeStore(tmp_path / "n.db")
    await store.open()
    assert await store.recover() == []
    assert await store.command_state("c1") == "failed"
    assert [s for c, s in await statuses(store) if c == "c1"] == [
        "running", "paused", "running", "paused", "failed"]
    await store.close()


def raw_deliver(q: int, body: dict[str, object]) -> Frame:
    """A cmd.deliver as it may arrive: a body nobody checked."""
    return Frame(t="cmd.deliver", s="cmd", q=q, b=body)


async def status_frames(store: NodeStore) -> dict[str, dict[str, object]]:
    return {f.b["command_id"]: dict(f.b) for f in await store.outbox_after(0, 1000)
            if f.t == "cmd.status"}


async def test_a_cmd_deliver_whose_body_breaks_the_rules_is_reported_rejected_not_left_open(
        tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "n.db")
    await store.open()
    good = {"kind": "exec", "args": {"argv": ["true"]}, "created_ms": 1}
    applied = await store.apply_downlink([
        raw_deliver(1, {**good, "command_id": "c-nan", "args": {"x": float("nan")}}),
        raw_deliver(2, {**good, "command_id": "c-big", "created_ms": 2**64}),
        raw_deliver(3, {**good, "command_id": "c-bin-kind", "kind": b"exec"}),
        raw_deliver(4, {**good, "command_id": "c-args", "args": ["not", "a", "map"]}),
        raw_deliver(5, {**good, "command_id": b"bin id"}),  # no id to report against
        raw_deliver(6, {**good, "command_id": "x" * 10_000}),  # nor here
        deliver(7, "c-ok")])
    assert [c["command_id"] for c in applied.to_run] == ["c-ok"]  # nothing bad runs
    assert (await store.stream_state()).cmd_applied == 7  # the cursor moved past them all
    got = await status_frames(store)
    assert set(got) == {"c-nan", "c-big", "c-bin-kind", "c-args"}
    for command_id, st in got.items():
        assert st["state"] == "rejected", st
        assert str(st["error"]).startswith("bad cmd.deliver: "), st
        assert await store.command_state(command_id) == "rejected"
    assert "not finite" in str(got["c-nan"]["error"])
    assert "kind" in str(got["c-bin-kind"]["error"])
    # the same bad frame again (a resend under a new epoch) is not reported twice
    await store.set_session("s2", cmd_epoch=99)
    await store.apply_downlink([
        raw_deliver(1, {**good, "command_id": "c-nan", "args": {"x": float("nan")}})])
    frames = await store.outbox_after(0, 1000)
    assert [f.b["command_id"] for f in frames if f.t == "cmd.status"].count("c-nan") == 1
async def test_a_status_whose_error_is_over_the_wire_limit_is_cut_to_fit_not_dead_lettered(
        tmp_path: Path) -> None:
    # Found replaying issue 11: argv[0] of 100,000 chars under exec_allow made the rejection
    # "rejected by policy: executable 'xxx...' is not in exec_allow", over the 4096 chars a
    # cmd.status error may hold. The controller dead-lettered it, and the command stayed
    # 'delivered' for good. The node's own bodies keep the wire's value rules.
    store = NodeStore(tmp_path / "n.db")
    await store.open()
    policy = Policy.from_dict({"exec_allow": ["echo"]})
    big = CmdDeliver(command_id="c1", kind="exec", args={"argv": ["x" * 100_000]},
                     created_ms=1).frame(s="cmd", q=1)
    await store.apply_downlink([big], check=policy.check)
    assert await store.start_command("c1") is None  # rejected at once
    await store.apply_downlink([deliver(2, "c2")])
    await store.start_command("c2")
    await store.finish_command("c2", "failed", error="not found: " + "y" * 100_000)
    parsed = [CmdStatus.parse(f) for f in await store.outbox_after(0, 1000)]  # as the
    finals = {s.command_id: s for s in parsed if s.state in ("rejected", "failed")}  # controller
    assert finals["c1"].error is not None and len(finals["c1"].error) <= MAX_ERROR_LEN
    assert finals["c1"].error.startswith("rejected by policy: executable 'xxx")
    assert finals["c2"].error is not None and len(finals["c2"].error) <= MAX_ERROR_LEN
    assert finals["c2"].error.startswith("not found: yyy") and finals["c2"].error.endswith("…")
    await store.close()


# --- appends made together share one write ------------------------------------------------


async def test_appends_made_together_are_numbered_in_call_order_and_return_once_committed(
        tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "n.db")
    await store.open()
    seen: list[tuple[int, list[int]]] = []

    async def append(i: int) -> None:
        q = await store.append_event("node.event", {"kind": "k", "data": {"i": i}})
        seen.append((q, [f.q or 0 for f in await store.outbox_after(q - 1, 1)]))

    await asyncio.gather(*[append(i) for i in range(50)])
    assert sorted(q for q, _ in seen) == list(range(1, 51))
    assert all(rows == [q] for q, rows in seen)  # committed (readable) when it returned
    frames = await store.outbox_after(0, 100)
    assert [f.b["data"]["i"] for f in frames] == list(range(50))
    assert store.db.batches_total < 10  # together, not one write each
    await store.close()


async def test_a_body_that_cannot_be_encoded_fails_alone_and_leaves_no_hole(
        tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "n.db")
    await store.open()
    results = await asyncio.gather(
        store.append_event("node.event", {"kind": "k", "data": {"i": 0}}),
        store.append_event("node.event", {"kind": "k", "data": {"bad": object()}}),
        store.append_event("node.event", {"kind": "k", "data": {"i": 2}}),
        return_exceptions=True)
    assert results[0] == 1 and isinstance(results[1], TypeError) and results[2] == 2
    assert [f.b["data"]["i"] for f in await store.outbox_after(0, 100)] == [0, 2]
    await store.close()


async def test_appends_whose_shared_insert_fails_all_fail_and_the_numbering_goes_on(
        tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "n.db")
    await store.open()
    await store.db.write(lambda conn: conn.execute(
        "CREATE TEMP TRIGGER refuse BEFORE INSERT ON uplink_outbox WHEN NEW.t = 'boom' "
        "BEGIN SELECT RAISE(ABORT, 'refused'); END"))
    results = await asyncio.gather(
        store.append_event("node.event", {"kind": "k", "data": {}}),
        store.append_event("boom", {"kind": "k", "data": {}}), return_exceptions=True)
    assert all(isinstance(r, sqlite3.DatabaseError) for r in results)  # one statement
    assert await store.outbox_after(0, 100) == []
    assert len(store.tail) == 0
    assert await store.append_event("node.event", {"kind": "k", "data": {}}) == 1
    await store.close()


async def test_closing_the_store_finishes_the_appends_already_made(tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "n.db")
    await store.open()
    appends = [asyncio.ensure_future(store.append_event("node.event", {"kind": "k"}))
               for _ in range(5)]
    await asyncio.sleep(0)  # they joined a write that is queued, not yet run
    await store.close()
    assert sorted([a.result() for a in appends]) == [1, 2, 3, 4, 5]
    reopened = NodeStore(tmp_path / "n.db")
    assert (await reopened.open()).evt_last == 5
    await reopened.close()


async def test_appends_to_a_closed_store_each_fail_and_none_waits_for_good(
        tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "n.db")
    await store.open()
    await store.close()
    for _ in range(2):  # the second must not join the first's dead write
        with pytest.raises(StoreError):
            await asyncio.wait_for(store.append_event("node.event", {"kind": "k"}), 5)
