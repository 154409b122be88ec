"""The controller's side of one edge session (PROTOCOL.md §4-5), with no I/O.

:class:`EdgeSession` is what the gateway's ``EdgeConnection`` (the I/O shell: the socket,
timers, tasks and store calls) asks before it acts. It owns the handshake state, stepped
through :func:`~tether.protocol.handshake.step` for every event, frames, timeouts and the
transport's close included (:class:`~tether.protocol.session.SessionCore`, which the node's
side shares), and the two streams of the session: the ``evt``
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

from .errors import RemoteProtocolError
from .handshake import Event, Role, State, step
from .session import Close, Effect, End, SessionCore
from .streams import StreamReceiver, StreamSender

# The table's answer to a steady-state frame, that very tuple: the shell compares by identity
# on the per-frame path (tests/protocol/test_edge_session.py checks it stays the same object).
HANDLE = step(Role.CONTROLLER, State.ESTABLISHED, Event.FRAME)[1]


class EdgeSession(SessionCore):
    """One edge session's protocol state, controller side. Pure: no sockets, tasks, clock
    or disk; the shell passes in what it read and executes what this returns.

    Call order: :meth:`receive` for every frame (the hello first); :meth:`welcomed` once the
    hello verified and the store opened the session; :meth:`timeout` or :meth:`closed` when
    the phase's deadline ran out or the transport closes; :meth:`take_effects` after an
    ending, to execute its :class:`Close` and :class:`End`."""

    ROLE = Role.CONTROLLER

    __slots__ = ("cmd", "cmd_acked_stored", "cmd_epoch", "cmd_sent_stored", "evt")

    def __init__(self, *, cmd_window: int = 256) -> None:
        super().__init__()
        self.evt = StreamReceiver()
        self.cmd = StreamSender(window=cmd_window)
        self.cmd_epoch = 0
        # durable marks: how far the store has recorded the node's cmd acks (commands marked
        # delivered) and the sent mark (a later hello cursor beyond it is an epoch reset)
        self.cmd_acked_stored = 0
        self.cmd_sent_stored = 0

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
