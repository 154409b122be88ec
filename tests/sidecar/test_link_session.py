"""The sidecar's link acts on what the node session core returns, seen from a scripted
controller on loopback: a phase deadline closes with 4408, a frame the table refuses with
4400, the controller's goodbye with 1000, and each session's end is recorded once."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.asyncio.server import ServerConnection, serve

from tether.protocol.codec import MSGPACK_SUBPROTOCOL, decode_msgpack, encode_msgpack
from tether.protocol.frames import Challenge, Frame, Heartbeat, Welcome
from tether.sidecar.transport import ControllerLink, HelloState, LinkStatus

DEADLINE_S = 10.0

Script = Callable[[ServerConnection], Awaitable[None]]


class Handler:
    def __init__(self) -> None:
        self.welcomes: list[Welcome] = []
        self.frames: list[Frame] = []
        self.disconnects = 0

    async def hello_state(self) -> HelloState:
        return HelloState(epoch=1, cmd_applied=0, session_id=None, runtime={})

    def heartbeat_body(self) -> Heartbeat:
        return Heartbeat(uptime_s=1.0)

    async def on_welcome(self, welcome: Welcome) -> None:
        self.welcomes.append(welcome)

    async def on_frame(self, frame: Frame) -> None:
        self.frames.append(frame)

    async def on_disconnected(self) -> None:
        self.disconnects += 1


def challenge() -> bytes:
    return encode_msgpack(Challenge(nonce=os.urandom(32), controller_id="ctl-test",
                                    time_ms=int(time.time() * 1000)).frame())


def welcome(**overrides: Any) -> bytes:
    return encode_msgpack(Welcome(session_id="s-1", resumed=False, epoch=1, acks={},
                                  **overrides).frame())


@asynccontextmanager
async def one_session(script: Script) -> AsyncIterator[tuple[Handler, list[Any], LinkStatus]]:
    """A link dialling a controller that runs ``script`` on its first connection; yields
    once that session ended, with what the controller saw: the frame types it received and
    the close code and reason the link sent."""
    seen: list[Any] = []
    ended = asyncio.Event()

    async def controller(ws: ServerConnection) -> None:
        if seen:  # only the first session is scripted; later dials wait to be cancelled
            await ws.wait_closed()
            return
        seen.append([])
        try:
            await script(ws)
            async for data in ws:
                seen[0].append(decode_msgpack(data).t)  # type: ignore[arg-type]
        finally:
            seen.extend([ws.close_code, ws.close_reason])

    def on_status(status: LinkStatus) -> None:
        if status.state == "disconnected" and status.reconnects == 0 and seen:
            ended.set()

    handler = Handler()
    async with serve(controller, "127.0.0.1", 0,
                     subprotocols=[MSGPACK_SUBPROTOCOL]) as server:  # type: ignore[list-item]
        port = server.sockets[0].getsockname()[1]
        link = ControllerLink(controller_url=f"http://127.0.0.1:{port}", node_id="n-1",
                              key=Ed25519PrivateKey.generate(), handler=handler,
                              handshake_timeout_s=0.3, rng=random.Random(7),
                              on_status=on_status)
        task = asyncio.create_task(link.run())
        try:
            async with asyncio.timeout(DEADLINE_S):
                await ended.wait()
                while len(seen) < 3:  # the controller's side has seen the close too
                    await asyncio.sleep(0.01)
            yield handler, seen, link.status
        finally:
            link.stop()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def silent(ws: ServerConnection) -> None:
    pass


async def test_no_challenge_in_time_closes_with_4408_and_records_the_end_once() -> None:
    async with one_session(silent) as (handler, seen, status):
        assert seen == [[], 4408, "nothing from the controller for 0.3 s"]
        assert (status.last_close_code, status.last_close_reason) == (
            4408, "nothing from the controller for 0.3 s")
        assert handler.disconnects == 1 and handler.welcomes == []


async def test_no_welcome_in_time_after_the_hello_closes_with_4408() -> None:
    async def challenge_only(ws: ServerConnection) -> None:
        await ws.send(challenge())

    async with one_session(challenge_only) as (handler, seen, status):
        assert seen == [["edge.hello"], 4408, "nothing from the controller for 0.3 s"]
        assert status.last_close_code == 4408 and handler.disconnects == 1


async def test_a_first_frame_other_than_the_challenge_closes_with_4400() -> None:
    async def welcome_first(ws: ServerConnection) -> None:
        await ws.send(welcome())

    async with one_session(welcome_first) as (handler, seen, status):
        assert seen[:2] == [[], 4400]
        assert "await_challenge" in seen[2] and status.last_close_code == 4400
        assert handler.welcomes == [] and handler.disconnects == 1


async def test_the_controllers_goodbye_closes_with_1000_after_the_frames_before_it() -> None:
    async def welcome_then_goodbye(ws: ServerConnection) -> None:
        await ws.send(challenge())
        decode_msgpack(await ws.recv())  # type: ignore[arg-type]
        await ws.send(welcome())
        await ws.send(encode_msgpack(Frame(t="edge.ack", b={"acks": {"evt": 0}})))
        await ws.send(encode_msgpack(Frame(t="edge.goodbye", b={"reason": "bye"})))
        await ws.send(encode_msgpack(Frame(t="edge.ack", b={"acks": {"evt": 0}})))

    async with one_session(welcome_then_goodbye) as (handler, seen, status):
        assert seen[1:] == [1000, "controller said goodbye"]
        assert (status.last_close_code, status.last_close_reason) == (
            1000, "controller said goodbye")
        assert [w.session_id for w in handler.welcomes] == ["s-1"]
        assert [f.t for f in handler.frames] == ["edge.ack"]  # none after the goodbye
        assert handler.disconnects == 1


async def test_a_controller_closing_the_session_is_recorded_with_its_code() -> None:
    async def close_4401(ws: ServerConnection) -> None:
        await ws.send(challenge())
        await ws.recv()
        await ws.close(4401, "bad signature")

    async with one_session(close_4401) as (handler, seen, status):
        assert seen[0] == []  # the hello was read by the script itself
        assert (status.last_close_code, status.last_close_reason) == (4401, "bad signature")
        assert handler.disconnects == 1
