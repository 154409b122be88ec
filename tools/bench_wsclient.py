"""A lean ``/ws`` client for the fan-out benchmark (``ws_fanout``, bench_fleet.py).

1,000 browsers are 1,000 processes on other machines; the benchmark holds them in one
process on the controller's own box. With the ``websockets`` asyncio client each received
message costs a task wake-up, a future and a full JSON decode, and the load generator, not
the controller, set the measured latency (45 us of the bench's CPU per delivery against
the controller's 18). Here each client is websockets' sans-I/O ``ClientProtocol`` under an
``asyncio.Protocol``: a delivery is one frame parse in ``data_received``, and only the
events the benchmark samples are decoded. Receipt time is taken once per read from the
socket, before any of its frames is looked at.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import urlsplit

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from tether.protocol.codec import JSON_SUBPROTOCOL, decode_json, encode_json
from tether.protocol.frames import Frame as TetherFrame

# (text of one message, receipt time in ms since the epoch)
OnText = Callable[[bytes, float], None]


class LeanWsClient(asyncio.Protocol):
    """One ``/ws`` connection. Until :attr:`on_text` is set, text messages are queued on
    :attr:`inbox` (the hello and subscribe exchange); after, each goes to ``on_text``."""

    def __init__(self, uri: str) -> None:
        self.proto = ClientProtocol(parse_uri(uri), subprotocols=[Subprotocol(JSON_SUBPROTOCOL)],
                                    max_size=None)
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.on_text: OnText | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.proto.send_request(self.proto.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        now_ms = time.time() * 1000
        self.proto.receive_data(data)
        for event in self.proto.events_received():
            if isinstance(event, Response):
                if self.proto.handshake_exc is not None:
                    self.opened.set_exception(self.proto.handshake_exc)
                else:
                    self.opened.set_result(None)
            elif isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                if self.on_text is not None:
                    self.on_text(event.data, now_ms)
                else:
                    self.inbox.put_nowait(event.data)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("connection lost before the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    def send_frame(self, frame: TetherFrame) -> None:
        self.proto.send_text(encode_json(frame).encode())
        self._flush()

    async def recv_frame(self) -> TetherFrame:
        return decode_json(bytes(await self.inbox.get()).decode())

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _flush(self) -> None:
        assert self.transport is not None
        for chunk in self.proto.data_to_send():
            if chunk:
                self.transport.write(chunk)
            elif self.transport.can_write_eof():
                self.transport.write_eof()


async def connect_subscribed(url: str, token: str, *, timeout_s: float = 120
                             ) -> LeanWsClient:
    """A client signed in with ``token`` and subscribed to ``nodes``, its snapshot read."""
    ws_url = url.replace("http", "ws", 1) + "/ws"
    parts = urlsplit(ws_url)
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout_s):
        _, client = await loop.create_connection(lambda: LeanWsClient(ws_url),
                                                 parts.hostname, parts.port)
        try:
            await client.opened
            client.send_frame(TetherFrame(t="hello", b={"token": token}))
            await client.recv_frame()
            client.send_frame(TetherFrame(t="subscribe", b={"topics": ["nodes"]}))
            while (await client.recv_frame()).t != "subscribed":  # the snapshot first
                pass
        except BaseException:
            client.close()
            raise
    return client


def session_sampler(node_id: str, samples: list[float], expected: int,
                    done: Callable[[], None]) -> Callable[[], OnText]:
    """A factory of ``on_text`` callbacks, one per client: each appends the delivery
    latency (ms) of ``node_id``'s ``session.opened`` / ``session.closed`` events to
    ``samples`` and calls ``done`` once it has seen ``expected`` of them. Only messages
    that name the node and a session event are decoded."""
    needle = f'"{node_id}"'.encode()

    def make() -> OnText:
        seen = 0

        def on_text(data: bytes, now_ms: float) -> None:
            nonlocal seen
            if b'"session.' not in data or needle not in data or seen >= expected:
                return
            body: dict[str, Any] = json.loads(data)["b"]
            if (body.get("kind") in ("session.opened", "session.closed")
                    and (body.get("data") or {}).get("node_id") == node_id):
                samples.append(now_ms - float(body["at_ms"]))
                seen += 1
                if seen == expected:
                    done()
        return on_text
    return make
