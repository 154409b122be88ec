"""The controller's side of one edge session (PROTOCOL.md §4-5), with no I/O.

:class:`EdgeSession` is what the gateway's ``EdgeConnection`` (the I/O shell: the socket,
timers, tasks and store calls) asks before it acts. It owns the handshake state, stepped
through :func:`~tether.protocol.handshake.step` for every event, frames, timeouts and the
transport's close included, and the two streams of the session: the ``evt``
:class:`~tether.protocol.streams.StreamReceiver` and the ``cmd``
:class:`~tether.protocol.streams.StreamSender`, the same class the node uses for its uplink
and the one the stateful lossy-link tests drive.

Rule 1: every event goes through the table; what the table returns is what happens. A
frame the table refuses raises :class:`RemoteProtocolError` (4400); an ending (goodbye,
timeout, close) queues the effects the shell executes, read with :meth:`take_effects`.
Rule 2: a session ends once. The first ending event moves the state to CLOSED and queues
exactly one :class:`End`; every later event (a frame, a second timeout, the transport's close)
is ignored, and a frame received after CLOSED is never handled.
Rule 3: the ``cmd`` bookkeeping is the sender's alone: ``sent`` moves before a frame is
written (the node may ack it before the write returns), acks and resumes go through
:meth:`StreamSender.on_ack` / :meth:`StreamSender.resume`, which refuse a cursor beyond
``sent`` (4400). What the store has recorded (the acked and sent marks) is tracked beside it,
as durable marks, never as a second cursor.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import CloseCode, RemoteProtocolError
from .handshake import INITIAL, Action, Event, Role, State, event_for, step
from .streams import StreamReceiver, StreamSender

# The table's answer to a steady-state frame, that very tuple: the shell compares by identity
# on the per-frame path (tests/protocol/test_edge_session.py checks it stays the same object).
HANDLE = step(Role.CONTROLLER, State.ESTABLISHED, Event.FRAME)[1]


@dataclass(frozen=True, slots=True)
class Close:
    """Close the transport with ``code`` and ``reason``."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class End:
    """Record the session's end: ``code`` is the close code sent or received (None when the
    peer's close carried none), ``goodbye`` whether the node said goodbye first."""

    code: int | None
    reason: str
    goodbye: bool = False


Effect = Close | End


