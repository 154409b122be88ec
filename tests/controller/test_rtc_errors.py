"""A node's ``error`` about a ``/ws`` client's rtc frame goes back to that client, ``re``
its own frame id, only along a route the node may use (controller/services/rtc.py
``error_from_node``; docs/protocol.md "Errors back to the client"). Real controller
process, raw ``/ws`` clients, raw edge clients as nodes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection

from tether.protocol.frames import Frame

from .conftest import Edge, json_recv
from .test_rtc_relay import (
    Enroll,
    answer_body,
    node_recv,
    offer,
    reply_to,
    send,
    stays_open,
    ws_clients,
)

__all__ = ["ws_clients"]  # the fixture, shared with test_rtc_relay


def node_error(to: str, node_id: str = "n-err", psid: str = "p-1", code: str = "rtc_stale",
               **extra: Any) -> dict[str, Any]:
    return {"code": code, "message": "negotiation 1 was used already", "node_id": node_id,
            "peer_session_id": psid, "negotiation_id": 1, "to": to, **extra}


async def test_a_nodes_error_about_a_clients_offer_comes_back_to_it_with_its_frame_id(
        ws_clients: Callable[..., Awaitable[ClientConnection]], edge: Edge,
        enroll: Enroll, api: httpx.AsyncClient) -> None:
    node = await edge.session(await enroll("n-err"))
    ws = await ws_clients()
    await send(ws, offer("n-err"))
    got = await node_recv(node, "rtc.offer")
    assert got.id == "o-p-1"  # the client's frame id rides on to the node
    await node.send(Frame(t="error", re=got.id, b=node_error(
        got.b["from"], **{"from": "node:forged", "extra": "x" * 100})))
    reply = await reply_to(ws, "o-p-1")
    assert reply["t"] == "error"
    assert reply["b"] == {"code": "rtc_stale", "message": "negotiation 1 was used already",
                          "node_id": "n-err", "peer_session_id": "p-1", "negotiation_id": 1,
                          "from": "node:n-err"}
    metrics = (await api.get("/metrics")).text
    assert 'tether_rtc_frames_relayed_total{type="error"} 1.0' in metrics


async def test_a_nodes_error_to_a_client_it_has_no_route_to_is_never_relayed(
        ws_clients: Callable[..., Awaitable[ClientConnection]], edge: Edge,
        enroll: Enroll, api: httpx.AsyncClient) -> None:
    n1 = await edge.session(await enroll("n-err"))
    n2 = await edge.session(await enroll("n-two"))
    alice, bob = await ws_clients(), await ws_clients()
    await send(alice, offer("n-err"))
    alice_at = (await node_recv(n1, "rtc.offer")).b["from"]
    await send(bob, offer("n-two"))
    bob_at = (await node_recv(n2, "rtc.offer")).b["from"]
    forged = [
        node_error(bob_at),  # bob opened no peer with n-err
        node_error(alice_at, psid="p-other"),  # a peer alice did not open
        node_error(alice_at, node_id="n-two"),  # speaking as another node end
        node_error("client:guessed-address-0123456789"),
        node_error(alice_at, code="Not A Code"),  # hostile values: never copied on
        node_error(alice_at, message="m" * 100_000),
        node_error(alice_at, negotiation_id=True),
    ]
    for i, body in enumerate(forged):
        await n1.send(Frame(t="error", re=f"f{i}", b=body))
    # an error with no peer id or no client is only logged
    await n1.send(Frame(t="error", re="g", b={"code": "bad_frame", "message": "x",
                                              "to": alice_at}))
    await n1.send(Frame(t="error", re="h", b={"code": "bad_frame", "message": "x"}))
    # the node's frames are ordered: the answer is the first thing each client gets
    await n1.send(Frame(t="rtc.answer", id="a", b=answer_body("n-err", "p-1", alice_at)))
    await n2.send(Frame(t="rtc.answer", id="b", b=answer_body("n-two", "p-1", bob_at)))
    assert (await json_recv(alice))["t"] == "rtc.answer"
    assert (await json_recv(bob))["t"] == "rtc.answer"
    await stays_open(alice)
    await stays_open(bob)
    metrics = (await api.get("/metrics")).text
    assert 'tether_rtc_frames_relayed_total{type="error"}' not in metrics
    assert 'tether_rtc_frames_refused_total{reason="forbidden"} 4.0' in metrics
    assert 'tether_rtc_frames_refused_total{reason="bad_frame"} 3.0' in metrics


async def test_a_node_without_the_peer_frees_the_clients_slot_for_it(
        ws_clients: Callable[..., Awaitable[ClientConnection]], edge: Edge,
        enroll: Enroll) -> None:
    node = await edge.session(await enroll("n-err"))
    ws = await ws_clients()
    await send(ws, offer("n-err"))
    got = await node_recv(node, "rtc.offer")
    await node.send(Frame(t="error", re=got.id, b=node_error(got.b["from"],
                                                             code="unavailable")))
    assert (await reply_to(ws, "o-p-1"))["b"]["code"] == "unavailable"
    # the controller forgot the peer too: its ice is for an unknown peer
    await send(ws, {"t": "rtc.ice", "id": "i", "b": {
        "node_id": "n-err", "peer_session_id": "p-1", "negotiation_id": 1}})
    assert (await reply_to(ws, "i"))["b"]["code"] == "rtc_unknown_peer"
