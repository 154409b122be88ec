"""Floods of large monitor packets against a real controller process (issue 11 item 3):
its memory stays within a stated bound, and a /ws client that stops reading is closed with
4429, the documented code for a client too slow to keep up."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

from tether.protocol.frames import Frame
from tether.protocol.signing import generate_private_key

from ..helpers import FAST, ControllerProc
from .conftest import NET_TIMEOUT_S, Edge, EdgeClient, Identity, eventually

# Under the 64 KiB a packet's data may hold (larger ones are refused at the boundary,
# tests/controller/test_poison.py): the flood is in the number of packets.
PACKET_BYTES = 60_000
TOPICS = 30
_ids = itertools.count(1)


async def enrolled_session(ctl: ControllerProc, edge: Edge) -> tuple[Identity, EdgeClient]:
    ident = Identity(f"flood-{next(_ids)}", generate_private_key())
    async with httpx.AsyncClient(base_url=ctl.url, timeout=NET_TIMEOUT_S) as http:
        resp = await http.post("/api/v1/join-tokens", json={"uses": 1},
                               headers={"Authorization": f"Bearer {ctl.token}"})
        resp = await http.post("/v1/edge/enroll", json={
            "join_token": resp.json()["token"], "node_id": ident.node_id,
            "public_key": ident.public_b64, "labels": {}})
        assert resp.status_code == 201, resp.text
    return ident, await edge.session(ident)


async def stalled_subscriber(ctl: ControllerProc, topic: str) -> ClientConnection:
    """A /ws client that reads its snapshot and then never reads again (the client
    library stops reading the socket once one message is buffered)."""
    url = ctl.url.replace("http", "ws", 1) + "/ws"
    ws = await connect(url, subprotocols=["tether.v1.json"],  # type: ignore[list-item]
                       max_queue=1, max_size=None, ping_interval=None, close_timeout=2)
    await ws.send(json.dumps({"t": "hello", "b": {"token": ctl.token}}))
    assert json.loads(await ws.recv())["t"] == "welcome"
    await ws.send(json.dumps({"t": "subscribe", "b": {"topics": [topic]}}))
    while json.loads(await ws.recv())["t"] != "subscribed":
        pass
    return ws


async def close_code(ws: ClientConnection, timeout_s: float) -> tuple[int, str]:
    with pytest.raises(websockets.ConnectionClosed) as info:
        async with asyncio.timeout(timeout_s):
            while True:
                await ws.recv()
    assert info.value.rcvd is not None, info.value
    return info.value.rcvd.code, info.value.rcvd.reason


def packet(q: int, topic: str) -> Frame:
    return Frame(t="monitor.packet", b={"topic": topic, "seq": q, "at_ms": 0, "dropped": 0,
                                        "data": {"blob": chr(97 + q % 26) * PACKET_BYTES}})


@pytest.fixture
def default_ctl(tmp_path: Path) -> Iterator[ControllerProc]:
    ctl = ControllerProc(tmp_path / "ctl")  # default budgets: 4 MiB per node, 16 MiB /ws
    ctl.start()
    yield ctl
    ctl.terminate()


@pytest.fixture
async def edge_of(default_ctl: ControllerProc) -> AsyncIterator[Edge]:
    factory = Edge(default_ctl.url)
    yield factory
    await factory.aclose()


async def test_3000_monitor_packets_keep_the_controller_within_150_mib(
        default_ctl: ControllerProc, edge_of: Edge) -> None:
    """The issue's flood, within the per-packet bound: 3,000 packets of 60 KB over 30
    topics (180 MB) with a /ws client subscribed that never reads. Before, the controller
    kept 100 packets per topic whatever their size (all 180 MB here) and queued 1,024
    events per client (60 MB more). The stated bound: RSS grows by less than 150 MiB
    (budgets: 4 MiB of packets per node, 16 MiB queued per /ws client; the rest is frames
    in flight and the allocator)."""
    ident, node = await enrolled_session(default_ctl, edge_of)
    proc = psutil.Process(default_ctl.pid)
    stalled = await stalled_subscriber(default_ctl, f"monitor:{ident.node_id}")
    before = proc.memory_info().rss
    peak = before
    for q in range(1, 3001):
        await node.send(packet(q, f"topic-{q % TOPICS}"))
        if q % 100 == 0:
            await node.heartbeat()  # every packet before it was handled
            peak = max(peak, proc.memory_info().rss)
    await node.heartbeat()
    after = proc.memory_info().rss
    grown_mib = (max(peak, after) - before) / (1 << 20)
    assert grown_mib < 150, f"controller RSS grew by {grown_mib:.0f} MiB"
    async with httpx.AsyncClient(base_url=default_ctl.url, timeout=NET_TIMEOUT_S, headers={
            "Authorization": f"Bearer {default_ctl.token}"}) as http:
        resp = await http.get(f"/api/v1/nodes/{ident.node_id}/monitor")
        assert resp.status_code == 200
        kept = [p["seq"] for ring in resp.json()["topics"].values() for p in ring]
        assert 0 < len(kept) <= (4 << 20) // PACKET_BYTES
        assert max(kept) == 3000  # the newest is kept, the oldest went
        ws = (await http.get("/api/v1/diag")).json()["ws"]
        # The stalled client was cut off by its byte bound, long before 1,024 events of
        # 60 KB queued up; it leaves the hub once its close (4429) is sent or timed out.
        assert ws["cut_off_total"] == 1, ws

        async def unsubscribed() -> bool:
            diag = (await http.get("/api/v1/diag")).json()["ws"]
            return diag["subscribers"] == 0  # type: ignore[no-any-return]

        await eventually(unsubscribed, timeout_s=60, what="the cut-off client to leave")
    await stalled.close()


@pytest.fixture
def roomy_ctl(tmp_path: Path) -> Iterator[ControllerProc]:
    """A /ws queue too large to overflow, so only the send deadline can stop a client."""
    ctl = ControllerProc(tmp_path / "ctl", extra=[
        *FAST, "--ws-max-queue", "100000", "--ws-max-queue-bytes", str(1 << 30)])
    ctl.start()
    yield ctl
    ctl.terminate()


async def test_a_ws_client_that_stops_reading_is_closed_with_4429_not_4408(
        roomy_ctl: ControllerProc, tmp_path: Path) -> None:
    edge = Edge(roomy_ctl.url)
    try:
        ident, node = await enrolled_session(roomy_ctl, edge)
        stalled = await stalled_subscriber(roomy_ctl, f"monitor:{ident.node_id}")
        for q in range(1, 900):  # ~54 MB: far more than the socket buffers hold
            await node.send(packet(q, "t"))
        async with httpx.AsyncClient(base_url=roomy_ctl.url, timeout=NET_TIMEOUT_S,
                                     headers={"Authorization": f"Bearer {roomy_ctl.token}"}
                                     ) as http:
            async def subscribers() -> int:
                await node.heartbeat()  # the node stays online meanwhile
                diag = (await http.get("/api/v1/diag")).json()
                return int(diag["ws"]["subscribers"])
            async def cut_off() -> bool:
                return await subscribers() == 0
            # Without reading: the controller gives up on the client by itself.
            await eventually(cut_off, timeout_s=40, what="the stalled client to be cut off")
        code, reason = await close_code(stalled, 30)
        assert code == 4429, (code, reason)
        assert "too slow" in reason
    finally:
        await edge.aclose()
