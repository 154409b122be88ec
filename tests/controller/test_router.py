"""LocalRouter end to end: a controller served in this process (uvicorn on loopback, port
0), a raw edge client that completed the handshake, and the router handing the session a
class E frame, which the client reads off the wire. Anything but class E is refused before
it reaches a session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tether.controller.config import ControllerConfig
from tether.protocol.errors import LocalProtocolError
from tether.protocol.frames import Frame

from .conftest import (
    Edge,
    Identity,
    InProcess,
    enroll_in_process,
    eventually,
    serve_in_process,
)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[InProcess]:
    config = ControllerConfig(data_dir=tmp_path / "ctl", durability="process", port=0)
    async with serve_in_process(config) as served:
        yield served


@pytest.fixture
async def session(served: InProcess) -> AsyncIterator[tuple[Edge, Identity]]:
    """An enrolled node with a welcomed raw edge session on the in-process controller."""
    [ident] = await enroll_in_process(served, "n-router")
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
