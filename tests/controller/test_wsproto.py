"""controller/wsproto.py: uvicorn's protocol without the handshake it would keep for the
connection's life — released after the accept, and the connection works on as before
(a real uvicorn server on loopback, a real websockets client)."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tether.controller.wsproto import LeanWebSocketProtocol


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

    config = uvicorn.Config(app, host="127.0.0.1", port=0, ws=LeanWebSocketProtocol,
                            lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
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
    finally:
        server.should_exit = True
        await task
