"""Frame handlers are registered per frame type (gateway.handles): a new frame type is one
registration, a type registered twice fails at import, and a frame reaches its handler only
once the core's handshake table says HANDLE. No sockets: the connection is built as in
test_pending_evt_bytes.py and fed frames directly."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from tether.controller import gateway
from tether.controller.config import ControllerConfig
from tether.controller.gateway import EdgeConnection, handles
from tether.controller.services.metrics import EdgeCounters
from tether.protocol.classes import EVT_STREAM, FRAME_STREAM
from tether.protocol.frames import Frame


def connection() -> EdgeConnection:
    services = SimpleNamespace(config=ControllerConfig(), counters=EdgeCounters())
    return EdgeConnection(SimpleNamespace(client=None), services)  # type: ignore[arg-type]


@pytest.fixture
def probe_type() -> Iterator[tuple[str, list[Frame]]]:
    """A frame type no version speaks, registered for the test and removed after it."""
    seen: list[Frame] = []

    @handles("test.probe")
    async def on_probe(conn: EdgeConnection, frame: Frame) -> None:
        seen.append(frame)

    try:
        yield "test.probe", seen
    finally:
        del gateway._HANDLERS["test.probe"]


def test_every_evt_stream_type_is_handled_by_the_class_a_path() -> None:
    evt_types = [t for t, stream in FRAME_STREAM.items() if stream == EVT_STREAM]
    assert evt_types
    for frame_type in evt_types:
        assert gateway._HANDLERS[frame_type] is EdgeConnection._on_evt


def test_a_frame_type_registered_twice_is_refused() -> None:
    with pytest.raises(ValueError, match=r"edge\.heartbeat"):
        handles("edge.heartbeat")(EdgeConnection._on_ack)
    assert gateway._HANDLERS["edge.heartbeat"] is EdgeConnection._on_heartbeat


async def test_a_new_frame_type_is_one_registration(
        probe_type: tuple[str, list[Frame]]) -> None:
    frame_type, seen = probe_type
    conn = connection()
    conn.core.receive("edge.hello")  # established: the table answers HANDLE
    frame = Frame(t=frame_type, b={"x": 1})
    await conn._on_frame(frame)
    assert seen == [frame]


async def test_a_frame_before_the_hello_never_reaches_its_handler(
        probe_type: tuple[str, list[Frame]]) -> None:
    frame_type, seen = probe_type
    conn = connection()
    with pytest.raises(gateway._Close) as info:
        await conn._on_frame(Frame(t=frame_type, b={}))
    assert info.value.code == 4400
    assert seen == []


async def test_a_frame_after_the_session_ended_never_reaches_its_handler(
        probe_type: tuple[str, list[Frame]]) -> None:
    frame_type, seen = probe_type
    conn = connection()
    conn.core.receive("edge.hello")
    conn.core.closed(4409, "superseded by a newer session", by_peer=False)
    await conn._on_frame(Frame(t=frame_type, b={}))
    assert seen == []
