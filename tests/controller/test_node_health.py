"""A node's health report (readiness tree and recent incidents, ``node.event`` kind
``health``) reaches ``GET /api/v1/nodes/{id}`` and ``/ws`` ``node:<id>``; a hostile one is
a poison frame and changes nothing. A raw msgpack node against a real controller."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from tether.protocol.frames import Frame

from ..helpers import ControllerProc
from .conftest import Edge, Identity, browser_connect, json_recv

REPORT: dict[str, Any] = {
    "at_ms": 1_700_000_000_000, "ready": False,
    "reasons": ["1 incident(s) in the last 30 s"],
    "checks": {"transport": {"ok": True, "state": "connected"},
               "store": {"ok": False, "state": "error", "detail": "<img src=x onerror=1>"}},
    "incidents": [{"at_ms": 1_699_999_999_000, "class": "transport",
                   "message": "<script>alert(1)</script>", "close_code": 1006}],
    "incidents_total": 1}


def health(q: int, data: Any) -> Frame:
    return Frame(t="node.event", s="evt", q=q, id=f"h{q}", b={"kind": "health", "data": data})


async def test_a_health_report_is_served_with_the_node_and_pushed_live(
        edge: Edge, enroll: Callable[..., Awaitable[Identity]], api: httpx.AsyncClient,
        ws_url: str, controller: ControllerProc) -> None:
    ident = await enroll()
    client = await edge.session(ident)
    assert (await api.get(f"/api/v1/nodes/{ident.node_id}")).json()["health"] is None
    ws = await browser_connect(ws_url)
    await ws.send(json.dumps({"t": "hello", "id": "h", "b": {"token": controller.token}}))
    assert (await json_recv(ws))["t"] == "welcome"
    await ws.send(json.dumps({"t": "subscribe", "id": "s",
                              "b": {"topics": [f"node:{ident.node_id}"]}}))
    while (await json_recv(ws))["t"] != "subscribed":
        pass

    await client.send(health(1, {**REPORT, "unknown": [1, 2]}))
    assert (await client.recv_type("edge.ack")).b["acks"]["evt"] == 1
    while (event := await json_recv(ws))["b"].get("kind") != "health.updated":
        pass
    assert event["b"]["data"] == {"node_id": ident.node_id, "health": REPORT}
    view = (await api.get(f"/api/v1/nodes/{ident.node_id}")).json()
    assert view["health"] == REPORT  # unknown keys dropped, the texts kept as text
    listed = (await api.get("/api/v1/nodes")).json()
    assert all("health" not in n for n in listed["items"])  # lists stay small

    hostile = {**REPORT, "ready": "yes", "incidents": [{"at_ms": "soon"}] * 50}
    await client.send(health(2, hostile))
    await client.send(health(3, {**REPORT, "checks": {"x" * 100: {}}}))
    errors = {}
    while len(errors) < 2:
        frame = await client.recv()
        if frame.t == "error":
            errors[frame.re] = frame.b["code"]
    assert errors == {"h2": "poison_frame", "h3": "poison_frame"}
    assert (await api.get(f"/api/v1/nodes/{ident.node_id}")).json()["health"] == REPORT
    await ws.close()
