"""The outbox's tail in memory: the committed, unacked ``evt`` rows, kept as the outbox holds
them (type, encoded body) and handed out encoded for the link.

The uplink sends a frame appended a moment ago from here instead of reading it back from
SQLite (a thread hop) and decoding it. The outbox stays the source of truth; this is a cache
of its rows.

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

Bounded in frames and bytes; past either, a new entry is **not cached** (it is read from the
outbox when its turn comes): nothing is dropped but a copy.
"""

from __future__ import annotations

from collections.abc import Iterable

from tether.protocol.classes import EVT_STREAM
from tether.protocol.codec import encode_sequenced
from tether.protocol.local import frame_local

MAX_TAIL_FRAMES = 16384
MAX_TAIL_BYTES = 8 << 20


class OutboxTail:
    def __init__(self, *, max_frames: int = MAX_TAIL_FRAMES,
                 max_bytes: int = MAX_TAIL_BYTES) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.generation: int | None = 0  # None: nothing is cached (an epoch is changing)
        self._frames: dict[int, tuple[str, bytes]] = {}
        self._bytes = 0
        self._floor = 0  # every entry is above this (acked) sequence number

    def add(self, rows: Iterable[tuple[int, str, bytes]], generation: int) -> None:
        """Cache committed outbox rows (q, t, encoded body) written in ``generation``."""
        if generation != self.generation:
            return
        frames = self._frames
        for q, t, body in rows:
            if q <= self._floor or q in frames:
                continue
            if len(frames) >= self.max_frames or self._bytes + len(body) > self.max_bytes:
                return
            frames[q] = (t, body)
            self._bytes += len(body)

    def add_one(self, q: int, t: str, body: bytes, generation: int) -> None:
        """:meth:`add` for one row."""
        frames = self._frames
        if (generation != self.generation or q <= self._floor or q in frames
                or len(frames) >= self.max_frames or self._bytes + len(body) > self.max_bytes):
            return
        frames[q] = (t, body)
        self._bytes += len(body)

    def run(self, first: int, last: int) -> list[bytes]:
        """The frames ``first``, ``first + 1``, ... up to ``last``, encoded for the link
        (what ``encode_local`` gives for each), while each is cached; empty when ``first``
        is not. Raises LocalProtocolError for a frame over the local limit."""
        out: list[bytes] = []
        frames = self._frames
        for q in range(first, last + 1):
            row = frames.get(q)
            if row is None:
                break
            out.append(frame_local(encode_sequenced(row[0], EVT_STREAM, q, row[1])))
        return out

    def drop_through(self, n: int) -> None:
        """The peer acked through ``n``: those rows are gone from the outbox."""
        if n <= self._floor:
            return
        frames = self._frames
        if n - self._floor > len(frames):
            kept = {q: d for q, d in frames.items() if q > n}
            self._bytes = sum(len(row[1]) for row in kept.values())
            self._frames = kept
        else:
            for q in range(self._floor + 1, n + 1):
                row = frames.pop(q, None)
                if row is not None:
                    self._bytes -= len(row[1])
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
