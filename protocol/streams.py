"""Stream bookkeeping for class A frames (PROTOCOL.md §3), with no I/O.

Sender rule 1: a sequence number is assigned once, after the frame is persisted, and never
reused within an epoch. Sender rule 2: after a (re)connect everything above the peer's
applied cursor is sent again, in order.

Receiver rule 1: ``q <= accepted`` is a duplicate (ack again, do not apply). Receiver rule 2:
``q > accepted + 1`` is a gap (do not apply; ack ``applied`` so the sender re-sends).
Receiver rule 3: ``applied`` moves only when the effect and cursor are committed; acks always
carry ``applied``, never ``accepted``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .errors import RemoteProtocolError

MAX_EPOCH = (1 << 63) - 1


class StreamRegressed(RemoteProtocolError):
    """The peer's cursor does not fit this epoch: a new epoch is needed."""

    default_code = "stream_regressed"


class Verdict(StrEnum):
    APPLY = "apply"
    DUPLICATE = "duplicate"
    GAP = "gap"


@dataclass(slots=True)
class StreamReceiver:
    """Per (peer, stream) receive cursor.

    ``applied`` is the last sequence whose effect is committed; ``accepted`` (>= applied) the
    last one handed to the apply path. A failed commit calls :meth:`rollback`.
    """

    epoch: int | None = None
    applied: int = 0
    accepted: int = 0

    def __post_init__(self) -> None:
        self.accepted = max(self.accepted, self.applied)

    def observe_epoch(self, epoch: int) -> bool:
        """Record the sender's epoch. Returns True when it changed and the cursor was reset:
        the caller must persist the reset and record an event saying so."""
        if self.epoch == epoch:
            return False
        first = self.epoch is None and self.applied == 0
        self.epoch = epoch
        self.applied = 0
        self.accepted = 0
        return not first

    def classify(self, q: int) -> Verdict:
        if q <= self.accepted:
            return Verdict.DUPLICATE
        if q > self.accepted + 1:
            return Verdict.GAP
        self.accepted = q
        return Verdict.APPLY

    def committed(self, q: int) -> None:
        """The effects up to ``q`` are on disk."""
        if q > self.accepted:
            raise ValueError(f"commit of q={q} beyond accepted={self.accepted}")
        self.applied = max(self.applied, q)

    def rollback(self) -> None:
        """The pending apply failed: forget what was accepted but not committed."""
        self.accepted = self.applied


@dataclass(slots=True)
class StreamSender:
    """Per (peer, stream) send window over a durable outbox.

    ``last`` is the highest sequence assigned (persisted), ``acked`` the peer's applied
    cursor as last heard, ``sent`` the highest sequence written on the current connection.
    Invariant: ``acked <= sent <= last`` while connected.
    """

    last: int = 0
    acked: int = 0
    sent: int = 0
    window: int = 256

    def __post_init__(self) -> None:
        self.sent = max(self.sent, self.acked)

    def assign(self) -> int:
        self.last += 1
        return self.last

    def connected(self, peer_applied: int) -> None:
        """A new connection: the peer says it applied up to ``peer_applied``.

        Raises :class:`StreamRegressed` when the peer's cursor is behind what it acked
        before, or ahead of anything ever assigned: in the same epoch that means the peer
        lost (or restored) its store, and the caller must start a new epoch and
        re-sequence what is still unacked, never silently skip."""
        if peer_applied > self.last or peer_applied < self.acked:
            raise StreamRegressed(
                f"peer cursor {peer_applied} is outside the acked..last range "
                f"{self.acked}..{self.last} of this epoch")
        self.acked = peer_applied
        self.sent = peer_applied

    def disconnected(self) -> None:
        self.sent = self.acked

    def on_ack(self, n: int) -> tuple[int, int] | None:
        """Apply a cumulative ack. Returns the (first, last) range newly acknowledged, or None.

        Stale acks (``n <= acked``) are ignored. An ack beyond ``sent`` (the peer cannot have
        applied what it was never sent; callers mark a frame sent before writing it) is a
        protocol error, and nothing moves: acking it would drop frames the peer never had.
        (Across connections a cursor is reconciled by :meth:`connected` instead.)"""
        if n > self.sent:
            raise RemoteProtocolError(
                f"ack for q={n} is beyond q={self.sent}, the last sent (last assigned "
                f"q={self.last})", code="protocol_error")
        if n <= self.acked:
            return None
        first = self.acked + 1
        self.acked = n
        self.sent = max(self.sent, n)
        return first, n

    def resume(self, n: int) -> tuple[int, int] | None:
        """The peer, still on this connection, says it applied up to ``n`` and wants what
        follows again (its runtime re-attached behind the same transport): acks ``n`` like
        :meth:`on_ack`, then rewinds ``sent`` to ``acked``, so that everything above it is
        sent again (Sender rule 2). Raises RemoteProtocolError (4400) for ``n`` beyond
        ``sent``, moving nothing. Returns the range newly acknowledged, or None."""
        if n > self.sent:
            raise RemoteProtocolError(
                f"resume from q={n} is beyond q={self.sent}, the last sent (last assigned "
                f"q={self.last})", code="protocol_error")
        newly = self.on_ack(n)
        self.sent = self.acked
        return newly

    def outbox_holds(self, q: int) -> None:
        """The durable outbox holds ``q``: for a sender whose outbox is kept elsewhere (the
        controller's store assigns the sequence numbers) and read in order, ``last`` is at
        least ``q``."""
        if q > self.last:
            self.last = q

    def room(self) -> int:
        """How many frames after ``sent`` the window allows now, whatever ``last`` is: for a
        sender that reads its durable outbox in order from ``sent + 1`` (see
        :meth:`outbox_holds`) without knowing its end."""
        return max(0, self.acked + self.window - self.sent)

    def next_to_send(self) -> range:
        """Sequences that may be sent now (window permitting); the caller sends them in order
        and then calls :meth:`mark_sent`."""
        upto = min(self.last, self.acked + self.window)
        return range(self.sent + 1, upto + 1)

    def mark_sent(self, q: int) -> None:
        self.sent = max(self.sent, q)

    def rewind_to(self, q: int) -> None:
        """Writing the frames after ``q`` failed (the connection is gone): they count as not
        sent, so that they are sent again (Sender rule 2). ``sent`` goes back to ``q``, never
        below ``acked`` (what the peer applied is not sent again) and never forward: a
        reconnect that rewound it further meanwhile (:meth:`disconnected`,
        :meth:`connected`) stands, and nothing above the new connection's cursor is skipped."""
        if q < self.sent:
            self.sent = max(q, self.acked)

    @property
    def unacked(self) -> int:
        return self.last - self.acked
