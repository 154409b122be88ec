"""The WebSocket protocol class the controller's uvicorn runs: uvicorn's own
``websockets-sansio`` implementation, minus the handshake it keeps for the connection's
lifetime.

uvicorn stores the upgrade request and the 101 response on the protocol object
(``request``, ``response``) and reads neither once the handshake is done. With their
headers that is about 3 KiB per connection, 12% of an idle edge session; at 10,000
sessions, 30 MiB. Releasing them after the accept is the only change. If a uvicorn release
renames these attributes, nothing breaks: the memory is simply kept again (the benchmark's
``sessions`` row shows it).
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


class LeanWebSocketProtocol(WebSocketsSansIOProtocol):
    async def send(self, message: Any) -> None:
        await super().send(message)
        if message.get("type") == "websocket.accept" and self.handshake_complete:
            for name in ("request", "response"):
                if hasattr(self, name):
                    setattr(self, name, None)
