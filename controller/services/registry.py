"""Live edge sessions on this controller: at most one per node (PROTOCOL.md §4).

Invariant: ``claim`` returns the connection it displaced, which the caller must fence and
close with 4409 before the new session is welcomed.

The registry is this process's :class:`~.presence.Presence`: it answers with each session's
:meth:`LiveSession.snapshot`, a value, so readers never hold a connection.
"""

from __future__ import annotations

from typing import Protocol

from tether.protocol.frames import Frame

from .presence import SessionSnapshot


class LiveSession(Protocol):
    node_id: str
    session_id: str | None
    max_frame: int  # the session's frame cap, both ways (docs/protocol.md §4)

    def wake_downlink(self) -> None: ...

    async def send_ephemeral(self, frame: Frame) -> bool: ...

    async def supersede(self) -> None: ...

    async def disable(self) -> None: ...

    def snapshot(self) -> SessionSnapshot: ...


class RegistryObserver(Protocol):
    """Told when this process starts or stops holding a node (a cross-process router
    subscribes to the node's subjects). Called synchronously from :meth:`SessionRegistry.claim`
    and :meth:`SessionRegistry.release`: must return at once and never raise."""

    def held(self, node_id: str) -> None: ...

    def released(self, node_id: str) -> None: ...


class SessionRegistry:
    def __init__(self) -> None:
        self._live: dict[str, LiveSession] = {}
        self._observers: list[RegistryObserver] = []

    def observe(self, observer: RegistryObserver) -> None:
        """Tell ``observer`` of every node held or released from now on (not of those held
        already: it reads :meth:`all` for those)."""
        self._observers.append(observer)

    def claim(self, node_id: str, session: LiveSession) -> LiveSession | None:
        old = self._live.get(node_id)
        self._live[node_id] = session
        if old is None:
            for observer in self._observers:
                observer.held(node_id)
        return old if old is not session else None

    def release(self, node_id: str, session: LiveSession) -> None:
        if self._live.get(node_id) is session:
            del self._live[node_id]
            for observer in self._observers:
                observer.released(node_id)

    def get(self, node_id: str) -> LiveSession | None:
        return self._live.get(node_id)

    def all(self) -> list[LiveSession]:
        return list(self._live.values())

    def snapshot(self, node_id: str) -> SessionSnapshot | None:
        """:class:`~.presence.Presence`: the node's live session as a value, or None."""
        session = self._live.get(node_id)
        return None if session is None else session.snapshot()

    def __len__(self) -> int:
        return len(self._live)
