"""Issue 11 items 2 and 6: a class A frame whose body breaks the value rules is a poison
frame (docs/protocol.md §5): not applied, kept as a dead letter, acked, and the stream moves
on. A cmd ack beyond what the controller sent is a protocol error (4400). A raw msgpack node
against a real controller."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from tether.protocol.frames import Frame

from ..helpers import metric
from .conftest import Edge, EdgeClient, Identity, eventually
from .test_edge_session import command, delivered_command, status, submit

Enroll = Callable[..., Awaitable[Identity]]


def deep(n: int) -> Any:
    value: Any = 1
    for _ in range(n):
        value = {"k": value}
    return value


def event(q: int, data: Any, kind: Any = "app") -> Frame:
    return Frame(t="node.event", s="evt", q=q, id=f"ev-{q}", b={"kind": kind, "data": data})


async def acks_and_errors(client: EdgeClient, *, until_evt: int, errors: int
                          ) -> tuple[int, dict[str, Frame]]:
    """Read until an edge.ack reaches ``until_evt`` and ``errors`` error frames came; the
    highest evt ack seen and the errors by ``re``."""
    best, seen = 0, {}
    while best < until_evt or len(seen) < errors:
        frame = await client.recv()
        if frame.t == "edge.ack":
            best = max(best, frame.b["acks"]["evt"])
        elif frame.t == "error":
            assert frame.re is not None, frame
            seen[frame.re] = frame
        else:
            assert frame.t == "edge.heartbeat_ack", frame
    return best, seen


POISON = {2: {"x": float("nan")}, 3: {"x": 2**64 - 1}, 4: {"x": b"\x00bin where text"},
          5: deep(100)}


async def test_a_node_that_sends_poison_node_events_keeps_streaming_and_the_poison_is_dead_lettered(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    ident = await enroll()
    client = await edge.session(ident)
    await client.send(event(1, {"n": 1}))
    for q, data in POISON.items():
        await client.send(event(q, data))
    await client.send(event(6, {"n": 6}, kind=b"bin kind"))  # bin where text belongs
    await client.send(event(7, {"n": 7}))

    best, errors = await acks_and_errors(client, until_evt=7, errors=5)
    assert best == 7  # every frame acked: the stream moved past the poison
    assert set(errors) == {"ev-2", "ev-3", "ev-4", "ev-5", "ev-6"}
    assert all(e.b["code"] == "poison_frame" and e.b["message"] for e in errors.values())
    assert "not finite" in errors["ev-2"].b["message"]
    assert "64-bit" in errors["ev-3"].b["message"]
    assert "bytes" in errors["ev-4"].b["message"]
    assert "nested" in errors["ev-5"].b["message"]
    assert "kind" in errors["ev-6"].b["message"]

    # ... and keeps streaming on the same session: later frames are applied and acked
    await client.send(event(8, {"n": 8}))
    assert (await client.recv_type("edge.ack")).b["acks"]["evt"] == 8
    await client.heartbeat()

    resp = await api.get(f"/api/v1/nodes/{ident.node_id}/events")
    assert resp.status_code == 200, resp.text
    applied = [e["data"] for e in resp.json()["items"] if e["kind"] == "app"]
    assert applied == [{"n": 8}, {"n": 7}, {"n": 1}]

    resp = await api.get(f"/api/v1/nodes/{ident.node_id}/dead-letters")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["total"] == 5
    letters = {d["q"]: d for d in body["items"]}
    assert sorted(letters) == [2, 3, 4, 5, 6]
    assert letters[2]["frame_type"] == "node.event" and letters[2]["stream"] == "evt"
    assert letters[2]["frame_id"] == "ev-2"
    assert "nan" in letters[2]["excerpt"]
    assert "bin 15 bytes" in letters[4]["excerpt"]
    assert len(letters[5]["excerpt"]) <= 513

    diag = (await api.get("/api/v1/diag")).json()
    assert diag["edge"]["dead_letters_total"] == 5
    metrics = (await api.get("/metrics")).text
    assert metric(metrics, "tether_dead_letters_total") == 5

    # a reconnect in the same epoch resumes after the poison, not at it
    await client.close()
    again = await edge.session(ident)
    assert again.welcome is not None and again.welcome.b["acks"]["evt"] == 8


async def test_a_cmd_status_with_an_impossible_exit_code_is_dead_lettered_and_a_later_one_applies(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    ident = await enroll()
    client = await edge.session(ident)
    command_id, _ = await delivered_command(api, client, ident.node_id)
    await client.send(status(1, command_id, "failed", exit_code=2**63))
    await client.send(status(2, command_id, "failed", exit_code=2**40))
    await client.send(status(3, command_id, "succeeded", exit_code=0,
                             result={"bad": float("inf")}))
    await client.send(status(4, command_id, "succeeded", exit_code=0, finished_ms=5))
    best, errors = await acks_and_errors(client, until_evt=4, errors=3)
    assert best == 4
    assert set(errors) == {"st-1", "st-2", "st-3"}
    assert "exit_code" in errors["st-1"].b["message"]
    assert "result" in errors["st-3"].b["message"]
    cmd = await command(api, command_id)
    assert cmd["state"] == "succeeded"
    assert cmd["exit_code"] == 0
    resp = await api.get("/api/v1/commands")
    assert resp.status_code == 200, resp.text
    letters = (await api.get(f"/api/v1/nodes/{ident.node_id}/dead-letters")).json()
    assert [d["q"] for d in letters["items"]] == [3, 2, 1]


async def test_dead_letters_are_kept_per_node_within_their_bound_and_all_counted(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    ident = await enroll()
    client = await edge.session(ident)
    for q in range(1, 1101):
        await client.send(event(q, {"x": float("nan")}))
    best, _ = await acks_and_errors(client, until_evt=1100, errors=0)
    assert best == 1100
    letters = (await api.get(f"/api/v1/nodes/{ident.node_id}/dead-letters",
                             params={"limit": 5000})).json()
    assert letters["total"] == 1100
    assert len(letters["items"]) == 1000  # the newest are kept
    assert letters["items"][0]["q"] == 1100 and letters["items"][-1]["q"] == 101


async def test_dead_letters_need_an_operator_token(edge: Edge, enroll: Enroll,
                                                   anon: httpx.AsyncClient) -> None:
    ident = await enroll()
    resp = await anon.get(f"/api/v1/nodes/{ident.node_id}/dead-letters")
    assert resp.status_code == 401


# -- item 6: acks outside what the receiver knows ------------------------------------------

ACK_FRAMES = {
    "edge.ack": lambda n: Frame(t="edge.ack", b={"acks": {"cmd": n}}),
    "heartbeat": lambda n: Frame(t="edge.heartbeat", id="hb", b={
        "uptime_s": 1, "runtime": {"state": "detached"}, "acks": {"cmd": n}}),
    "edge.resume": lambda n: Frame(t="edge.resume", b={"acks": {"cmd": n}}),
}


@pytest.mark.parametrize("kind", list(ACK_FRAMES))
async def test_a_cmd_ack_beyond_what_was_sent_closes_4400_and_delivers_nothing(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient, kind: str) -> None:
    ident = await enroll()
    # a detached runtime: the controller sequences commands but sends none
    client = await edge.session(ident, runtime={"state": "detached", "version": "t"})
    queued = [(await submit(api, ident.node_id))["command_id"] for _ in range(3)]
    await client.send(ACK_FRAMES["heartbeat"](0))  # a round trip: the submits are handled
    assert (await client.recv_type("edge.heartbeat_ack")).re == "hb"
    await client.send(ACK_FRAMES[kind](2))
    closed = await client.expect_close()
    assert closed.code == 4400
    assert "q=2" in closed.reason and "q=0" in closed.reason, closed.reason
    assert not any(f.t == "cmd.deliver" for f in closed.frames)
    for command_id in queued:
        assert (await command(api, command_id))["state"] == "queued"


async def test_a_cmd_ack_beyond_the_window_sent_closes_4400(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    ident = await enroll()
    client = await edge.session(ident)
    first = await submit(api, ident.node_id)
    deliver = await client.recv_type("cmd.deliver")
    assert deliver.b["command_id"] == first["command_id"] and deliver.q == 1
    await client.send(Frame(t="edge.ack", b={"acks": {"cmd": 1}}))
    await eventually(lambda: _delivered(api, first["command_id"]), what="delivered")
    await client.send(Frame(t="edge.ack", b={"acks": {"cmd": 5}}))
    closed = await client.expect_close()
    assert closed.code == 4400 and "q=5" in closed.reason and "q=1" in closed.reason


async def _delivered(api: httpx.AsyncClient, command_id: str) -> bool:
    return (await command(api, command_id))["state"] == "delivered"


async def test_a_hello_cursor_beyond_what_was_ever_sent_starts_a_new_cmd_epoch_not_deliveries(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    ident = await enroll()
    client = await edge.session(ident, runtime={"state": "detached", "version": "t"})
    assert client.welcome is not None
    first_epoch = client.welcome.b["epoch"]
    queued = [(await submit(api, ident.node_id))["command_id"] for _ in range(3)]
    await client.close()
    # the node claims it applied q=2 of this epoch, although nothing was ever sent to it
    again = await edge.session(ident, acks={"cmd": 2})
    assert again.welcome is not None
    assert again.welcome.b["epoch"] != first_epoch
    assert again.welcome.b["acks"]["cmd"] == 0
    delivers = [await again.recv_type("cmd.deliver") for _ in range(3)]
    assert [(d.q, d.b["command_id"]) for d in delivers] == list(enumerate(queued, start=1))
    for command_id in queued:
        assert (await command(api, command_id))["state"] == "queued"
