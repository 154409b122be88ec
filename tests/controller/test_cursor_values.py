"""Issue 11 item 6, the values a cursor can take: a ``cmd`` ack or resume cursor that is not
an integer from 0 to 2^63-1 (negative, bool, float, text, 2^63, 2^64-1) is outside anything
the controller sent, so it is the same protocol error as an ack beyond what was sent
(4400), not a ``bad_frame`` error the session shrugs off."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tether.protocol.frames import Frame

from .conftest import Edge, Identity

Enroll = Callable[..., Awaitable[Identity]]

CURSOR_FRAMES: dict[str, Callable[[Any], Frame]] = {
    "edge.ack": lambda n: Frame(t="edge.ack", b={"acks": {"cmd": n}}),
    "edge.resume": lambda n: Frame(t="edge.resume", b={"acks": {"cmd": n}}),
    "heartbeat": lambda n: Frame(t="edge.heartbeat", id="hb", b={
        "uptime_s": 1.0, "runtime": {"state": "attached"}, "acks": {"cmd": n}}),
}


@pytest.mark.parametrize("value", [-1, True, 1.5, "1", None, 2**63, 2**64 - 1, float("nan")])
@pytest.mark.parametrize("kind", list(CURSOR_FRAMES))
async def test_a_cmd_cursor_that_is_not_a_sequence_number_closes_4400(
        edge: Edge, enroll: Enroll, kind: str, value: Any) -> None:
    ident = await enroll()
    client = await edge.session(ident)
    await client.send(CURSOR_FRAMES[kind](value))
    closed = await client.expect_close()
    assert closed.code == 4400, closed
    assert "acks" in closed.reason, closed.reason


@pytest.mark.parametrize("acks", [[], 0, False, "", None, [["cmd", 1]]])
@pytest.mark.parametrize("kind", ["edge.ack", "edge.resume"])
async def test_an_ack_or_resume_whose_acks_is_not_a_map_closes_4400(
        edge: Edge, enroll: Enroll, kind: str, acks: Any) -> None:
    ident = await enroll()
    client = await edge.session(ident)
    await client.send(Frame(t=kind, b={"acks": acks}))
    assert (await client.expect_close()).code == 4400


async def test_a_cursor_map_with_too_many_streams_closes_4400(edge: Edge, enroll: Enroll) -> None:
    ident = await enroll()
    client = await edge.session(ident)
    await client.send(Frame(t="edge.ack", b={"acks": {f"s{i}": 0 for i in range(100)}}))
    assert (await client.expect_close()).code == 4400
