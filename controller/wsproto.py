"""The WebSocket protocol class the controller's uvicorn runs: uvicorn's own
``websockets-sansio`` implementation, minus the handshake it keeps for the connection's
lifetime.

uvicorn stores the upgrade request and the 101 response on the protocol object
(``request``, ``response``) and reads neither once the handshake is done. With their
headers that is about 3 KiB per connection, 12% of an idle edge session; at 10,000
sessions, 30 MiB. Releasing them after the accept is the only change. If a uvicorn release
renames these attributes, nothing breaks: the memory is simply kept again (the benchmark's
``sessions`` row shows it).

One addition, for the ``/ws`` fan-out (browser.py): a frame built once (:func:`text_frame`)
is written as it is to every client, so an event fanned out to 1,000 browsers is encoded
and framed once, not 1,000 times; and while a client's transport takes more, the publisher
writes it at once (:meth:`LeanWebSocketProtocol.write_frame`, synchronous) instead of
waking a task per client. The protocol object is offered in ``scope["extensions"]`` under
:data:`FRAME_MESSAGE` only on a connection with no WebSocket extension negotiated (a
compressed connection needs its own framing); an endpoint uses it only when offered
(:func:`frame_writer`). Either way the flow control and the close state are honoured as
for ``websocket.send``: ``write_frame`` writes nothing (returns False) while the transport
is paused or the connection closing, and the ASGI message ``{"type": FRAME_MESSAGE,
"frame": ...}`` waits for the transport as ``websocket.send`` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode

FRAME_MESSAGE = "tether.websocket.frame"  # {"type": FRAME_MESSAGE, "frame": bytes}


class FrameWriter(Protocol):
    def write_frame(self, frame: bytes) -> bool: ...


def text_frame(text: str) -> bytes:
    """``text`` as one unmasked, uncompressed WebSocket text frame (server to client)."""
    return Frame(Opcode.TEXT, text.encode()).serialize(mask=False, extensions=[])


def frame_text(frame: bytes) -> str:
    """The text a :func:`text_frame` carries (for a server that does not take frames)."""
    n = frame[1] & 0x7F
    return frame[2 if n < 126 else 4 if n == 126 else 10:].decode()


def frame_writer(scope: Mapping[str, Any]) -> FrameWriter | None:
    """The connection's frame writer, when the server under it offers one (it then also
    takes the :data:`FRAME_MESSAGE` ASGI message)."""
    return (scope.get("extensions") or {}).get(FRAME_MESSAGE)


class LeanWebSocketProtocol(WebSocketsSansIOProtocol):
    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # only an accepted upgrade has one
        if scope is not None and not self.conn.extensions:
            # the object itself: no allocation per connection (10,000 edge sessions)
            scope["extensions"][FRAME_MESSAGE] = self

    def write_frame(self, frame: bytes) -> bool:
        """Write a :func:`text_frame` now, if the connection is open and its transport is
        not paused (flow control); else write nothing and return False. Never raises."""
        if (self.disconnected or self.close_sent or not self.handshake_complete
                or not self.writable.is_set() or self.transport.is_closing()):
            return False
        self.transport.write(frame)
        return True

    async def send(self, message: Any) -> None:
        if message.get("type") == FRAME_MESSAGE:
            await self.writable.wait()  # the transport's flow control, as for any send
            if self.disconnected or self.close_sent:
                raise ClientDisconnected()
            self.transport.write(message["frame"])
            return
        await super().send(message)
        if message.get("type") == "websocket.accept" and self.handshake_complete:
            for name in ("request", "response"):
                if hasattr(self, name):
                    setattr(self, name, None)
