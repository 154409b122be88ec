"""Class A frames sent from memory (node/outbox_tail.py): the in-memory tail mirrors the
committed outbox rows exactly, and whatever it lacks (a hole, its bounds, a new epoch, a
reconnect) is read from the outbox, so the wire sees every frame once, in order."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tether.node.config import NodeConfig
from tether.node.outbox_tail import ENTRY_OVERHEAD, OutboxTail
from tether.node.runtime import NodeRuntime
from tether.node.store import NodeStore
from tether.protocol.codec import encode_sequenced
from tether.protocol.frames import CmdDeliver, Frame
from tether.protocol.local import LocalDecoder, encode_local, frame_local
from tether.protocol.streams import StreamSender


def body(i: int) -> bytes:
    return msgpack.packb({"kind": "k", "data": {"i": i}}, use_bin_type=True)


def wire(q: int, i: int) -> bytes:
    return frame_local(encode_sequenced("node.event", "evt", q, body(i)))


# --- the tail alone ------------------------------------------------------------------------


def test_a_run_stops_at_the_first_sequence_number_the_tail_lacks() -> None:
    tail = OutboxTail()
    tail.add([(1, "node.event", body(1)), (2, "node.event", body(2)),
              (4, "node.event", body(4))], generation=0)
    assert tail.run(1, 10) == [wire(1, 1), wire(2, 2)]
    assert tail.run(3, 10) == []
    assert tail.run(4, 4) == [wire(4, 4)]
    assert tail.run(1, 1) == [wire(1, 1)]


def test_rows_of_another_numbering_are_never_cached() -> None:
    tail = OutboxTail()
    tail.add_one(1, "node.event", body(1), generation=1)  # written after a new epoch...
    assert tail.run(1, 1) == []  # ...that this tail has not been told about yet
    tail.reset(None)  # a new epoch is being written: nothing is cached meanwhile
    tail.add_one(1, "node.event", body(1), generation=0)
    tail.add_one(1, "node.event", body(1), generation=1)
    assert len(tail) == 0
    tail.reset(1)
    tail.add_one(1, "node.event", body(1), generation=0)  # written before it, told after
    assert tail.run(1, 1) == []
    tail.add_one(1, "node.event", body(1), generation=1)
    assert tail.run(1, 1) == [wire(1, 1)]


def test_acked_rows_leave_the_tail_and_are_never_cached_again() -> None:
    tail = OutboxTail()
    tail.add([(q, "node.event", body(q)) for q in range(1, 6)], generation=0)
    tail.drop_through(3)
    assert len(tail) == 2 and tail.run(4, 5) == [wire(4, 4), wire(5, 5)]
    tail.add_one(2, "node.event", body(2), generation=0)  # a late report of an acked row
    assert tail.run(2, 2) == []
    tail.drop_through(10**12)  # a far jump (a restart) is one pass, not a loop to it
    assert len(tail) == 0


def test_past_its_bounds_the_newest_row_is_not_cached_and_is_read_from_the_outbox() -> None:
    by_count = OutboxTail(max_frames=2)
    by_count.add([(q, "node.event", body(q)) for q in range(1, 5)], generation=0)
    assert by_count.run(1, 4) == [wire(1, 1), wire(2, 2)]
    by_bytes = OutboxTail(max_bytes=2 * (len(wire(1, 1)) + ENTRY_OVERHEAD))
    for q in range(1, 5):
        by_bytes.add_one(q, "node.event", body(q), generation=0)
    assert by_bytes.run(1, 4) == [wire(1, 1), wire(2, 2)]
    by_bytes.drop_through(1)  # room again: later rows are cached, the hole stays a hole
    by_bytes.add_one(5, "node.event", body(5), generation=0)
    assert by_bytes.run(2, 5) == [wire(2, 2)] and by_bytes.run(5, 5) == [wire(5, 5)]


# --- the tail beside the store -------------------------------------------------------------


async def outbox_rows(store: NodeStore) -> dict[int, bytes]:
    """Every outbox row as the uplink would send it, read back from SQLite."""
    frames = await store.outbox_after(0, 10**6)
    return {f.q or 0: encode_local(f) for f in frames}


async def assert_tail_mirrors_outbox(store: NodeStore) -> None:
    rows = await outbox_rows(store)
    for q in list(store.tail._frames):
        assert store.encoded_run(q, q) == [rows[q]], f"tail row {q} differs from the outbox"


async def test_every_row_a_write_appends_is_in_the_tail_once_committed(
        tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "n.db", durability="process")
    await store.open()
    try:
        await store.append_event("node.event", {"kind": "k", "data": {}})
        await store.apply_downlink([
            CmdDeliver(command_id=cid, kind=kind, args={"argv": ["true"]}, created_ms=1
                       ).frame(s="cmd", q=q)
            for q, (cid, kind) in enumerate([("p1", "diag.ping"), ("c1", "exec"),
                                             ("x1", "no.such.kind")], start=1)])
        await store.start_command("c1")
        await store.finish_command("c1", "succeeded", exit_code=0)
        rows = await outbox_rows(store)
        assert len(rows) == 5  # event, ping's status, rejected status, running, succeeded
        assert store.encoded_run(1, 5) == [rows[q] for q in range(1, 6)]
        assert (await store.outbox_encoded_after(0, 100)) == [rows[q] for q in range(1, 6)]
    finally:
        await store.close()


async def test_a_write_that_fails_leaves_nothing_of_its_rows_in_the_tail(
        tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "n.db", durability="process")
    await store.open()
    try:
        def append_then_fail(conn: sqlite3.Connection) -> None:
            store._append(conn, "node.event", {"kind": "lost", "data": {}})
            raise RuntimeError("the closure fails after its append")

        with pytest.raises(RuntimeError):
            await store._write(append_then_fail)
        assert len(store.tail) == 0
        assert await store.append_event("node.event", {"kind": "kept", "data": {}}) == 1
        await assert_tail_mirrors_outbox(store)
        assert len(store.tail) == 1
    finally:
        await store.close()


async def test_rows_re_sequenced_by_a_new_epoch_are_never_sent_from_memory_under_old_numbers(
        tmp_path: Path) -> None:
    store = NodeStore(tmp_path / "n.db", durability="process")
    await store.open()
    try:
        for i in range(4):
            await store.append_event("node.event", {"kind": "k", "data": {"i": i}})
        assert await store.ack_evt(1)
        # An append and the rotation in one group commit: the append commits under the
        # old numbering (q=5) and its caller hears of it as the rotation is under way.
        await asyncio.gather(store.append_event("node.event", {"kind": "k", "data": {"i": 4}}),
                             store.rotate_evt_epoch(),
                             store.append_event("node.event", {"kind": "k", "data": {"i": 5}}))
        await assert_tail_mirrors_outbox(store)
        q = await store.append_event("node.event", {"kind": "k", "data": {"i": 6}})
        await assert_tail_mirrors_outbox(store)
        assert store.encoded_run(q, q) == [(await outbox_rows(store))[q]]
    finally:
        await store.close()


# --- the uplink: memory first, the outbox for the rest ---------------------------------------


class RecordingLink:
    """Stands in for the sidecar link: decodes what each connection carried; the send
    numbered ``fail_send`` fails as a link going away mid-write does."""

    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.connected.set()
        self.connections: list[list[Frame]] = [[]]
        self.sends = 0
        self.fail_send: int | None = None

    async def send_many(self, frames: Sequence[Frame]) -> bool:
        return await self.send_encoded(encode_local(f) for f in frames)

    async def send_encoded(self, payloads: Iterable[bytes]) -> bool:
        data = b"".join(payloads)
        self.sends += 1
        if not self.connected.is_set() or self.sends == self.fail_send:
            return False
        self.connections[-1].extend(LocalDecoder().feed(data))
        return True

    def evt(self, connection: int) -> list[int]:
        return [f.q or 0 for f in self.connections[connection] if f.s == "evt"]


async def until(predicate: object, what: str) -> None:
    async with asyncio.timeout(10):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.005)


async def uplink_runtime(tmp_path: Path) -> tuple[NodeRuntime, RecordingLink]:
    runtime = NodeRuntime(NodeConfig(state_dir=tmp_path, durability="process"),
                          identity=None)  # type: ignore[arg-type]
    await runtime.store.open()
    link = RecordingLink()
    runtime.link = link  # type: ignore[assignment]
    return runtime, link


async def emit(runtime: NodeRuntime, count: int) -> None:
    for _ in range(count):
        await runtime.emit_event("k", {"n": runtime.evt.last + 1})


async def test_a_reconnect_mid_tail_resends_from_the_peers_cursor_with_no_gap_or_duplicate(
        tmp_path: Path) -> None:
    runtime, link = await uplink_runtime(tmp_path)
    uplink = asyncio.create_task(runtime._uplink_loop())
    try:
        await emit(runtime, 10)
        await until(lambda: link.evt(0)[-1:] == [10], "the first ten on the wire")
        runtime._note_evt_ack(4)
        link.connected.clear()  # the session goes away with 5..10 unacked
        runtime.evt.disconnected()
        await emit(runtime, 5)  # appended while no session is up
        link.connections.append([])
        runtime.evt.connected(4)  # the controller applied through 4
        link.connected.set()
        runtime._uplink_wake.set()
        await until(lambda: link.evt(1)[-1:] == [15], "the resend")
        assert link.evt(0) == list(range(1, 11))
        assert link.evt(1) == list(range(5, 16))
        assert [f.b["data"]["n"] for f in link.connections[1]] == list(range(5, 16))
    finally:
        uplink.cancel()
        await asyncio.gather(uplink, return_exceptions=True)
        await runtime.store.close()


async def test_a_send_that_fails_mid_tail_is_sent_again_from_the_acked_cursor(
        tmp_path: Path) -> None:
    runtime, link = await uplink_runtime(tmp_path)
    await emit(runtime, 6)
    link.fail_send = 1  # the first write of the pass does not reach the sidecar
    uplink = asyncio.create_task(runtime._uplink_loop())
    try:
        runtime._uplink_wake.set()
        await until(lambda: link.sends >= 1, "the failed send")
        await emit(runtime, 2)
        await until(lambda: link.evt(0)[-1:] == [8], "the resend")
        assert link.evt(0) == list(range(1, 9))
    finally:
        uplink.cancel()
        await asyncio.gather(uplink, return_exceptions=True)
        await runtime.store.close()


async def test_frames_the_tail_lacks_are_read_from_the_outbox_in_their_place(
        tmp_path: Path) -> None:
    runtime, link = await uplink_runtime(tmp_path)
    runtime.store.tail = OutboxTail(max_frames=3)  # most frames overflow it
    read_back: list[int] = []
    read = runtime.store.outbox_encoded_after

    async def counted(after: int, limit: int) -> list[bytes]:
        frames = await read(after, limit)
        read_back.extend(range(after + 1, after + 1 + len(frames)))
        return frames

    runtime.store.outbox_encoded_after = counted  # type: ignore[method-assign]
    uplink = asyncio.create_task(runtime._uplink_loop())
    try:
        for _ in range(4):
            await emit(runtime, 5)
            runtime._note_evt_ack(runtime.evt.sent)  # room again, after a hole
            await runtime.store.ack_evt(runtime.evt.acked)
        await until(lambda: link.evt(0)[-1:] == [20], "every frame")
        assert link.evt(0) == list(range(1, 21))
        assert [f.b["data"]["n"] for f in link.connections[0]] == list(range(1, 21))
        assert 0 < len(read_back) < 20  # both ways were taken
    finally:
        uplink.cancel()
        await asyncio.gather(uplink, return_exceptions=True)
        await runtime.store.close()


# --- any interleaving: what the controller applies is the outbox, in order ------------------


class ModelController:
    """The controller's side of ``evt``, as the stream rules have it: each connection
    starts after the cursor the node was told, and must bring the next frame every time."""

    def __init__(self) -> None:
        self.applied: list[int] = []  # the event numbers applied, in order
        self.cursor = 0

    def connection(self, frames: list[Frame]) -> None:
        for frame in frames:
            assert frame.q == self.cursor + 1, f"q={frame.q} after {self.cursor}: gap or dup"
            self.cursor += 1
            self.applied.append(frame.b["data"]["n"])


OPS = st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(1, 6)),
    st.tuples(st.just("ack"), st.integers(0, 8)),
    # 0: the controller kept all it was sent; 1: what it had not acked was lost on the
    # way; 2: as 1, and the node's last write failed as the session went
    st.tuples(st.just("reconnect"), st.integers(0, 2)),
    st.tuples(st.just("new_epoch"), st.just(0)),
), max_size=14)


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS, max_frames=st.integers(1, 6), window=st.integers(1, 5))
@example(ops=[("append", 3), ("ack", 1), ("new_epoch", 0), ("append", 2)], max_frames=6,
         window=5)  # rows cached under the old numbering, and new rows under the same q
def test_over_any_appends_acks_reconnects_and_epochs_each_event_is_applied_once_in_order(
        tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int]], max_frames: int,
        window: int) -> None:
    async def scenario() -> None:
        runtime = NodeRuntime(NodeConfig(state_dir=tmp_path_factory.mktemp("n"),
                                         durability="process", evt_window=window),
                              identity=None)  # type: ignore[arg-type]
        await runtime.store.open()
        runtime.store.tail = OutboxTail(max_frames=max_frames)
        link = RecordingLink()
        runtime.link = link  # type: ignore[assignment]
        controller = ModelController()
        epoch_base = 0  # events the controller applied in earlier evt epochs
        emitted = 0
        uplink = asyncio.create_task(runtime._uplink_loop())

        def settled() -> bool:
            controller.connection(link.connections[-1][len_seen[0]:])
            len_seen[0] = len(link.connections[-1])
            todo = runtime.evt.next_to_send()
            return not runtime._uplink_wake.is_set() and not todo

        len_seen = [0]
        try:
            for op, arg in ops:
                if op == "append":
                    for _ in range(arg):
                        emitted += 1
                        await runtime.emit_event("k", {"n": emitted})
                elif op == "ack":
                    n = min(controller.cursor, runtime.evt.acked + arg)
                    runtime._note_evt_ack(n)
                    await runtime.store.ack_evt(n)
                else:  # the session goes away (and maybe the controller's store with it)
                    if arg == 2:
                        link.fail_send = link.sends + 1
                        emitted += 1
                        await runtime.emit_event("k", {"n": emitted})
                        for _ in range(100):
                            if link.sends >= link.fail_send:
                                break
                            await asyncio.sleep(0.001)
                    link.fail_send = None  # (a write that fails ends the session)
                    link.connected.clear()
                    runtime.evt.disconnected()
                    settled()
                    if arg or op == "new_epoch":  # frames not acked did not make it
                        controller.cursor = runtime.evt.acked
                        del controller.applied[epoch_base + controller.cursor:]
                    await runtime.store.ack_evt(runtime.evt.acked)  # as _acked_loop does
                    if op == "new_epoch":  # as on_welcome does on StreamRegressed
                        state = await runtime.store.rotate_evt_epoch()
                        runtime.evt = StreamSender(last=state.evt_last, acked=0,
                                                   window=window)
                        epoch_base += controller.cursor
                        controller.cursor = 0
                    link.connections.append([])
                    len_seen[0] = 0
                    runtime.evt.connected(controller.cursor)
                    await runtime.store.ack_evt(runtime.evt.acked)
                    link.connected.set()
                    runtime._uplink_wake.set()
                async with asyncio.timeout(5):
                    while not settled():
                        await asyncio.sleep(0.001)
            while runtime.evt.acked < runtime.evt.last:  # the controller catches up
                runtime._note_evt_ack(controller.cursor)
                async with asyncio.timeout(5):
                    while not settled():
                        await asyncio.sleep(0.001)
            assert controller.applied == list(range(1, emitted + 1))
        finally:
            uplink.cancel()
            await asyncio.gather(uplink, return_exceptions=True)
            await runtime.store.close()

    asyncio.run(scenario())
