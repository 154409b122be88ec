"""What the controller's JSON WebSocket endpoints for operators share (``/ws``,
browser.py; the shell and io streams, api/io.py): reading one client frame, bounded in time
and bytes and parsed at the boundary, and the close a bad one earns.

Rule: :func:`receive_json` returns the parsed frame, or None when the client went away;
anything else is a :class:`WsClose` naming the close code the contract gives it (4408 for
silence past the deadline, 4400 for a binary or malformed frame, 1009 over the byte
limit). The endpoint that catches it closes the socket with that code.
"""

from __future__ import annotations

import asyncio

from starlette.websockets import WebSocket

from tether.protocol.codec import JSON_SUBPROTOCOL, decode_json
from tether.protocol.errors import BadFrame, CloseCode, FrameTooLarge
from tether.protocol.frames import Frame


class WsClose(Exception):
    """End the connection with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


async def receive_json(ws: WebSocket, timeout_s: float | None, max_bytes: int
                       ) -> Frame | None:
    """The client's next frame within ``timeout_s`` (None: no deadline), at most
    ``max_bytes``; None once the client went away. Raises WsClose (module docstring)."""
    try:
        async with asyncio.timeout(timeout_s):
            msg = await ws.receive()
    except TimeoutError:
        raise WsClose(CloseCode.TIMEOUT, f"nothing received for {timeout_s:g} s") from None
    if msg["type"] == "websocket.disconnect":
        return None
    text = msg.get("text")
    if text is None:
        raise WsClose(CloseCode.PROTOCOL_ERROR,
                      f"binary frames are not allowed on {JSON_SUBPROTOCOL}")
    try:
        return decode_json(text, max_frame_bytes=max_bytes)
    except FrameTooLarge as exc:
        raise WsClose(CloseCode.FRAME_TOO_LARGE, exc.message) from None
    except BadFrame as exc:
        raise WsClose(CloseCode.PROTOCOL_ERROR, exc.message) from None
