"""The browser and operator stream on /ws (PROTOCOL.md §9, JSON) against a real controller."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection

from tether.protocol.frames import Frame

from ..helpers import ControllerProc
from .conftest import (
    Edge,
    Identity,
    browser_connect,
    json_expect_close,
    json_recv,
)

Enroll = Callable[..., Awaitable[Identity]]


async def send(ws: ClientConnection, frame: dict[str, Any]) -> None:
    await ws.send(json.dumps(frame))


async def logged_in(ws_url: str, token: str, **kw: Any) -> ClientConnection:
    ws = await browser_connect(ws_url, **kw)
    await send(ws, {"t": "hello", "id": "h1", "b": {"token": token}})
    welcome = await json_recv(ws)
    assert welcome["t"] == "welcome", welcome
    return ws


async def next_event(ws: ClientConnection, kind: str) -> dict[str, Any]:
    """The next pushed event of ``kind``; other events before it are skipped."""
    while True:
        frame = await json_recv(ws)
        assert frame["t"] == "event", frame
        if frame["b"]["kind"] == kind:
            return frame["b"]  # type: ignore[no-any-return]


async def test_an_upgrade_without_the_json_sub_protocol_is_closed_with_4426(
        ws_url: str) -> None:
    ws = await browser_connect(ws_url, subprotocols=[])
    assert await json_expect_close(ws) == 4426
    ws = await browser_connect(ws_url, subprotocols=["tether.v1.msgpack"])
    assert await json_expect_close(ws) == 4426


async def test_a_valid_hello_is_welcomed_with_the_role(ws_url: str,
                                                       controller: ControllerProc) -> None:
    ws = await browser_connect(ws_url)
    try:
        assert ws.subprotocol == "tether.v1.json"
        await send(ws, {"t": "hello", "id": "h1", "b": {"token": controller.token}})
        welcome = await json_recv(ws)
        assert welcome["t"] == "welcome"
        assert welcome["b"]["role"] == "admin"
        await send(ws, {"t": "ping", "id": "p1"})
        pong = await json_recv(ws)
        assert pong["t"] == "pong" and pong["re"] == "p1"
    finally:
        await ws.close()


async def test_a_hello_with_a_bad_token_is_closed_with_4401(ws_url: str) -> None:
    ws = await browser_connect(ws_url)
    await send(ws, {"t": "hello", "b": {"token": "tok_wrong"}})
    assert await json_expect_close(ws) == 4401
    ws = await browser_connect(ws_url)
    await send(ws, {"t": "hello", "b": {}})
    assert await json_expect_close(ws) == 4401


async def test_a_first_frame_that_is_not_hello_is_closed_with_4400(
        ws_url: str, controller: ControllerProc) -> None:
    ws = await browser_connect(ws_url)
    await send(ws, {"t": "subscribe", "b": {"topics": ["nodes"], "token": controller.token}})
    assert await json_expect_close(ws) == 4400
    ws = await browser_connect(ws_url)
    await ws.send("hello?")  # not JSON at all
    assert await json_expect_close(ws) == 4400


async def test_a_binary_frame_is_closed_with_4400(ws_url: str) -> None:
    ws = await browser_connect(ws_url)
    await ws.send(b'{"t": "hello"}')
    assert await json_expect_close(ws) == 4400


async def test_an_origin_from_another_site_is_closed_with_4403(
        ws_url: str, controller: ControllerProc) -> None:
    ws = await browser_connect(ws_url, origin="http://evil.example")
    # refused before any hello: the close may already be on its way
    assert await json_expect_close(ws) == 4403
    ws = await browser_connect(ws_url, origin=f"http://evil.example:{controller.port}")
    assert await json_expect_close(ws) == 4403


async def test_no_origin_and_the_same_origin_are_accepted(
        ws_url: str, controller: ControllerProc) -> None:
    for origin in (None, controller.url):
        ws = await logged_in(ws_url, controller.token, origin=origin)
        await ws.close()


async def test_subscribing_to_nodes_pushes_session_opened_when_a_node_connects(
        ws_url: str, controller: ControllerProc, edge: Edge, enroll: Enroll) -> None:
    ident = await enroll()
    ws = await logged_in(ws_url, controller.token)
    try:
        await send(ws, {"t": "subscribe", "id": "sub1", "b": {"topics": ["nodes"]}})
        snapshot = await json_recv(ws)  # the current state first, then events
        assert snapshot["t"] == "snapshot" and snapshot["re"] == "sub1"
        assert snapshot["b"]["topic"] == "nodes"
        assert [n["node_id"] for n in snapshot["b"]["data"]] == [ident.node_id]
        assert snapshot["b"]["data"][0]["liveness"] == "offline"
        subscribed = await json_recv(ws)
        assert subscribed["t"] == "subscribed" and subscribed["re"] == "sub1"
        assert subscribed["b"]["topics"] == ["nodes"]
        before_ms = time.time() * 1000
        client = await edge.session(ident)
        assert client.welcome is not None
        event = await next_event(ws, "session.opened")
        assert before_ms <= event["at_ms"] <= time.time() * 1000  # when it was published
        assert event["topic"] == "nodes"
        assert event["data"]["node_id"] == ident.node_id
        assert event["data"]["session_id"] == client.welcome.b["session_id"]
        assert event["data"]["liveness"] == "online"

        await client.send(Frame(t="edge.goodbye", b={"reason": "bye"}))
        assert (await client.expect_close()).code == 1000
        closed = await next_event(ws, "session.closed")
        assert closed["data"]["node_id"] == ident.node_id
        assert closed["data"]["reason"] == "goodbye"
        assert closed["data"]["liveness"] == "offline"
    finally:
        await ws.close()


async def test_a_command_topic_pushes_the_delivered_state(
        ws_url: str, controller: ControllerProc, edge: Edge, enroll: Enroll,
        api: httpx.AsyncClient) -> None:
    ident = await enroll()
    client = await edge.session(ident)
    resp = await api.post(f"/api/v1/nodes/{ident.node_id}/commands",
                          json={"kind": "diag.ping", "args": {}})
    assert resp.status_code == 202
    command_id = resp.json()["command_id"]
    ws = await logged_in(ws_url, controller.token)
    try:
        await send(ws, {"t": "subscribe", "id": "s", "b": {"topics": [f"command:{command_id}"]}})
        snapshot = await json_recv(ws)
        assert snapshot["t"] == "snapshot"
        assert snapshot["b"]["data"]["command_id"] == command_id
        assert (await json_recv(ws))["t"] == "subscribed"
        deliver = await client.recv_type("cmd.deliver")
        await client.send(Frame(t="edge.ack", b={"acks": {"cmd": deliver.q}}))
        event = await next_event(ws, "command.updated")
        assert event["topic"] == f"command:{command_id}"
        assert event["data"]["state"] == "delivered"
        assert event["data"]["command_id"] == command_id
    finally:
        await ws.close()


async def test_subscribing_to_a_bad_topic_gets_an_error_frame_and_stays_open(
        ws_url: str, controller: ControllerProc) -> None:
    ws = await logged_in(ws_url, controller.token)
    try:
        for i, topics in enumerate((["bogus"], "nodes", [1], None)):
            await send(ws, {"t": "subscribe", "id": f"bad{i}", "b": {"topics": topics}})
            err = await json_recv(ws)
            assert err["t"] == "error", err
            assert err["re"] == f"bad{i}"
            assert isinstance(err["b"]["code"], str) and err["b"]["code"]
            assert isinstance(err["b"]["message"], str) and err["b"]["message"]
        await send(ws, {"t": "subscribe", "id": "good", "b": {"topics": ["nodes"]}})
        assert (await json_recv(ws))["t"] == "snapshot"
        ok = await json_recv(ws)
        assert ok["t"] == "subscribed" and ok["re"] == "good"
    finally:
        await ws.close()


async def test_an_unknown_frame_type_gets_an_unknown_type_error(
        ws_url: str, controller: ControllerProc) -> None:
    ws = await logged_in(ws_url, controller.token)
    try:
        await send(ws, {"t": "x.what", "id": "w1"})
        err = await json_recv(ws)
        assert err["t"] == "error" and err["re"] == "w1"
        assert err["b"]["code"] == "unknown_type"
    finally:
        await ws.close()
