"""The session router: reach a node's live session, wherever it is served.

Callers (the command service, routes, later the media plane's signalling) name a node, never
a connection: the router finds the session that holds the node and hands it something.
:class:`LocalRouter` finds it in this process's :class:`~.registry.SessionRegistry`; a
cross-process router (NATS) implements the same :class:`Router`, which is why nothing here
returns a live object and every answer is a value.

Rule: :meth:`Router.send` carries class E frames only (PROTOCOL.md §3: ephemeral, meaningful
only while both ends are connected, never stored or replayed). Anything that must not be
lost goes through the store and a :meth:`Router.nudge`.
"""

from __future__ import annotations

from typing import Protocol

from tether.protocol.classes import DeliveryClass, delivery_class
from tether.protocol.errors import LocalProtocolError
from tether.protocol.frames import Frame

from .peek import NodePeek, PeekRequest, PeekSource
from .registry import SessionRegistry


class Router(Protocol):
    def nudge(self, node_id: str) -> None:
        """There is new downlink work for ``node_id`` (a command or a control was queued in
        the store): its session, if any, reads the outbox. A nudge that finds no session is
        dropped; the next session replays the outbox from its cursor anyway."""
        ...

    async def send(self, node_id: str, frame: Frame) -> bool:
        """Hand a class E ``frame`` to the node's live session. False when no live session
        holds the node (or it closed before the frame was written). Raises
        LocalProtocolError, before anything is sent, for a frame of any other class."""
        ...

    async def disable(self, node_id: str) -> bool:
        """The operator disabled ``node_id``: its live session, if any, is closed (4403).
        False when no live session held it."""
        ...

    async def supersede(self, node_id: str, session_id: str) -> bool:
        """A newer session took ``node_id`` in the store (its hello fenced ``session_id``
        there): the live session that is exactly ``session_id``, wherever it is served, is
        closed with 4409. False when no live session is that one (it ended already, or a
        newer one holds the node: that one is never touched)."""
        ...


def check_ephemeral(frame: Frame) -> None:
    """Raise LocalProtocolError unless ``frame`` is class E (PROTOCOL.md §3)."""
    cls = delivery_class(frame.t)
    if cls is not DeliveryClass.E:
        raise LocalProtocolError(
            f"only class E frames can be sent to a session directly; {frame.t!r} is "
            f"{'of no known class' if cls is None else f'class {cls.value}'}")


class LocalRouter:
    """:class:`Router` over the sessions of this process. ``peek`` reads what this process
    holds in memory for a node (services/peek.py); without it :meth:`peek` answers None."""

    def __init__(self, registry: SessionRegistry, peek: PeekSource | None = None) -> None:
        self._registry = registry
        self._peek = peek

    def nudge(self, node_id: str) -> None:
        session = self._registry.get(node_id)
        if session is not None:
            session.wake_downlink()

    async def send(self, node_id: str, frame: Frame) -> bool:
        check_ephemeral(frame)
        session = self._registry.get(node_id)
        if session is None:
            return False
        return await session.send_ephemeral(frame)

    async def disable(self, node_id: str) -> bool:
        session = self._registry.get(node_id)
        if session is None:
            return False
        await session.disable()
        return True

    async def supersede(self, node_id: str, session_id: str) -> bool:
        session = self._registry.get(node_id)
        if session is None or session.session_id != session_id:
            return False
        await session.supersede()
        return True

    async def peek(self, node_id: str, request: PeekRequest) -> NodePeek | None:
        """What this process holds in memory for ``node_id`` (its live session, its monitor
        packets when asked); None when no session here holds it (services/peek.py Rule 1)."""
        if self._peek is None or self._registry.get(node_id) is None:
            return None
        return self._peek(node_id, request)
