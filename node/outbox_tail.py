"""The outbox's tail in memory: the committed, unacked ``evt`` rows, kept encoded for the link.

The uplink sends a frame appended a moment ago from here instead of reading it back from
SQLite (a thread hop) and decoding it; the frame is encoded as it is cached (off the path
from an ack to the next send), around the body bytes the row holds. The outbox stays the
source of truth; this is a cache of its rows.

Rule 1 (only what is committed): an entry is added after the COMMIT that holds its row
(:class:`~tether.node.store.NodeStore` adds what a write appended once that write returned),
with the bytes that row holds under that sequence number.
Rule 2 (never stale): rows change only by an ack (they go: :meth:`drop_through`) or by a new
``evt`` epoch (all are re-sequenced: :meth:`reset` with a new generation). An entry carries
the generation its row was written in and is refused unless it is the current one, so an
append that committed before a new epoch and reports after it is never cached.
Rule 3 (a hole is not a gap on the wire): :meth:`run` returns the longest run of consecutive
sequence numbers from the one asked for; whatever it does not hold (a write whose caller
went away, an entry over the bounds, anything after a restart) is read from the outbox.

Bounded in frames and bytes (each entry counted with its bookkeeping); past either, a new
entry is **not cached** (it is read from the outbox when its turn comes): nothing is dropped
but a copy. A node whose link keeps up holds about a send window here; the bounds matter
under a burst, when appends run ahead of the link (the benchmark's producers run ~40,000
ahead), and hold the tail to 16 MiB.
"""

from __future__ import annotations

from collections.abc import Iterable

from tether.protocol.classes import EVT_STREAM
from tether.protocol.codec import encode_sequenced
from tether.protocol.errors import LocalProtocolError
from tether.protocol.local import frame_local

MAX_TAIL_FRAMES = 65536
MAX_TAIL_BYTES = 16 << 20
ENTRY_OVERHEAD = 100  # bytes an entry costs beside its frame (dict slot, bytes object)


class OutboxTail:
    def __init__(self, *, max_frames: int = MAX_TAIL_FRAMES,
                 max_bytes: int = MAX_TAIL_BYTES) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.generation: int | None = 0  # None: nothing is cached (an epoch is changing)
        self._frames: dict[int, bytes] = {}
        self._bytes = 0
        self._floor = 0  # every entry is above this (acked) sequence number

    def add(self, rows: Iterable[tuple[int, str, bytes]], generation: int) -> None:
        """Cache committed outbox rows (q, t, encoded body) written in ``generation``."""
        for q, t, body in rows:
            self.add_one(q, t, body, generation)

    def add_one(self, q: int, t: str, body: bytes, generation: int) -> None:
        """:meth:`add` for one row. A row whose frame is over the local limit is not cached
        (the outbox read meets the error, as any encoding of it would)."""
        frames = self._frames
        if (generation != self.generation or q <= self._floor or q in frames
                or len(frames) >= self.max_frames or self._bytes + len(body) > self.max_bytes):
            return
        try:
            data = frame_local(encode_sequenced(t, EVT_STREAM, q, body))
        except LocalProtocolError:
            return
        if self._bytes + len(data) + ENTRY_OVERHEAD > self.max_bytes:
            return
        frames[q] = data
        self._bytes += len(data) + ENTRY_OVERHEAD

    def run(self, first: int, last: int) -> list[bytes]:
        """The frames ``first``, ``first + 1``, ... up to ``last``, encoded for the link
        (what ``encode_local`` gives for each), while each is cached; empty when ``first``
        is not."""
        out: list[bytes] = []
        frames = self._frames
        for q in range(first, last + 1):
            data = frames.get(q)
            if data is None:
                break
            out.append(data)
        return out

    def drop_through(self, n: int) -> None:
        """The peer acked through ``n``: those rows are gone from the outbox."""
        if n <= self._floor:
            return
        frames = self._frames
        if n - self._floor > len(frames):
            kept = {q: d for q, d in frames.items() if q > n}
            self._bytes = sum(len(d) + ENTRY_OVERHEAD for d in kept.values())
            self._frames = kept
        else:
            for q in range(self._floor + 1, n + 1):
                data = frames.pop(q, None)
                if data is not None:
                    self._bytes -= len(data) + ENTRY_OVERHEAD
        self._floor = n

    def reset(self, generation: int | None) -> None:
        """Forget everything: a new epoch re-sequences the outbox. ``generation`` is the one
        later entries must carry (None: cache nothing until the next reset)."""
        self._frames = {}
        self._bytes = 0
        self._floor = 0
        self.generation = generation

    def __len__(self) -> int:
        return len(self._frames)
