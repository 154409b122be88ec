"""A node's in-memory state, seen from a replica that does not hold it (real processes on one
PostgreSQL and one nats-server): replica A holds the node's session; on replica B,
``GET /api/v1/nodes/{id}/monitor`` (all topics, and one), the ``/ws`` snapshot of
``monitor:<id>`` and ``GET /api/v1/nodes/{id}`` (its live transport, ``session.replica``)
show what A has in memory, read over NATS (``tether.node.<id>.peek``). Once A is gone B
answers as it did before, at once."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
from websockets.asyncio.client import connect

from tether.protocol.frames import Frame

from ..controller.conftest import NET_TIMEOUT_S, Edge, EdgeClient, eventually
from ..helpers import ControllerProc
from .conftest import enrolled

AT_ONCE_S = 0.9  # under the peek's 1 s timeout: no answer was waited for


async def send_packets(client: EdgeClient) -> None:
    for seq, topic in enumerate(["cpu", "cpu", "disk"], start=1):
        await client.send(Frame(t="monitor.packet", b={
            "topic": topic, "data": {"v": seq}, "seq": seq, "at_ms": 1000 + seq}))
    await client.send(Frame(t="edge.heartbeat", id="hb-t", b={
        "uptime_s": 1.0, "runtime": {"state": "attached"},
        "outbox": {"depth": 2, "oldest_age_s": 0.5}, "acks": {},
        "transport": {"rtt_ms": 12.5, "reconnects": 3, "clock_offset_ms": -1.5}}))
    # frames are handled in order: the ack says the packets before it were taken in
    assert (await client.recv_type("edge.heartbeat_ack")).re == "hb-t"


async def ws_snapshot(ctl: ControllerProc, token: str, topic: str) -> list[dict[str, Any]]:
    """The ``snapshot`` frames' bodies of ``topic`` on ``ctl``'s /ws."""
    url = ctl.url.replace("http", "ws", 1) + "/ws"
    async with asyncio.timeout(NET_TIMEOUT_S), \
            connect(url, subprotocols=["tether.v1.json"]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"t": "hello", "b": {"token": token}}))
        assert json.loads(await ws.recv())["t"] == "welcome"
        await ws.send(json.dumps({"t": "subscribe", "b": {"topics": [topic]}}))
        pages = []
        while (frame := json.loads(await ws.recv()))["t"] != "subscribed":
            assert frame["t"] == "snapshot", frame
            pages.append(frame["b"])
        return pages


async def timed_get(api: httpx.AsyncClient, path: str) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    resp = await api.get(path)
    assert resp.status_code == 200, resp.text
    return resp.json(), time.monotonic() - started


async def test_replica_b_shows_the_monitor_packets_and_live_transport_replica_a_holds(
        make_replica: Callable[[str], ControllerProc],
        edges: Callable[[ControllerProc], Edge]) -> None:
    a, b = make_replica("r-a"), make_replica("r-b")
    headers = {"Authorization": f"Bearer {a.token}"}
    async with httpx.AsyncClient(base_url=b.url, timeout=NET_TIMEOUT_S,
                                 headers=headers) as on_b:
        ident = await enrolled(on_b, "n-view")
        client = await edges(a).session(ident)
        await send_packets(client)

        body, _ = await timed_get(on_b, "/api/v1/nodes/n-view/monitor")
        topics = body["topics"]
        assert [p["seq"] for p in topics["cpu"]] == [1, 2]
        assert [p["seq"] for p in topics["disk"]] == [3]
        assert topics["cpu"][0] == {"node_id": "n-view", "topic": "cpu", "data": {"v": 1},
                                    "seq": 1, "at_ms": 1001, "dropped": 0}
        assert "cut" not in body
        one, _ = await timed_get(on_b, "/api/v1/nodes/n-view/monitor?topic=disk")
        assert list(one["topics"]) == ["disk"] and one["topics"]["disk"][0]["seq"] == 3

        pages = await ws_snapshot(b, a.token, "monitor:n-view")
        merged: dict[str, list[int]] = {}
        for page in pages:
            for name, ring in page["data"]["topics"].items():
                merged.setdefault(name, []).extend(p["seq"] for p in ring)
        assert merged == {"cpu": [1, 2], "disk": [3]}

        node, _ = await timed_get(on_b, "/api/v1/nodes/n-view")
        assert client.welcome is not None
        assert node["session"]["session_id"] == client.welcome.b["session_id"]
        assert node["session"]["replica"] == "r-a"
        assert node["liveness"] == "online"
        assert node["transport"] is not None
        assert (node["transport"]["rtt_ms"], node["transport"]["reconnects"]) == (12.5, 3)
        assert node["transport"]["outbox"]["depth"] == 2
        assert node["runtime"]["state"] == "attached"
        [ws_node] = await ws_snapshot(b, a.token, "node:n-view")
        assert ws_node["data"]["transport"]["rtt_ms"] == 12.5
        assert ws_node["data"]["session"]["replica"] == "r-a"
        # a list stays store-only: no request per node
        listed = (await on_b.get("/api/v1/nodes")).json()["items"]
        assert [n["transport"] for n in listed if n["node_id"] == "n-view"] == [None]

        # A dies: its session is still named by the store, and nobody answers for it
        await asyncio.to_thread(a.kill9)
        body, took = await timed_get(on_b, "/api/v1/nodes/n-view/monitor")
        assert (body, took < AT_ONCE_S) == ({"topics": {}}, True)
        node, took = await timed_get(on_b, "/api/v1/nodes/n-view")
        assert (node["transport"], took < AT_ONCE_S) == (None, True)
        assert node["session"] == {"session_id": client.welcome.b["session_id"],
                                   "replica": "r-a"}
        pages = await ws_snapshot(b, a.token, "monitor:n-view")
        assert [p["data"] for p in pages] == [{"topics": {}}]


async def test_a_node_that_moved_to_replica_b_is_read_from_b_s_own_memory(
        make_replica: Callable[[str], ControllerProc],
        edges: Callable[[ControllerProc], Edge]) -> None:
    """The holder answers, not whoever held the node before: A keeps the packets of the
    session it lost, but B, holding the node now, shows only its own."""
    a, b = make_replica("r-a"), make_replica("r-b")
    headers = {"Authorization": f"Bearer {a.token}"}
    async with httpx.AsyncClient(base_url=a.url, timeout=NET_TIMEOUT_S,
                                 headers=headers) as on_a:
        ident = await enrolled(on_a, "n-moves")
        old = await edges(a).session(ident)
        await send_packets(old)
        new = await edges(b).session(ident)
        await old.expect_close()
        await new.send(Frame(t="monitor.packet", b={"topic": "net", "data": {}, "seq": 9}))
        await new.heartbeat()

        async def seen_on_a() -> dict[str, Any] | None:
            """A's answer once A has let the node go (until then A reads its own memory)."""
            body, _ = await timed_get(on_a, "/api/v1/nodes/n-moves/monitor")
            return body["topics"] if "net" in body["topics"] else None

        topics = await eventually(seen_on_a, what="B's packets, seen on A")
        assert {name: [p["seq"] for p in ring] for name, ring in topics.items()} == {
            "net": [9]}
        node, _ = await timed_get(on_a, "/api/v1/nodes/n-moves")
        assert node["session"]["replica"] == "r-b"
