"""The controller's rtc relay (controller/services/rtc.py) against a real controller
process: raw ``/ws`` clients on one side, raw edge clients standing in for nodes on the
other (docs/protocol.md "Media plane signalling")."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from tether.protocol.frames import Frame
from tether.protocol.rtc import MAX_SDP

from ..helpers import ControllerProc
from .conftest import (
    NET_TIMEOUT_S,
    Edge,
    EdgeClient,
    Identity,
    assert_error,
    browser_connect,
    json_expect_close,
    json_recv,
)

Enroll = Callable[..., Awaitable[Identity]]
SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


def offer(node_id: str, psid: str = "p-1", negotiation_id: Any = 1, **extra: Any
          ) -> dict[str, Any]:
    return {"t": "rtc.offer", "id": f"o-{psid}", "b": {
        "node_id": node_id, "peer_session_id": psid, "negotiation_id": negotiation_id,
        "sdp": SDP, "type": "offer", **extra}}


def answer_body(node_id: str, psid: str, to: str, **extra: Any) -> dict[str, Any]:
    return {"node_id": node_id, "peer_session_id": psid, "negotiation_id": 1, "sdp": SDP,
            "type": "answer", "to": to, **extra}


async def hello(ws: ClientConnection, token: str) -> dict[str, Any]:
    await ws.send(json.dumps({"t": "hello", "id": "h", "b": {"token": token}}))
    welcome = await json_recv(ws)
    assert welcome["t"] == "welcome", welcome
    return welcome


async def send(ws: ClientConnection, frame: dict[str, Any]) -> None:
    await ws.send(json.dumps(frame))


async def reply_to(ws: ClientConnection, frame_id: str) -> dict[str, Any]:
    """The next frame, which must answer ``frame_id``."""
    got = await json_recv(ws)
    assert got.get("re") == frame_id, got
    return got


async def stays_open(ws: ClientConnection) -> None:
    """A ping is answered by a pong, and nothing else came first."""
    await send(ws, {"t": "ping", "id": "still-there"})
    got = await json_recv(ws)
    assert (got["t"], got.get("re")) == ("pong", "still-there"), got


async def node_recv(node: EdgeClient, t: str) -> Frame:
    return await node.recv_type(t)


async def node_error(node: EdgeClient, re: str) -> dict[str, Any]:
    frame = await node.recv_type("error")
    assert frame.re == re, frame
    return dict(frame.b)


async def node_gets_nothing(node: EdgeClient) -> None:
    """Nothing but the heartbeat's ack arrives before it (the node's frames are ordered)."""
    await node.heartbeat()


@pytest.fixture
async def ws_clients(controller: ControllerProc) -> AsyncIterator[
        Callable[..., Awaitable[ClientConnection]]]:
    """ws_clients(token=admin): a /ws client past its hello; closed after the test."""
    opened: list[ClientConnection] = []
    url = controller.url.replace("http", "ws", 1) + "/ws"

    async def make(token: str | None = None) -> ClientConnection:
        ws = await browser_connect(url)
        opened.append(ws)
        await hello(ws, token or controller.token)
        return ws
    try:
        yield make
    finally:
        for ws in opened:
            await ws.close()


async def test_an_offer_reaches_the_node_stamped_and_its_answer_reaches_only_that_client(
        ws_clients: Callable[..., Awaitable[ClientConnection]], edge: Edge, enroll: Enroll,
        api: httpx.AsyncClient) -> None:
    ident = await enroll("n-rtc")
    node = await edge.session(ident)
    alice, bob = await ws_clients(), await ws_clients()
    await send(alice, offer("n-rtc", **{"from": "client:forged", "to": "node:elsewhere"}))
    got = await node_recv(node, "rtc.offer")
    address = got.b["from"]
    assert address.startswith("client:") and address != "client:forged"
    assert len(address) >= len("client:") + 20  # unguessable: 128 random bits
    assert "to" not in got.b and got.b["sdp"] == SDP and got.b["negotiation_id"] == 1
    await node.send(Frame(t="rtc.answer", id="a-1", b=answer_body(
        "n-rtc", "p-1", address, **{"from": "node:someone-else"})))
    reply = await json_recv(alice)
    assert reply["t"] == "rtc.answer", reply
    assert reply["b"] == {"node_id": "n-rtc", "peer_session_id": "p-1", "negotiation_id": 1,
                          "sdp": SDP, "type": "answer", "from": "node:n-rtc"}
    await stays_open(bob)  # the other operator got nothing
    await node.send(Frame(t="rtc.ice", id="i-1", b={
        "node_id": "n-rtc", "peer_session_id": "p-1", "negotiation_id": 1, "to": address,
        "candidate": "candidate:1 1 udp 1 127.0.0.1 50000 typ host", "sdpMid": "0"}))
    assert (await json_recv(alice))["t"] == "rtc.ice"
    metrics = (await api.get("/metrics")).text
    assert 'tether_rtc_frames_relayed_total{type="rtc.offer"} 1.0' in metrics
    assert 'tether_rtc_frames_relayed_total{type="rtc.answer"} 1.0' in metrics


async def test_a_viewer_may_not_send_signalling_and_stays_connected(
        ws_clients: Callable[..., Awaitable[ClientConnection]], edge: Edge, enroll: Enroll,
        api: httpx.AsyncClient) -> None:
    node = await edge.session(await enroll("n-view"))
    token = (await api.post("/api/v1/tokens", json={"role": "viewer"})).json()["token"]
    viewer = await ws_clients(token)
    await send(viewer, offer("n-view"))
    refused = await reply_to(viewer, "o-p-1")
    assert (refused["t"], refused["b"]["code"]) == ("error", "forbidden")
    await stays_open(viewer)
    await node_gets_nothing(node)


async def test_an_offer_to_a_node_without_a_session_is_answered_node_offline(
        ws_clients: Callable[..., Awaitable[ClientConnection]], enroll: Enroll) -> None:
    await enroll("n-away")
    ws = await ws_clients()
    for node_id in ("n-away", "n-never-enrolled"):
        await send(ws, offer(node_id))
        assert (await reply_to(ws, "o-p-1"))["b"]["code"] == "node_offline"
    # the peer was not recorded: its ice is for an unknown peer
    await send(ws, {"t": "rtc.ice", "id": "i", "b": {
        "node_id": "n-away", "peer_session_id": "p-1", "negotiation_id": 1}})
    assert (await reply_to(ws, "i"))["b"]["code"] == "rtc_unknown_peer"


async def test_signalling_is_rate_limited_per_client_and_a_flood_is_closed_4429(
        ws_clients: Callable[..., Awaitable[ClientConnection]]) -> None:
    ws, other = await ws_clients(), await ws_clients()
    ice = {"t": "rtc.ice", "b": {"node_id": "n-1", "peer_session_id": "p-1",
                                 "negotiation_id": 1}}
    for i in range(90):  # the burst (40) and well over 20/s, under the flood mark
        await send(ws, {**ice, "id": f"i{i}"})
    codes = [(await reply_to(ws, f"i{i}"))["b"]["code"] for i in range(90)]
    assert codes[:40] == ["rtc_unknown_peer"] * 40
    assert "rate_limited" in codes and set(codes) == {"rtc_unknown_peer", "rate_limited"}
    await stays_open(ws)
    await stays_open(other)  # its own bucket
    for i in range(400):
        await send(ws, {**ice, "id": f"f{i}"})
    assert await json_expect_close(ws) == 4429
    await stays_open(other)


async def test_a_node_may_address_only_clients_that_opened_a_peer_with_it(
        ws_clients: Callable[..., Awaitable[ClientConnection]], edge: Edge,
        enroll: Enroll) -> None:
    n1 = await edge.session(await enroll("n-one"))
    n2 = await edge.session(await enroll("n-two"))
    ws = await ws_clients()
    await send(ws, offer("n-one"))
    address = (await node_recv(n1, "rtc.offer")).b["from"]
    cases = [
        (n2, answer_body("n-two", "p-1", address)),  # n2 was never offered anything
        (n2, answer_body("n-one", "p-1", address)),  # nor can it speak as n1
        (n1, answer_body("n-two", "p-1", address)),  # n1 cannot name another node end
        (n1, answer_body("n-one", "p-other", address)),  # a peer the client did not open
        (n1, answer_body("n-one", "p-1", "client:guessed-address-0123456789")),
        (n1, answer_body("n-one", "p-1", "node:n-two")),  # no grant for node <-> node
    ]
    for i, (node, body) in enumerate(cases):
        await node.send(Frame(t="rtc.answer", id=f"x{i}", b=body))
        assert (await node_error(node, f"x{i}"))["code"] == "forbidden", body
    await stays_open(ws)  # none of it reached the client
    await n1.send(Frame(t="rtc.answer", id="ok", b=answer_body("n-one", "p-1", address)))
    assert (await json_recv(ws))["t"] == "rtc.answer"


HOSTILE_CLIENT_BODIES = [
    {"sdp": "x" * (MAX_SDP + 1)},
    {"node_id": "N_ONE"},
    {"peer_session_id": "a" * 65},
    {"peer_session_id": "p 1"},
    {"negotiation_id": True},
    {"negotiation_id": 2 ** 60},
    {"negotiation_id": 1.5},
    {"type": "answer"},
    {"sdp": 12},
    {"sdp": "v=0\x00"},
    {"from": "elsewhere"},
]


async def test_malformed_bodies_get_bad_frame_and_the_connections_stay(
        ws_clients: Callable[..., Awaitable[ClientConnection]], edge: Edge,
        enroll: Enroll) -> None:
    node = await edge.session(await enroll("n-bad"))
    ws = await ws_clients()
    for i, hostile in enumerate(HOSTILE_CLIENT_BODIES):
        frame = offer("n-bad")
        frame["b"].update(hostile)
        frame["id"] = f"h{i}"
        await send(ws, frame)
        assert (await reply_to(ws, f"h{i}"))["b"]["code"] == "bad_frame", hostile
    await send(ws, {"t": "rtc.close", "id": "nomap", "b": {"node_id": ["n-bad"]}})
    assert (await reply_to(ws, "nomap"))["b"]["code"] == "bad_frame"
    await stays_open(ws)
    await node_gets_nothing(node)  # nothing malformed was relayed
    await send(ws, offer("n-bad"))
    address = (await node_recv(node, "rtc.offer")).b["from"]
    for i, hostile in enumerate([{"to": None}, {"sdp": "x" * (MAX_SDP + 1)},
                                 {"negotiation_id": False}, {"to": 7}, {"type": "offer"}]):
        await node.send(Frame(t="rtc.answer", id=f"n{i}",
                              b={**answer_body("n-bad", "p-1", address), **hostile}))
        assert (await node_error(node, f"n{i}"))["code"] == "bad_frame", hostile
    await node.send(Frame(t="rtc.relay", id="r", b={"node_id": "n-bad",
                                                    "peer_session_id": "p-1"}))
    assert (await node_error(node, "r"))["code"] == "bad_frame"
    await node.heartbeat()  # the session stays
    await stays_open(ws)


async def test_when_a_client_goes_away_each_of_its_nodes_gets_rtc_close(
        ws_clients: Callable[..., Awaitable[ClientConnection]], edge: Edge,
        enroll: Enroll) -> None:
    n1 = await edge.session(await enroll("n-c1"))
    n2 = await edge.session(await enroll("n-c2"))
    ws = await ws_clients()
    await send(ws, offer("n-c1", "p-a", negotiation_id="neg-7"))
    await send(ws, offer("n-c2", "p-b"))
    address = (await node_recv(n1, "rtc.offer")).b["from"]
    await node_recv(n2, "rtc.offer")
    await ws.close()
    for node, psid, neg, node_id in ((n1, "p-a", "neg-7", "n-c1"), (n2, "p-b", 1, "n-c2")):
        close = await node_recv(node, "rtc.close")
        assert close.b == {"node_id": node_id, "peer_session_id": psid,
                           "negotiation_id": neg, "from": address, "reason": "client gone"}
    # and the route is gone with it: the node cannot address the client any more
    await n1.send(Frame(t="rtc.answer", id="late", b=answer_body("n-c1", "p-a", address)))
    assert (await node_error(n1, "late"))["code"] == "forbidden"


async def test_two_nodes_signal_each_other_only_under_a_grant(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    a = await edge.session(await enroll("n-a"))
    b = await edge.session(await enroll("n-b"))
    await enroll("n-off")
    ice = {"node_id": "n-b", "peer_session_id": "whatever", "negotiation_id": 1,
           "to": "node:n-b", "candidate": ""}
    await a.send(Frame(t="rtc.ice", id="no-grant", b=ice))
    assert (await node_error(a, "no-grant"))["code"] == "forbidden"
    assert_error(await api.post("/api/v1/rtc/links", json={"a": "n-a", "b": "n-off"}),
                 409, "node_offline")
    stray = await node_recv(a, "rtc.link")  # n-a was told first: its grant lapses unused
    assert stray.b["from"] == "node:n-off"
    for bad in ({"a": "n-a", "b": "n-a"}, {"a": "n-a"}, {"a": "N A", "b": "n-b"},
                {"a": "n-a", "b": "n-b", "c": 1}, {"a": True, "b": "n-b"}):
        assert_error(await api.post("/api/v1/rtc/links", json=bad), 400, "invalid_request")
    resp = await api.post("/api/v1/rtc/links", json={"a": "n-a", "b": "n-b"})
    assert resp.status_code == 201, resp.text
    link = resp.json()
    assert set(link) == {"peer_session_id", "a", "b", "expires_at"}
    psid = link["peer_session_id"]
    for node, other in ((a, "node:n-b"), (b, "node:n-a")):
        grant = await node_recv(node, "rtc.link")
        assert grant.b["peer_session_id"] == psid and grant.b["from"] == other
        assert grant.b["node_id"] == "n-b"
    await a.send(Frame(t="rtc.offer", id="o", b={
        "node_id": "n-b", "peer_session_id": psid, "negotiation_id": 1, "sdp": SDP,
        "type": "offer", "to": "node:n-b", "from": "client:forged"}))
    got = await node_recv(b, "rtc.offer")
    assert got.b["from"] == "node:n-a" and "to" not in got.b
    await b.send(Frame(t="rtc.answer", id="a", b=answer_body("n-b", psid, "node:n-a")))
    assert (await node_recv(a, "rtc.answer")).b["from"] == "node:n-b"
    # the grant names its node end: neither side may claim the other one is it
    await b.send(Frame(t="rtc.answer", id="swap", b=answer_body("n-a", psid, "node:n-a")))
    assert (await node_error(b, "swap"))["code"] == "forbidden"
    # and a third node has no part in it
    c = await edge.session(await enroll("n-c"))
    await c.send(Frame(t="rtc.ice", id="c", b={**ice, "peer_session_id": psid}))
    assert (await node_error(c, "c"))["code"] == "forbidden"


async def test_relay_frames_pass_under_a_grant_within_the_receivers_window(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    a = await edge.session(await enroll("r-a"))
    b = await edge.session(await enroll("r-b"))

    def data(seq: int) -> Frame:
        return Frame(t="rtc.relay", b={"node_id": "r-b", "peer_session_id": psid,
                                       "to": "node:r-b", "seq": seq,
                                       "data": bytes([seq]) * (60 << 10)})

    await a.send(Frame(t="rtc.relay", id="early", b={
        "node_id": "r-b", "peer_session_id": "link-x", "to": "node:r-b", "seq": 1,
        "data": b"x"}))
    assert (await node_error(a, "early"))["code"] == "forbidden"
    resp = await api.post("/api/v1/rtc/links", json={"a": "r-a", "b": "r-b"})
    psid = resp.json()["peer_session_id"]
    await node_recv(a, "rtc.link")
    await node_recv(b, "rtc.link")
    await a.send(data(1))  # one frame always fits the initial 64 KiB window
    await a.send(data(2))  # 120 KiB in flight would not: dropped
    await a.send(data(1))  # a re-send of what is in flight passes
    for seq in (1, 1):
        got = await node_recv(b, "rtc.relay")
        assert (got.b["seq"], got.b["from"], len(got.b["data"])) == (seq, "node:r-a",
                                                                      60 << 10)
    await b.send(Frame(t="rtc.relay", b={"node_id": "r-b", "peer_session_id": psid,
                                         "to": "node:r-a", "ack": 1, "window": 256 << 10}))
    ack = await node_recv(a, "rtc.relay")
    assert (ack.b["ack"], ack.b["window"], ack.b["from"]) == (1, 256 << 10, "node:r-b")
    for seq in range(2, 7):  # 4 frames (240 KiB) fit the new window, the fifth does not
        await a.send(data(seq))
    await a.send(data(2))  # a marker: a re-send, passed
    assert [(await node_recv(b, "rtc.relay")).b["seq"] for _ in range(5)] == [2, 3, 4, 5, 2]
    # relay frames go between nodes only
    await b.send(Frame(t="rtc.relay", id="to-client", b={
        "node_id": "r-b", "peer_session_id": psid, "to": "client:someone", "ack": 1,
        "window": 1}))
    assert (await node_error(b, "to-client"))["code"] == "forbidden"
    metrics = (await api.get("/metrics")).text
    assert 'tether_rtc_frames_refused_total{reason="relay_window"} 2.0' in metrics
    assert f"tether_rtc_relay_bytes_total {7 * (60 << 10)}.0" in metrics


async def test_a_viewer_may_not_link_nodes(api: httpx.AsyncClient,
                                           controller: ControllerProc) -> None:
    token = (await api.post("/api/v1/tokens", json={"role": "viewer"})).json()["token"]
    async with httpx.AsyncClient(base_url=controller.url, timeout=NET_TIMEOUT_S, headers={
            "Authorization": f"Bearer {token}"}) as viewer:
        assert_error(await viewer.post("/api/v1/rtc/links", json={"a": "x", "b": "y"}),
                     403, "forbidden")
    audit = (await api.get("/api/v1/audit")).json()["items"]
    assert any(r["action"] == "POST /api/v1/rtc/links" and r["status"] == 403
               for r in audit), audit[:3]


async def test_an_offer_over_the_frame_cap_the_node_announced_is_refused_and_all_stays(
        ws_clients: Callable[..., Awaitable[ClientConnection]], edge: Edge,
        enroll: Enroll) -> None:
    node = await edge.session(await enroll("n-small"), max_frame=4096)
    ws = await ws_clients()
    big = offer("n-small")
    big["b"]["sdp"] = "a=x\r\n" * 2000  # 10 KB: valid, but over what this node takes
    await send(ws, big)
    assert (await reply_to(ws, "o-p-1"))["b"]["code"] == "frame_too_large"
    await stays_open(ws)
    await send(ws, offer("n-small"))  # the peer was not recorded: it opens now
    assert (await node_recv(node, "rtc.offer")).b["sdp"] == SDP
