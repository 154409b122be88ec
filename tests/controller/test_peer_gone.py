"""A peer that goes away while the controller still owes it frames is an ordinary end of
the session, never an internal error: no ERROR line, no traceback, no 1011 in the session
history. Found replaying issue 11's attacks: a node that sent bad frames and closed at
once made the downlink send its ``bad_frame`` errors into a closed socket, which raised
starlette's WebSocketDisconnect (not an OSError), and the session ended "failed" with 1011."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import httpx

from tether.protocol.frames import Frame

from ..helpers import ControllerProc
from .conftest import Edge, Identity, browser_connect, eventually, json_recv

Enroll = Callable[..., Awaitable[Identity]]


def bad_resources(i: int) -> Frame:
    # cpu_percent NaN: a bad class B body, answered with an error frame the node never reads
    return Frame(t="node.resources", id=f"r-{i}", b={"cpu_percent": float("nan")})


async def test_a_node_that_closes_while_owed_error_frames_ends_its_session_cleanly(
        controller: ControllerProc, api: httpx.AsyncClient, edge: Edge, enroll: Enroll) -> None:
    ident = await enroll()
    rounds = 8
    for epoch in range(1, rounds + 1):
        client = await edge.session(ident, epoch=epoch)
        for i in range(200):
            await client.send(bad_resources(i))
        await client.close()  # gone while its error frames are still owed

    async def all_closed() -> list[int] | None:
        resp = await api.get(f"/api/v1/nodes/{ident.node_id}/sessions")
        assert resp.status_code == 200, resp.text
        codes = [s.get("close_code") for s in resp.json()["items"]]
        return codes if len(codes) == rounds and None not in codes else None

    codes = await eventually(all_closed, what="every session closed")
    assert 1011 not in codes, codes
    log = controller.log()
    assert "edge session failed" not in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]


async def test_a_browser_that_closes_during_its_snapshot_leaves_no_traceback(
        controller: ControllerProc, ws_url: str) -> None:
    # The /ws endpoint only caught OSError/RuntimeError: a snapshot sent into a closed
    # socket raised WebSocketDisconnect out of the endpoint ("Exception in ASGI application").
    for _ in range(20):
        ws = await browser_connect(ws_url)
        await ws.send(json.dumps({"v": 1, "t": "hello", "id": "h",
                                  "b": {"token": controller.token}}))
        assert (await json_recv(ws))["t"] == "welcome"
        await ws.send(json.dumps({"v": 1, "t": "subscribe", "id": "s",
                                  "b": {"topics": ["nodes", "commands:n1", "node:n1"]}}))
        await ws.close()

    async def settled() -> bool:  # a last hello answered: every earlier client was served
        ws = await browser_connect(ws_url)
        try:
            await ws.send(json.dumps({"v": 1, "t": "hello", "id": "h",
                                      "b": {"token": controller.token}}))
            return (await json_recv(ws))["t"] == "welcome"
        finally:
            await ws.close()

    await eventually(settled, what="the /ws endpoint answering")
    log = controller.log()
    assert "Exception in ASGI application" not in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
