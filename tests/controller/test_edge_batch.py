"""``edge.batch`` (docs/protocol.md, an addition): several node frames in one WebSocket
message, taken exactly as if each had arrived alone — a raw msgpack client against a real
controller process."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
import msgpack

from tether.protocol.codec import MAX_BATCH_FRAMES, encode_batch, encode_msgpack
from tether.protocol.frames import Frame

from .conftest import Edge, Identity

Enroll = Callable[..., Awaitable[Identity]]


def event(q: int, kind: str = "door.opened", **extra: object) -> bytes:
    return encode_msgpack(Frame(t="node.event", s="evt", q=q, b={"kind": kind, "data": {
        "n": q}}, **extra))  # type: ignore[arg-type]


async def test_the_welcome_says_how_many_frames_a_batch_may_carry(
        edge: Edge, enroll: Enroll) -> None:
    client = await edge.session(await enroll())
    assert client.welcome is not None
    assert client.welcome.b["max_batch"] == MAX_BATCH_FRAMES


async def test_a_batch_of_evt_frames_is_applied_in_order_and_acked_cumulatively(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    ident = await enroll()
    client = await edge.session(ident)
    await client.send_raw(encode_batch([event(q) for q in range(1, 41)]))
    acked = 0
    while acked < 40:
        acked = (await client.recv_type("edge.ack")).b["acks"]["evt"]
    events = (await api.get(f"/api/v1/nodes/{ident.node_id}/events",
                            params={"limit": 100})).json()["items"]
    opened = [e["data"]["n"] for e in events if e["kind"] == "door.opened"]
    assert sorted(opened) == list(range(1, 41))
    assert opened == sorted(opened, reverse=True)  # newest first: applied in order
    # a batch mixing a heartbeat in is answered like the loose frames would be
    await client.send_raw(encode_batch([
        event(41), encode_msgpack(Frame(t="edge.heartbeat", id="hb-b", b={"uptime_s": 1}))]))
    assert (await client.recv_type("edge.heartbeat_ack")).re == "hb-b"


async def test_a_duplicate_inside_a_batch_is_acked_and_not_applied_twice(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    ident = await enroll()
    client = await edge.session(ident)
    await client.send_raw(encode_batch([event(1), event(2), event(2), event(3)]))
    acked = 0
    while acked < 3:
        acked = (await client.recv_type("edge.ack")).b["acks"]["evt"]
    events = (await api.get(f"/api/v1/nodes/{ident.node_id}/events")).json()["items"]
    assert sorted(e["data"]["n"] for e in events if e["kind"] == "door.opened") == [1, 2, 3]


async def test_a_nested_batch_is_closed_with_4400(edge: Edge, enroll: Enroll) -> None:
    client = await edge.session(await enroll())
    await client.send_raw(encode_batch([event(1), encode_batch([event(2), event(3)])]))
    closed = await client.expect_close()
    assert closed.code == 4400
    assert "another edge.batch" in closed.reason


async def test_an_empty_or_malformed_batch_is_closed_with_4400(
        edge: Edge, enroll: Enroll) -> None:
    for body in ({"frames": []}, {"frames": "nope"}, {"frames": [{"b": {}}]},
                 {"frames": [{"t": "node.event", "s": "evt"}]}):  # no q: not an envelope
        client = await edge.session(await enroll())
        await client.send_raw(msgpack.packb({"t": "edge.batch", "b": body}))
        closed = await client.expect_close()
        assert closed.code == 4400, body


async def test_a_batch_longer_than_the_welcome_allows_is_closed_with_4400(
        edge: Edge, enroll: Enroll) -> None:
    client = await edge.session(await enroll())
    frames = [{"t": "edge.ack", "b": {"acks": {"cmd": 0}}}] * (MAX_BATCH_FRAMES + 1)
    await client.send_raw(msgpack.packb({"t": "edge.batch", "b": {"frames": frames}}))
    closed = await client.expect_close()
    assert closed.code == 4400
    assert str(MAX_BATCH_FRAMES) in closed.reason


async def test_a_batch_instead_of_a_hello_is_closed_with_4400(
        edge: Edge, enroll: Enroll) -> None:
    client = await edge.open()
    await client.send_raw(encode_batch([event(1)]))
    closed = await client.expect_close()
    assert closed.code == 4400
