"""Live edge sessions on this controller: at most one per node (PROTOCOL.md §4).

Invariant: ``claim`` returns the connection it displaced, which the caller must fence and
close with 4409 before the new session is welcomed.
"""

from __future__ import annotations

from typing import Protocol


class LiveSession(Protocol):
    node_id: str
    session_id: str | None
    max_frame: int  # the session's frame cap, both ways (docs/protocol.md §4)

    def wake_downlink(self) -> None: ...

    async def supersede(self) -> None: ...

    async def disable(self) -> None: ...


class SessionRegistry:
    def __init__(self) -> None:
        self._live: dict[str, LiveSession] = {}

    def claim(self, node_id: str, session: LiveSession) -> LiveSession | None:
        old = self._live.get(node_id)
        self._live[node_id] = session
        return old if old is not session else None

    def release(self, node_id: str, session: LiveSession) -> None:
        if self._live.get(node_id) is session:
            del self._live[node_id]

    def get(self, node_id: str) -> LiveSession | None:
        return self._live.get(node_id)

    def all(self) -> list[LiveSession]:
        return list(self._live.values())

    def __len__(self) -> int:
        return len(self._live)
