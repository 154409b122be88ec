"""controller/wsproto.py: uvicorn's protocol without the handshake it would keep for the
connection's life — released after the accept, and the connection works on as before
(a real uvicorn server on loopback, a real websockets client)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tether.controller.wsproto import (
    FRAME_MESSAGE,
    LeanWebSocketProtocol,
    frame_text,
    frame_writer,
    text_frame,
)


@contextlib.asynccontextmanager
async def serving(app: Any, **config: Any) -> AsyncIterator[int]:
    """``app`` on a real uvicorn with LeanWebSocketProtocol on loopback: yields its port."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0,
                                           ws=LeanWebSocketProtocol, lifespan="off",
                                           log_level="warning", **config))
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.01)
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await task


async def test_the_handshake_is_released_and_the_connection_still_echoes_and_closes() -> None:
    seen: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        assert (await receive())["type"] == "websocket.connect"
        proto = send.__self__
        seen["before"] = (proto.request is not None, proto.response is not None)
        await send({"type": "websocket.accept", "subprotocol": "tether.v1.msgpack"})
        seen["after"] = (proto.request, proto.response)
        message = await receive()
        await send({"type": "websocket.send", "bytes": message["bytes"] * 2})
        await send({"type": "websocket.close", "code": 4401, "reason": "bye"})

    async with serving(app) as port:
        async with connect(f"ws://127.0.0.1:{port}/",
                           subprotocols=["tether.v1.msgpack"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "tether.v1.msgpack"
            await ws.send(b"ab")
            assert await ws.recv() == b"abab"
            try:
                await ws.recv()
                raise AssertionError("expected the server's close")
            except ConnectionClosed as exc:
                assert exc.rcvd is not None and exc.rcvd.code == 4401
        assert seen["before"] == (True, True)
        assert seen["after"] == (None, None)


async def test_prebuilt_frames_reach_the_client_in_order_with_the_ordinary_sends() -> None:
    """A frame built once (text_frame) is written as it is, synchronously (write_frame)
    and through the ASGI message; ordinary sends interleave in order; after the close
    write_frame writes nothing and says so."""
    seen: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        writer = frame_writer(scope)
        assert writer is not None
        big = "x" * 70_000  # the 8-byte length form
        seen["direct"] = writer.write_frame(text_frame("one"))
        await send({"type": "websocket.send", "text": "two"})
        await send({"type": FRAME_MESSAGE, "frame": text_frame(big)})
        seen["direct2"] = writer.write_frame(text_frame("é" * 200))  # the 2-byte form
        await send({"type": "websocket.close", "code": 1000})
        seen["after_close"] = writer.write_frame(text_frame("late"))

    async with serving(app, ws_per_message_deflate=False) as port:
        got = []
        async with connect(f"ws://127.0.0.1:{port}/", max_size=None) as ws:
            try:
                while True:
                    got.append(await ws.recv())
            except ConnectionClosed:
                pass
        assert got == ["one", "two", "x" * 70_000, "é" * 200]
        assert seen == {"direct": True, "direct2": True, "after_close": False}


async def test_no_frame_writer_is_offered_on_a_compressed_connection() -> None:
    """permessage-deflate negotiated: a prebuilt frame would be wrong on the wire, so the
    endpoint is offered none (browser.py then sends text)."""
    offered: list[object] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        offered.append(frame_writer(scope))
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "plain"})
        await send({"type": "websocket.close", "code": 1000})

    async with serving(app, ws_per_message_deflate=True) as port:
        async with connect(f"ws://127.0.0.1:{port}/", compression="deflate") as ws:
            assert await ws.recv() == "plain"
        assert offered == [None]


def test_frame_text_reads_back_what_text_frame_built_at_every_length_form() -> None:
    for n in (0, 1, 125, 126, 65_535, 65_536, 200_000):
        assert frame_text(text_frame("y" * n)) == "y" * n
