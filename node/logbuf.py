"""The class C uplink buffer for ``log.chunk`` (PROTOCOL.md §3, docs/protocol.md §6).

Two overflow policies, chosen by the producer:

* :meth:`LogBuffer.put` (a command's output): **the producer waits**. At most ``max_bytes``
  of such output is buffered or in flight to the sidecar; a pipe reader that finds no room
  waits, so the process blocks on its pipe as it would under ssh. Room comes back only
  when the link has taken the bytes (:meth:`sent`), never by dropping: this output is
  never dropped here.
* :meth:`LogBuffer.add` (app and runtime logs, which no one waits on): **the oldest is
  dropped and counted**. At most ``max_chunks`` chunks and ``max_drop_bytes`` bytes are
  buffered; past either, the oldest such chunk goes, and the next chunk sent carries the
  count in ``dropped``.

Sequence numbers run per (command, source), so a reader sees exactly where gaps are.

Sending is two-phase: :meth:`take` hands out everything buffered (now *in flight*);
:meth:`sent` says the link took it (room comes back), :meth:`requeue` says it did not (the
chunks go back in front, in order, and are sent again next session).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from tether.protocol.frames import LogChunk

_Key = tuple[str | None, str]


class LogBuffer:
    def __init__(self, *, max_chunks: int = 1024, max_chunk_bytes: int = 64 * 1024,
                 max_bytes: int = 1 << 20, max_drop_bytes: int = 1 << 20) -> None:
        self.max_chunks = max_chunks
        self.max_chunk_bytes = max_chunk_bytes
        self.max_bytes = max_bytes
        self.max_drop_bytes = max_drop_bytes
        self._waiting: deque[LogChunk] = deque()  # put(): never dropped
        self._droppable: deque[LogChunk] = deque()  # add(): oldest dropped
        self._waiting_bytes = 0  # queued + in flight, of put() chunks
        self._droppable_bytes = 0  # queued, of add() chunks
        self._in_flight: list[tuple[LogChunk, bool]] = []  # (chunk, came from put())
        self._room = asyncio.Event()
        self._seq: dict[_Key, int] = {}
        self._dropped_pending = 0
        self.dropped_total = 0

    def _next(self, command_id: str | None, source: str, data: bytes) -> LogChunk:
        key = (command_id, source)
        seq = self._seq.get(key, 0) + 1
        self._seq[key] = seq
        return LogChunk(command_id=command_id, source=source, seq=seq, data=data)

    def add(self, command_id: str | None, source: str, data: bytes) -> None:
        """Buffer ``data`` now; past the bounds the oldest :meth:`add` chunk is dropped and
        counted (never a :meth:`put` chunk)."""
        for start in range(0, len(data), self.max_chunk_bytes):
            piece = data[start:start + self.max_chunk_bytes]
            while self._droppable and (
                    len(self._droppable) >= self.max_chunks
                    or self._droppable_bytes + len(piece) > self.max_drop_bytes):
                self._droppable_bytes -= len(self._droppable.popleft().data)
                self._dropped_pending += 1
                self.dropped_total += 1
            self._droppable.append(self._next(command_id, source, piece))
            self._droppable_bytes += len(piece)

    async def put(self, command_id: str | None, source: str, data: bytes, *,
                  wake: Callable[[], None] | None = None) -> None:
        """Buffer ``data``, waiting for room first: returns once every byte is buffered.
        A piece larger than ``max_bytes`` still goes, alone, once the buffer is empty.

        Rule: ``wake`` (the link's wake-up) is called before every wait for room. Data
        over ``max_chunk_bytes`` goes in as several pieces, and an earlier piece may have
        gone in just before a later one waits: unless the link is woken then, it never
        takes that piece, no room ever comes back, and both sides wait for good."""
        for start in range(0, len(data), self.max_chunk_bytes):
            piece = data[start:start + self.max_chunk_bytes]
            while self._waiting_bytes and self._waiting_bytes + len(piece) > self.max_bytes:
                if wake is not None:
                    wake()
                self._room.clear()
                await self._room.wait()
            self._waiting.append(self._next(command_id, source, piece))
            self._waiting_bytes += len(piece)

    def forget(self, command_id: str) -> None:
        """Drop per-source counters of a finished command (its chunks stay queued)."""
        for key in [k for k in self._seq if k[0] == command_id]:
            del self._seq[key]

    def take(self) -> list[LogChunk]:
        """Everything buffered, oldest first per source, now in flight; the first carries
        the pending drop count. Follow with :meth:`sent` or :meth:`requeue`."""
        taken = [(c, True) for c in self._waiting] + [(c, False) for c in self._droppable]
        self._waiting.clear()
        self._droppable.clear()
        self._droppable_bytes = 0
        if taken and self._dropped_pending:
            first, waits = taken[0]
            taken[0] = (LogChunk(command_id=first.command_id, source=first.source,
                                 seq=first.seq, data=first.data,
                                 dropped=self._dropped_pending), waits)
            self._dropped_pending = 0
        self._in_flight.extend(taken)
        return [chunk for chunk, _ in taken]

    def sent(self) -> None:
        """The link took every chunk in flight: their room comes back to waiting producers."""
        freed = sum(len(c.data) for c, waits in self._in_flight if waits)
        self._in_flight.clear()
        if freed:
            self._waiting_bytes -= freed
            self._room.set()

    def requeue(self) -> None:
        """The link did not take the chunks in flight: they go back in front, in order (the
        ``dropped`` count they carry goes with them)."""
        back_waiting = [c for c, waits in self._in_flight if waits]
        back_droppable = [c for c, waits in self._in_flight if not waits]
        self._in_flight.clear()
        self._waiting.extendleft(reversed(back_waiting))
        self._droppable.extendleft(reversed(back_droppable))
        self._droppable_bytes += sum(len(c.data) for c in back_droppable)

    @property
    def waiting_bytes(self) -> int:
        """Bytes of command output buffered or in flight (at most ``max_bytes``, or one
        oversized piece)."""
        return self._waiting_bytes

    def __len__(self) -> int:
        return len(self._waiting) + len(self._droppable)
