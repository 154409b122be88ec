"""LocalRouter end to end: a controller served in this process (uvicorn on loopback, port
0), a raw edge client that completed the handshake, and the router handing the session a
class E frame, which the client reads off the wire. Anything but class E is refused before
it reaches a session."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tether.controller.app import Controller
from tether.controller.config import ControllerConfig
from tether.controller.server import build_server
from tether.protocol.errors import LocalProtocolError
from tether.protocol.frames import Frame
from tether.protocol.signing import generate_private_key

from .conftest import NET_TIMEOUT_S, Edge, Identity, eventually


class InProcess:
    def __init__(self, controller: Controller, url: str) -> None:
        self.controller = controller
        self.url = url


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[InProcess]:
    config = ControllerConfig(data_dir=tmp_path / "ctl", durability="process", port=0)
    config.data_dir.mkdir(parents=True)
    server = build_server(config)
    task = asyncio.create_task(server.serve(), name="controller-under-test")
    try:
        async with asyncio.timeout(NET_TIMEOUT_S * 2):
            while server.url is None:
                assert not task.done(), "the controller stopped while starting"
                await asyncio.sleep(0.01)
        yield InProcess(server.controller, server.url)
    finally:
        server.should_exit = True
        async with asyncio.timeout(NET_TIMEOUT_S * 3):
            await task


@pytest.fixture
async def session(served: InProcess) -> AsyncIterator[tuple[Edge, Identity]]:
    """An enrolled node with a welcomed raw edge session on the in-process controller."""
    token = served.controller.config.admin_token_path.read_text().strip()
    ident = Identity("n-router", generate_private_key())
    async with httpx.AsyncClient(base_url=served.url, timeout=NET_TIMEOUT_S) as http:
        resp = await http.post("/api/v1/join-tokens", json={"uses": 1},
                               headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 201, resp.text
        resp = await http.post("/v1/edge/enroll", json={
            "join_token": resp.json()["token"], "node_id": ident.node_id,
            "public_key": ident.public_b64})
        assert resp.status_code == 201, resp.text
    edge = Edge(served.url)
    try:
        yield edge, ident
    finally:
        await edge.aclose()


async def test_a_class_e_frame_sent_through_the_router_reaches_the_nodes_session(
        served: InProcess, session: tuple[Edge, Identity]) -> None:
    edge, ident = session
    client = await edge.session(ident)
    router = served.controller.router
    offer = Frame(t="rtc.offer", id="o-1", b={"sdp": "v=0", "peer": "browser-1"})
    assert await router.send(ident.node_id, offer)
    got = await client.recv_type("rtc.offer")
    assert got == offer


async def test_the_router_says_false_for_a_node_without_a_live_session(
        served: InProcess, session: tuple[Edge, Identity]) -> None:
    edge, ident = session
    router = served.controller.router
    assert not await router.send(ident.node_id, Frame(t="rtc.offer", b={}))
    client = await edge.session(ident)
    await client.close()

    async def released() -> bool:
        return served.controller.registry.get(ident.node_id) is None

    await eventually(released, what="the closed session to leave the registry")
    assert not await router.send(ident.node_id, Frame(t="rtc.offer", b={}))


@pytest.mark.parametrize("frame", [
    Frame(t="cmd.deliver", s="cmd", q=1, b={"command_id": "c_1"}),  # class A
    Frame(t="node.resources", b={}),  # class B
    Frame(t="monitor.packet", b={}),  # class C
    Frame(t="edge.welcome", b={}),  # session plumbing
    Frame(t="no.such_type", b={}),  # no class at all
], ids=lambda f: f.t)
async def test_the_router_refuses_any_frame_that_is_not_class_e_before_sending_it(
        served: InProcess, session: tuple[Edge, Identity], frame: Frame) -> None:
    edge, ident = session
    client = await edge.session(ident)
    with pytest.raises(LocalProtocolError, match="only class E"):
        await served.controller.router.send(ident.node_id, frame)
    # nothing reached the node: the next frame it gets is the answer to its own heartbeat
    ack = await client.heartbeat()
    assert ack.t == "edge.heartbeat_ack"
