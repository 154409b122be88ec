"""One edge session's handshake, either side, with no I/O (PROTOCOL.md §4-5).

:class:`SessionCore` steps :func:`~tether.protocol.handshake.step` for every event of one
role's table (frames, the phase's timeout, the transport's close) and turns the ending actions
into the effects its shell executes: :class:`Close` the transport, record the :class:`End`.
The controller's :class:`~tether.protocol.edge_session.EdgeSession` adds its streams to it;
:class:`NodeSession` is the node's side as the sidecar's link drives it.

Rule 1: every event goes through the table; what the table returns is what happens. A
frame the table refuses raises :class:`RemoteProtocolError` (4400); an ending (goodbye,
timeout, close) queues the effects the shell executes, read with :meth:`SessionCore.take_effects`.
Rule 2: a session ends once. The first ending event moves the state to CLOSED and queues
exactly one :class:`End`; every later event (a frame, a second timeout, the transport's close)
is ignored, and a frame received after CLOSED is never handled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .errors import CloseCode, RemoteProtocolError
from .handshake import INITIAL, Action, Event, Role, State, event_for, step


@dataclass(frozen=True, slots=True)
class Close:
    """Close the transport with ``code`` and ``reason``."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class End:
    """Record the session's end: ``code`` is the close code sent or received (None when the
    peer's close carried none), ``goodbye`` whether the peer said goodbye first."""

    code: int | None
    reason: str
    goodbye: bool = False


Effect = Close | End


class SessionCore:
    """The handshake state of one session, for the role :attr:`ROLE`. Pure: no sockets,
    tasks, clock or disk; the shell passes in what happened and executes what this returns.

    Call order: :meth:`receive` for every frame; :meth:`timeout` or :meth:`closed` when the
    phase's deadline ran out or the transport closes; :meth:`take_effects` after an ending,
    to execute its :class:`Close` and :class:`End`."""

    ROLE: ClassVar[Role]
    GOODBYE_REASON: ClassVar[str] = "goodbye"  # the reason recorded when the peer says goodbye

    __slots__ = ("_effects", "goodbye", "state")

    def __init__(self) -> None:
        self.state = INITIAL[self.ROLE]
        self.goodbye = False
        self._effects: list[Effect] = []

    def receive(self, frame_type: str) -> tuple[Action, ...]:
        """Step the table for a received frame; its actions (the table's own tuple: a shell
        may compare by identity). For a goodbye the ending's effects are queued. ``()`` once
        CLOSED: the frame is not handled (Rule 2). Raises RemoteProtocolError (4400) for a
        frame the state does not allow."""
        if self.state is State.CLOSED:
            return ()
        event = event_for(frame_type)
        self.state, actions = step(self.ROLE, self.state, event)
        if event is Event.GOODBYE:
            self.goodbye = True
            self._queue(actions, CloseCode.NORMAL_CLOSURE, self.GOODBYE_REASON)
        return actions

    def timeout(self, reason: str) -> None:
        """The phase's deadline ran out: queues Close(4408) and End, unless the session
        already ended."""
        if self.state is State.CLOSED:
            return
        self.state, actions = step(self.ROLE, self.state, Event.TIMEOUT)
        self._queue(actions, CloseCode.TIMEOUT, reason)

    def closed(self, code: int | None, reason: str, *, by_peer: bool) -> None:
        """The transport closes: ``by_peer`` when the peer (or the network) closed it
        (``code`` is its close code, if any), else because this side closes it for ``code``
        (a protocol error, superseded, shutting down...), so a :class:`Close` is queued
        before the :class:`End` the table gives. Nothing happens if the session already
        ended."""
        if self.state is State.CLOSED:
            return
        self.state, actions = step(self.ROLE, self.state, Event.CLOSE)
        if not by_peer and code is not None:
            self._effects.append(Close(code, reason))
        self._queue(actions, code, reason)

    def take_effects(self) -> list[Effect]:
        """The effects queued since the last call, in order; the shell executes each once."""
        effects, self._effects = self._effects, []
        return effects

    def _queue(self, actions: tuple[Action, ...], code: int | None, reason: str) -> None:
        """The table's ending actions as effects; the close code sent is the one recorded."""
        for action in actions:
            if action is Action.CLOSE_TIMEOUT:
                code = CloseCode.TIMEOUT
                self._effects.append(Close(code, reason))
            elif action is Action.CLOSE_NORMAL:
                code = CloseCode.NORMAL_CLOSURE
                self._effects.append(Close(code, reason))
            elif action is Action.END:
                self._effects.append(End(code, reason, self.goodbye))

    @property
    def ended(self) -> bool:
        return self.state is State.CLOSED


class NodeSession(SessionCore):
    """The node's side of one edge session, as the sidecar's link drives it: ``receive``
    answers ``(SEND_HELLO,)`` for the challenge, ``(ACCEPT_WELCOME,)`` for the welcome,
    :data:`NODE_HANDLE` for a steady-state frame; anything else before the welcome, or a
    handshake frame after it, raises RemoteProtocolError (4400). A timeout before the
    challenge, before the welcome or past ``stale_after_s`` closes with 4408; the
    controller's goodbye closes with 1000; the session ends once."""

    ROLE = Role.NODE
    GOODBYE_REASON = "controller said goodbye"

    __slots__ = ()


# The node table's answer to a steady-state frame, that very tuple (compared by identity).
NODE_HANDLE = step(Role.NODE, State.ESTABLISHED, Event.FRAME)[1]

__all__ = ["NODE_HANDLE", "Close", "Effect", "End", "NodeSession", "RemoteProtocolError",
           "SessionCore"]