class EdgeSession:
    """One edge session's protocol state, controller side. Pure: no sockets, tasks, clock
    or disk; the shell passes in what it read and executes what this returns.

    Call order: :meth:`receive` for every frame (the hello first); :meth:`welcomed` once the
    hello verified and the store opened the session; :meth:`timeout` or :meth:`closed` when
    the phase's deadline ran out or the transport closes; :meth:`take_effects` after an
    ending, to execute its :class:`Close` and :class:`End`."""

    __slots__ = ("_effects", "cmd", "cmd_acked_stored", "cmd_epoch", "cmd_sent_stored",
                 "evt", "goodbye", "state")

    def __init__(self, *, cmd_window: int = 256) -> None:
        self.state = INITIAL[Role.CONTROLLER]
        self.goodbye = False
        self.evt = StreamReceiver()
        self.cmd = StreamSender(window=cmd_window)
        self.cmd_epoch = 0
        # durable marks: how far the store has recorded the node's cmd acks (commands marked
        # delivered) and the sent mark (a later hello cursor beyond it is an epoch reset)
        self.cmd_acked_stored = 0
        self.cmd_sent_stored = 0
        self._effects: list[Effect] = []

    # -- the handshake table ---------------------------------------------------------------

    def receive(self, frame_type: str) -> tuple[Action, ...]:
        """Step the table for a received frame; its actions. :data:`HANDLE` (that very tuple)
        for a steady-state frame; ``(VERIFY_HELLO,)`` for the hello; for a goodbye the
        ending's effects are queued. ``()`` once CLOSED: the frame is not handled (Rule 2).
        Raises RemoteProtocolError (4400) for a frame the state does not allow: anything
        but a hello first, or a second hello."""
        if self.state is State.CLOSED:
            return ()
        event = event_for(frame_type)
        self.state, actions = step(Role.CONTROLLER, self.state, event)
        if event is Event.GOODBYE:
            self.goodbye = True
            self._queue(actions, CloseCode.NORMAL_CLOSURE, "goodbye")
        return actions

    def timeout(self, reason: str) -> None:
        """The phase's deadline ran out (no hello in time, or silence past stale_after_s):
        queues Close(4408) and End, unless the session already ended."""
        if self.state is State.CLOSED:
            return
        self.state, actions = step(Role.CONTROLLER, self.state, Event.TIMEOUT)
        self._queue(actions, CloseCode.TIMEOUT, reason)

    def closed(self, code: int | None, reason: str, *, by_peer: bool) -> None:
        """The transport closes: ``by_peer`` when the node closed it (``code`` is its close
        code, if it sent one), else because this side closes it for ``code`` (a protocol
        error, superseded, shutting down...), so a :class:`Close` is queued before the
        :class:`End` the table gives. Nothing happens if the session already ended."""
        if self.state is State.CLOSED:
            return
        self.state, actions = step(Role.CONTROLLER, self.state, Event.CLOSE)
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

    # -- the streams -------------------------------------------------------------------------

    def welcomed(self, *, evt_epoch: int, evt_applied: int, cmd_epoch: int,
                 cmd_acked: int) -> None:
        """The store opened the session: the node's evt cursor as stored, and the cmd epoch
        with the node's applied cursor in it (0 when the epoch was rotated). The downlink
        re-sends everything after ``cmd_acked`` (Sender rule 2)."""
        self.evt = StreamReceiver(epoch=evt_epoch, applied=evt_applied)
        self.cmd_epoch = cmd_epoch
        self.cmd = StreamSender(acked=cmd_acked, sent=cmd_acked, window=self.cmd.window)
        self.cmd.outbox_holds(cmd_acked)
        self.cmd_acked_stored = self.cmd_sent_stored = cmd_acked

    def on_cmd_ack(self, n: int | None) -> bool:
        """A cumulative ``cmd`` ack (edge.ack, a heartbeat's acks). True when it acked
        something new, for the store to record. Raises RemoteProtocolError (4400) for an ack
        beyond what this session sent: never a reason to mark commands that were queued but
        never sent delivered."""
        if n is None:
            return False
        return self.cmd.on_ack(n) is not None

    def on_resume(self, n: int) -> None:
        """The node's runtime re-attached having applied up to ``n``: what was sent after
        it is sent again. Raises RemoteProtocolError (4400) for ``n`` beyond what was sent."""
        self.cmd.resume(n)

    def cmd_ack_to_store(self) -> int | None:
        """The node's cmd cursor, when it is ahead of what the store recorded."""
        acked = self.cmd.acked
        return acked if acked > self.cmd_acked_stored else None

    def stored_cmd_ack(self, n: int) -> None:
        """The store recorded the cmd ack ``n`` (the commands up to it are delivered)."""
        self.cmd_acked_stored = max(self.cmd_acked_stored, n)

    def cmd_sending(self, q: int) -> None:
        """``q``, read from the store's outbox in order, is about to be written: marked sent
        first, since the node may ack it before the write returns."""
        self.cmd.outbox_holds(q)
        self.cmd.mark_sent(q)

    def cmd_sent_to_store(self) -> int | None:
        """The sent mark, when it is ahead of what the store recorded."""
        sent = self.cmd.sent
        return sent if sent > self.cmd_sent_stored else None

    def stored_cmd_sent(self, q: int) -> None:
        """The store recorded the sent mark ``q``."""
        self.cmd_sent_stored = max(self.cmd_sent_stored, q)


__all__ = ["HANDLE", "Close", "EdgeSession", "Effect", "End", "RemoteProtocolError"]
