"""One direction of an interactive io stream (exec stdin, a shell's pty), with no I/O.

The frames are class E (``io.input`` / ``io.output``, acked by ``io.ack``): nothing stores
them, a session that drops loses what was in flight, and the NATS hop between replicas is
at most once. This module makes the stream reliable and bounded on top of that, as a
go-back-N sender and an in-order receiver (``streams.StreamReceiver``, the class A
receiver's cursor, serves as the receiver: duplicates are acked again, gaps dropped).

Rule 1 (bounded): the sender holds at most ``window`` bytes of data unacked (the window the
receiver announced in its last ``io.ack``; until then :data:`INITIAL_WINDOW`), plus one
frame: :meth:`IoSender.room` says how much the caller may :meth:`~IoSender.push`, and a
push past it raises. A producer with no room waits (stops reading its pipe, pty or socket):
nothing piles up anywhere on the way.
Rule 2 (ordered, exactly once): each push gets the next ``seq``; the receiver applies
``seq == applied + 1`` only. An ack moves ``acked`` forward only (a stale ack is ignored).
Rule 3 (recovery): when no ack moved ``acked`` for ``retransmit_s`` while data is unacked,
:meth:`IoSender.due` is true and the caller re-sends every unacked frame in order
(:meth:`IoSender.unacked`), then calls :meth:`IoSender.resent`. Times are passed in.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .errors import LocalProtocolError

INITIAL_WINDOW = 64 << 10  # what a sender may have in flight before the first io.ack
DEFAULT_WINDOW = 256 << 10  # what this implementation's receivers announce
RETRANSMIT_S = 2.0
KEEPALIVE_S = 10.0  # each end repeats its io.ack this often while the stream is open
LEASE_S = 60.0  # an end that heard nothing of its peer this long gives the stream up


@dataclass(frozen=True, slots=True)
class Pending:
    seq: int
    data: bytes
    eof: bool = False


class IoSender:
    """The sending half (module docstring for the rules)."""

    def __init__(self, *, window: int = INITIAL_WINDOW, retransmit_s: float = RETRANSMIT_S
                 ) -> None:
        self.window = window
        self.retransmit_s = retransmit_s
        self.last_seq = 0
        self.acked = 0
        self.eof_sent = False
        self._unacked: deque[Pending] = deque()
        self._unacked_bytes = 0
        self._progress_at = 0.0

    @property
    def unacked_bytes(self) -> int:
        return self._unacked_bytes

    def room(self) -> int:
        """Bytes the caller may push now (Rule 1); 0 once eof was pushed."""
        if self.eof_sent:
            return 0
        return max(0, self.window - self._unacked_bytes)

    def push(self, data: bytes, now_s: float, *, eof: bool = False) -> Pending:
        """The next frame to send. Raises LocalProtocolError past the room (Rule 1) or
        after eof."""
        if self.eof_sent:
            raise LocalProtocolError("io stream: nothing may follow eof")
        if data and len(data) > self.room():
            raise LocalProtocolError(f"io stream: {len(data)} bytes pushed with room for "
                                     f"{self.room()}")
        if not self._unacked:
            self._progress_at = now_s
        self.last_seq += 1
        item = Pending(self.last_seq, data, eof)
        self._unacked.append(item)
        self._unacked_bytes += len(data)
        self.eof_sent = eof
        return item

    def on_ack(self, seq: int, window: int, now_s: float) -> bool:
        """The receiver applied up to ``seq`` and takes ``window`` bytes beyond it. Returns
        True when it moved ``acked``. An ack beyond what was pushed is the peer's error:
        raises LocalProtocolError naming both numbers, nothing changed."""
        if seq > self.last_seq:
            raise LocalProtocolError(f"io ack for seq {seq} is beyond seq {self.last_seq}, "
                                     "the last sent")
        self.window = window
        if seq <= self.acked:
            return False
        self.acked = seq
        while self._unacked and self._unacked[0].seq <= seq:
            self._unacked_bytes -= len(self._unacked.popleft().data)
        self._progress_at = now_s
        return True

    def done(self) -> bool:
        """Eof was pushed and acked."""
        return self.eof_sent and not self._unacked

    def due(self, now_s: float) -> bool:
        """Rule 3: unacked data saw no progress for ``retransmit_s``."""
        return bool(self._unacked) and now_s - self._progress_at >= self.retransmit_s

    def unacked(self) -> list[Pending]:
        return list(self._unacked)

    def resent(self, now_s: float) -> None:
        self._progress_at = now_s
