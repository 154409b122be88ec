"""The class C uplink buffer for ``log.chunk`` (PROTOCOL.md §3).

Bounded to ``max_chunks``; overflow policy: the oldest chunk is dropped and counted, and the
next chunk sent carries that count in ``dropped``. Sequence numbers run per (command, source)
so a reader can see exactly where the gaps are.
"""

from __future__ import annotations

from collections import deque

from tether.protocol.frames import LogChunk


class LogBuffer:
    def __init__(self, *, max_chunks: int = 1024, max_chunk_bytes: int = 64 * 1024) -> None:
        self.max_chunks = max_chunks
        self.max_chunk_bytes = max_chunk_bytes
        self._chunks: deque[LogChunk] = deque()
        self._seq: dict[tuple[str | None, str], int] = {}
        self._dropped_pending = 0
        self.dropped_total = 0

    def add(self, command_id: str | None, source: str, data: bytes) -> None:
        for start in range(0, len(data), self.max_chunk_bytes):
            key = (command_id, source)
            seq = self._seq.get(key, 0) + 1
            self._seq[key] = seq
            if len(self._chunks) >= self.max_chunks:
                self._chunks.popleft()
                self._dropped_pending += 1
                self.dropped_total += 1
            self._chunks.append(LogChunk(command_id=command_id, source=source, seq=seq,
                                         data=data[start:start + self.max_chunk_bytes]))

    def forget(self, command_id: str) -> None:
        """Drop per-source counters of a finished command (its chunks stay queued)."""
        for key in [k for k in self._seq if k[0] == command_id]:
            del self._seq[key]

    def take(self) -> list[LogChunk]:
        """Everything buffered, oldest first; the first carries the pending drop count."""
        chunks = list(self._chunks)
        self._chunks.clear()
        if chunks and self._dropped_pending:
            first = chunks[0]
            chunks[0] = LogChunk(command_id=first.command_id, source=first.source,
                                 seq=first.seq, data=first.data, dropped=self._dropped_pending)
            self._dropped_pending = 0
        return chunks

    def __len__(self) -> int:
        return len(self._chunks)
