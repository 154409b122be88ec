"""The rtc relay across replicas (real processes on one PostgreSQL and one nats-server): the
operator's /ws on replica B, the node's session on replica A; and two nodes on two
replicas, linked through a third party's request (controller/services/rtc.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection

from tether.protocol.frames import Frame

from ..controller.conftest import NET_TIMEOUT_S, Edge, EdgeClient, browser_connect, json_recv
from ..controller.test_rtc_relay import SDP, answer_body, hello, offer, send
from ..helpers import POLL_S, ControllerProc
from .conftest import enrolled


async def offer_until_routed(ws: ClientConnection, frame: dict[str, Any]) -> None:
    """Send ``frame`` until it is not refused ``node_offline``: the holder's NATS
    subscription for a new session is made a moment after the session opens."""
    deadline = time.monotonic() + 10 * NET_TIMEOUT_S
    while True:
        await send(ws, frame)
        try:
            reply = await json_recv(ws, timeout_s=0.5)
        except TimeoutError:
            return  # no error: the node's session took it
        assert reply["t"] == "error" and reply["b"]["code"] == "node_offline", reply
        assert time.monotonic() < deadline, "the node never became reachable"
        await asyncio.sleep(POLL_S)


async def link_until_routed(api: httpx.AsyncClient, a: str, b: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10 * NET_TIMEOUT_S
    while True:
        resp = await api.post("/api/v1/rtc/links", json={"a": a, "b": b})
        if resp.status_code == 201:
            return dict(resp.json())
        assert resp.status_code == 409, resp.text
        assert time.monotonic() < deadline, "the nodes never became reachable"
        await asyncio.sleep(POLL_S)


async def _skip_links(node: EdgeClient, t: str) -> Frame:
    """The next ``t``; acks and stray rtc.link grants (of a 409 link attempt) skipped."""
    while True:
        frame = await node.recv()
        if frame.t == t:
            return frame
        assert frame.t in ("edge.ack", "edge.heartbeat_ack", "rtc.link"), frame


async def test_a_client_on_one_replica_signals_a_node_held_by_another_both_ways(
        make_replica: Callable[[str], ControllerProc],
        edges: Callable[[ControllerProc], Edge]) -> None:
    holder, other = make_replica("r-a"), make_replica("r-b")
    async with httpx.AsyncClient(base_url=other.url, timeout=NET_TIMEOUT_S, headers={
            "Authorization": f"Bearer {other.token}"}) as api:
        ident = await enrolled(api, "n-far")
        node = await edges(holder).session(ident)
        ws = await browser_connect(other.url.replace("http", "ws", 1) + "/ws")
        try:
            await hello(ws, other.token)
            # the client offers, the node answers
            await offer_until_routed(ws, offer("n-far", "p-far"))
            got = await _skip_links(node, "rtc.offer")
            address = got.b["from"]
            assert address.startswith("client:") and got.b["peer_session_id"] == "p-far"
            await node.send(Frame(t="rtc.answer", b=answer_body("n-far", "p-far", address)))
            reply = await json_recv(ws)
            assert (reply["t"], reply["b"]["from"], reply["b"]["sdp"]) == (
                "rtc.answer", "node:n-far", SDP)
            # the node offers (a renegotiation of its own), the client answers
            await node.send(Frame(t="rtc.offer", b={
                "node_id": "n-far", "peer_session_id": "p-far", "negotiation_id": "node-2",
                "sdp": SDP, "type": "offer", "to": address}))
            reply = await json_recv(ws)
            assert (reply["t"], reply["b"]["negotiation_id"]) == ("rtc.offer", "node-2")
            await send(ws, {"t": "rtc.answer", "id": "ans", "b": {
                "node_id": "n-far", "peer_session_id": "p-far", "negotiation_id": "node-2",
                "sdp": SDP, "type": "answer"}})
            got = await _skip_links(node, "rtc.answer")
            assert (got.b["from"], got.b["negotiation_id"]) == (address, "node-2")
        finally:
            await ws.close()
        # the client went away on replica B: the node on replica A hears it
        close = await _skip_links(node, "rtc.close")
        assert (close.b["reason"], close.b["from"]) == ("client gone", address)


async def test_two_nodes_on_two_replicas_signal_and_relay_under_a_grant(
        make_replica: Callable[[str], ControllerProc],
        edges: Callable[[ControllerProc], Edge]) -> None:
    r_a, r_b = make_replica("r-a"), make_replica("r-b")
    async with httpx.AsyncClient(base_url=r_b.url, timeout=NET_TIMEOUT_S, headers={
            "Authorization": f"Bearer {r_b.token}"}) as api:
        a = await edges(r_a).session(await enrolled(api, "n-left"))
        b = await edges(r_b).session(await enrolled(api, "n-right"))
        link = await link_until_routed(api, "n-left", "n-right")
        psid = link["peer_session_id"]
        for node in (a, b):
            while (await node.recv_type("rtc.link")).b["peer_session_id"] != psid:
                pass  # a grant of an earlier, refused attempt
        await a.send(Frame(t="rtc.offer", b={
            "node_id": "n-right", "peer_session_id": psid, "negotiation_id": 1, "sdp": SDP,
            "type": "offer", "to": "node:n-right"}))
        assert (await _skip_links(b, "rtc.offer")).b["from"] == "node:n-left"
        await b.send(Frame(t="rtc.answer", b=answer_body("n-right", psid, "node:n-left")))
        assert (await _skip_links(a, "rtc.answer")).b["from"] == "node:n-right"
        await a.send(Frame(t="rtc.relay", b={
            "node_id": "n-right", "peer_session_id": psid, "to": "node:n-right", "seq": 1,
            "data": b"across"}))
        got = await _skip_links(b, "rtc.relay")
        assert (got.b["seq"], bytes(got.b["data"])) == (1, b"across")
        await b.send(Frame(t="rtc.relay", b={
            "node_id": "n-right", "peer_session_id": psid, "to": "node:n-left", "ack": 1,
            "window": 1 << 16}))
        assert (await _skip_links(a, "rtc.relay")).b["ack"] == 1
