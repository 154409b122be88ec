"""The gateway's queue of evt frames awaiting the store is bounded in bytes as well as in
frames (issue 11, item 3): a node that sends large valid class A frames faster than the
store applies them parks its own read loop once the frames waiting hold
``max_pending_evt_bytes`` of WebSocket messages, instead of queueing up to 4,096 frames of up
to 1 MiB (4 GiB) per session. The session runs against a store that never finishes a
batch, so whatever the read loop takes in stays pending; no sockets."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from tether.controller.config import ControllerConfig
from tether.controller.gateway import EdgeConnection
from tether.protocol.codec import encode_batch, encode_msgpack, unbatch
from tether.protocol.frames import Frame

MAX_PENDING_BYTES = 1 << 20
EVENT_BYTES = 60_000


class StuckStore:
    """A store whose first evt batch never commits (a slow disk)."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    async def apply_evt(self, **kw: Any) -> Any:
        self.batches.append(len(kw["frames"]))
        await asyncio.Event().wait()


def message(data: bytes) -> dict[str, Any]:
    return {"type": "websocket.receive", "bytes": data}


def event(q: int) -> bytes:
    return encode_msgpack(Frame(t="node.event", s="evt", q=q, id=f"e{q}", b={
        "kind": "app", "data": {"blob": "x" * EVENT_BYTES}}))


async def read_until_parked(conn: EdgeConnection, messages: list[bytes]) -> int:
    """Feed messages the way the read loop does until it parks on backpressure; how
    many it took in."""
    for n, data in enumerate(messages, 1):
        frame = conn._frame_from(message(data))
        assert frame is not None
        frames = [frame]
        if frame.t == "edge.batch":  # as the read loop does: a share of the message each
            frames = unbatch(frame, max_frames=1024)
            conn._msg_bytes = conn._msg_bytes // len(frames) + 1
        for each in frames:
            handled = asyncio.ensure_future(conn._on_evt(each))
            await asyncio.sleep(0)  # let it park or finish (a step, not a wait for time)
            await asyncio.sleep(0)
            if not handled.done():
                handled.cancel()
                return n
    return len(messages)


def connection(store: StuckStore, **config: Any) -> EdgeConnection:
    ctl = SimpleNamespace(config=ControllerConfig(**config), store=store)
    conn = EdgeConnection(SimpleNamespace(client=None), ctl)  # type: ignore[arg-type]
    conn.node_id, conn.session_id = "n1", "s1"
    return conn


def stop_applying() -> None:
    for task in asyncio.all_tasks():
        if task.get_name() == "edge-apply":
            task.cancel()


async def test_large_evt_frames_park_the_reader_at_the_byte_bound_not_at_4096_frames() -> None:
    store = StuckStore()
    conn = connection(store, max_pending_evt_bytes=MAX_PENDING_BYTES)
    messages = [event(q) for q in range(1, 200)]
    async with asyncio.TaskGroup() as tg:
        conn._tg = tg
        taken = await read_until_parked(conn, messages)
        in_store = sum(len(m) for m in messages[:sum(store.batches)])
        # parked as soon as a mebibyte waits (the message that crossed it included), far
        # below the 4,096 frames the count bound allows
        assert MAX_PENDING_BYTES <= conn.pending_evt_bytes < MAX_PENDING_BYTES + len(messages[0])
        assert taken < 40
        # what the session holds: one batch being stored, and at most the bound waiting
        assert in_store + conn.pending_evt_bytes <= 2 * MAX_PENDING_BYTES + len(messages[0])
        stop_applying()


async def test_a_batch_is_charged_its_message_bytes_spread_over_its_frames() -> None:
    store = StuckStore()
    conn = connection(store, max_pending_evt_bytes=MAX_PENDING_BYTES)
    batch = encode_batch([event(q) for q in range(1, 11)])  # 10 x 60 kB in one message
    async with asyncio.TaskGroup() as tg:
        conn._tg = tg
        assert await read_until_parked(conn, [batch]) == 1  # under the bound: not parked
        share = len(batch) // 10 + 1
        assert conn.pending_evt_bytes == (10 - sum(store.batches)) * share
        assert conn.pending_evt_bytes > 0
        stop_applying()


async def test_a_batch_over_the_byte_bound_parks_the_reader_within_it() -> None:
    store = StuckStore()
    conn = connection(store, max_pending_evt_bytes=200_000)
    batch = encode_batch([event(q) for q in range(1, 16)])  # 900 kB in one message
    async with asyncio.TaskGroup() as tg:
        conn._tg = tg
        frame = conn._frame_from(message(batch))
        assert frame is not None
        frames = unbatch(frame, max_frames=1024)
        conn._msg_bytes = conn._msg_bytes // len(frames) + 1
        parked_after = None
        for n, each in enumerate(frames, 1):
            handled = asyncio.ensure_future(conn._on_evt(each))
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            if not handled.done():
                handled.cancel()
                parked_after = n
                break
        assert parked_after is not None and parked_after < 10
        assert conn.pending_evt_bytes < 200_000 + len(batch) // 15 + 1
        stop_applying()
