"""``tether diag route`` is for when a node misbehaves, so what that node answers to its
``diag.ping`` is a peer's data: a result without the hop timestamps, or with text or
booleans where numbers belong, makes that ping a lost one at the node with the reason,
never a KeyError or TypeError out of the tool. Found replaying issue 11's attacks: a raw
node answering ``result: {}`` killed ``diag route`` with a traceback."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tether.protocol.frames import Frame
from tether.protocol.signing import generate_private_key
from tether.tools.diag.route import route, route_table

from ..controller.conftest import Edge, Identity
from ..helpers import ControllerProc


async def enrolled(controller: ControllerProc) -> Identity:
    ident = Identity("n-hostile-ping", generate_private_key())
    async with httpx.AsyncClient(base_url=controller.url, timeout=5) as client:
        token = (await client.post("/api/v1/join-tokens", json={"uses": 1}, headers={
            "Authorization": f"Bearer {controller.token}"})).json()["token"]
        resp = await client.post("/v1/edge/enroll", json={
            "join_token": token, "node_id": ident.node_id, "public_key": ident.public_b64,
            "labels": {}})
        assert resp.status_code == 201, resp.text
    return ident


@pytest.mark.parametrize("result", [
    {}, {"received_ms": "soon", "sent_ms": 1}, {"received_ms": True, "sent_ms": False},
    {"received_ms": 1.0, "sent_ms": 2.0, "created_ms": "x"}, {"received_ms": [1]},
], ids=["empty", "text", "bools", "created text", "list"])
async def test_a_ping_answered_with_a_result_that_is_not_timestamps_is_lost_at_the_node(
        controller: ControllerProc, result: dict[str, Any]) -> None:
    ident = await enrolled(controller)
    edge = Edge(controller.url)
    try:
        node = await edge.session(ident)

        async def answer() -> None:  # a node that answers every diag.ping with `result`
            q = 0
            while True:
                deliver = await node.recv_type("cmd.deliver", timeout_s=30)
                await node.send(Frame(t="edge.ack", b={"acks": {"cmd": deliver.q}}))
                q += 1
                await node.send(Frame(t="cmd.status", s="evt", q=q, id=f"st-{q}", b={
                    "command_id": deliver.b["command_id"], "state": "succeeded",
                    "result": result}))

        answering = asyncio.create_task(answer())
        try:
            out = await route(controller.url, controller.token, ident.node_id, count=2,
                              interval_s=0.01)
        finally:
            answering.cancel()
    finally:
        await edge.aclose()
    assert out["ok"] is False
    assert [p["lost"] for p in out["pings"]] == [True, True], out
    assert all(p["lost_at"] == "node" and "diag.ping result" in p["why"]
               for p in out["pings"]), out


def test_the_route_table_shows_a_nodes_error_escaped() -> None:
    result = {"pings": [{"seq": 0, "lost": True, "lost_at": "node", "state": "failed",
                         "why": "the node ended it failed: \x1b]0;pwn\x07\x1b[2J"}],
              "summary": {"answered_by": "nobody: \x1b[2Jgone\nline"}}
    table = route_table(result)
    assert "\x1b" not in table and "\x07" not in table, table
    assert "\\x1b[2Jgone\\nline" in table and table.count("\n") == 1, table
