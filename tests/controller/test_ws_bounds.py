"""Bounds in bytes on /ws and on what nodes make the controller keep (issue 11 item 3),
against a real controller process: paged snapshots, topic bounds, node events within the
node's byte budget."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection

from tether.protocol.frames import Frame

from ..helpers import ControllerProc
from .conftest import Edge, Identity, browser_connect, json_recv

Enroll = Callable[..., Awaitable[Identity]]
FRAME_LIMIT = 1 << 20  # what a default websockets client accepts, and the contract's cap


async def logged_in(ws_url: str, token: str) -> ClientConnection:
    ws = await browser_connect(ws_url)  # max_size: 1 MiB, the client library's default
    await ws.send(json.dumps({"t": "hello", "b": {"token": token}}))
    assert (await json_recv(ws))["t"] == "welcome"
    return ws


async def snapshot_pages(ws: ClientConnection, topic: str) -> list[dict[str, Any]]:
    """Subscribe to ``topic`` and return its snapshot frames' bodies, in order."""
    await ws.send(json.dumps({"t": "subscribe", "id": "s", "b": {"topics": [topic]}}))
    pages = []
    while True:
        raw = await ws.recv()
        assert isinstance(raw, str) and len(raw.encode()) <= FRAME_LIMIT
        frame = json.loads(raw)
        if frame["t"] == "subscribed":
            return pages
        assert frame["t"] == "snapshot" and frame["re"] == "s", frame["t"]
        pages.append(frame["b"])


def assert_paged(pages: list[dict[str, Any]], topic: str) -> None:
    assert [p["page"] for p in pages] == list(range(len(pages)))
    assert [p["more"] for p in pages] == [True] * (len(pages) - 1) + [False]
    assert all(p["topic"] == topic for p in pages)


async def still_open(ws: ClientConnection) -> None:
    await ws.send(json.dumps({"t": "ping", "id": "p"}))
    while (frame := await json_recv(ws))["t"] != "pong":
        assert frame["t"] == "event", frame
    assert frame["re"] == "p"


def insert(controller: ControllerProc, sql: str, rows: list[tuple[Any, ...]]) -> None:
    """Rows written straight into the running controller's store (faster than enrolling
    10,000 nodes); the controller reads them on the next request."""
    with sqlite3.connect(controller.data_dir / "controller.db", timeout=30) as conn:
        conn.executemany(sql, rows)


async def test_a_nodes_snapshot_of_10000_nodes_arrives_complete_in_pages_and_stays_open(
        controller: ControllerProc, ws_url: str) -> None:
    now = time.time()
    ids = [f"fleet-{i:05d}" for i in range(10_000)]
    insert(controller, "INSERT INTO nodes (node_id, public_key, labels, created_at) "
                       "VALUES (?, ?, ?, ?)",
           [(n, bytes(32), json.dumps({"site": "s" * 40, "rack": n}), now) for n in ids])
    ws = await logged_in(ws_url, controller.token)
    try:
        pages = await snapshot_pages(ws, "nodes")
        assert len(pages) > 1
        assert_paged(pages, "nodes")
        got = [n["node_id"] for p in pages for n in p["data"]]
        assert got == ids  # every node once, in order
        await still_open(ws)
    finally:
        await ws.close()


async def test_a_logs_snapshot_over_1_mib_arrives_complete_in_pages_and_stays_open(
        controller: ControllerProc, ws_url: str, enroll: Enroll,
        api: httpx.AsyncClient) -> None:
    ident = await enroll()
    resp = await api.post(f"/api/v1/nodes/{ident.node_id}/commands",
                          json={"kind": "exec", "args": {"argv": ["true"]}})
    assert resp.status_code == 202, resp.text
    command_id = resp.json()["command_id"]
    chunks = [(f"{i:04d}" + "x" * 65_532).encode() for i in range(40)]  # 2.5 MiB
    insert(controller, "INSERT INTO logs (command_id, node_id, source, seq, data, dropped, "
                       "at) VALUES (?, ?, 'stdout', ?, ?, 0, 0)",
           [(command_id, ident.node_id, i, c) for i, c in enumerate(chunks)])
    ws = await logged_in(ws_url, controller.token)
    try:
        pages = await snapshot_pages(ws, f"logs:{command_id}")
        assert len(pages) > 1
        assert_paged(pages, f"logs:{command_id}")
        items = [i for p in pages for i in p["data"]["items"]]
        assert "".join(i["data"] for i in items).encode() == b"".join(chunks)
        assert [i["seq"] for i in items] == list(range(40))
        await still_open(ws)
    finally:
        await ws.close()


async def test_huge_topic_lists_and_overlong_topics_get_an_error_frame_and_stay_open(
        controller: ControllerProc, ws_url: str) -> None:
    ws = await logged_in(ws_url, controller.token)
    try:
        cases = {"many": ["nodes"] * 50_000, "long": ["node:" + "a" * 20_000],
                 "badid": ["logs:../../etc"], "node": ["monitor:NOT_AN_ID"]}
        for name, topics in cases.items():
            await ws.send(json.dumps({"t": "subscribe", "id": name, "b": {"topics": topics}}))
            err = await json_recv(ws)
            assert err["t"] == "error" and err["re"] == name, err
            assert err["b"]["code"] in ("too_many_topics", "bad_topic"), err
            assert len(err["b"]["message"]) < 400
        await still_open(ws)
    finally:
        await ws.close()


async def test_node_events_are_kept_within_the_nodes_byte_budget_and_the_stream_moves_on(
        controller: ControllerProc, edge: Edge, enroll: Enroll,
        api: httpx.AsyncClient) -> None:
    """The issue's 300 x 1 MB node.event flood, shortened: oversized events are refused,
    accepted ones are pruned oldest-first past 4 MiB, and every frame is acked."""
    ident = await enroll()
    client = await edge.session(ident)
    frames = [("flood", "x" * 1_000_000)] * 5 + [("fill", "y" * 50_000)] * 120
    for q, (kind, blob) in enumerate(frames, start=1):
        await client.send(Frame(t="node.event", s="evt", q=q, id=f"e{q}",
                                b={"kind": kind, "data": {"blob": blob}}))
    deadline = time.monotonic() + 30
    acked = 0
    while acked < len(frames):
        frame = await client.recv(max(0.1, deadline - time.monotonic()))
        if frame.t == "edge.ack":
            acked = frame.b["acks"]["evt"]
    with sqlite3.connect(controller.data_dir / "controller.db", timeout=30) as conn:
        stored = conn.execute("SELECT sum(length(CAST(data AS BLOB))), count(*) FROM "
                              "node_events WHERE node_id=?", (ident.node_id,)).fetchone()
    assert stored[0] <= 4 << 20, f"{stored[0]} bytes of node events kept"
    assert 10 < stored[1] < 125
    resp = await api.get(f"/api/v1/nodes/{ident.node_id}/events", params={"limit": "1000"})
    assert resp.status_code == 200
    assert resp.json()["items"][0]["kind"] == "fill"  # the newest survive
