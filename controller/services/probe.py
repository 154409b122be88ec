"""How the store is doing, for diag and /metrics: one read and one commit timed, and the
write queue's counters. :class:`StoreProbe` is the interface; :class:`DriverProbe` asks the
store itself, whichever engine holds it (SQLite or PostgreSQL)."""

from __future__ import annotations

from typing import Protocol


class StoreProbe(Protocol):
    async def round_trip_ms(self) -> tuple[float, float]:
        """(read_ms, commit_ms): one trivial read, then one empty group commit (fsync
        included when durable)."""
        ...

    def counters(self) -> dict[str, int]:
        """``write_queue`` (writes waiting), ``batches_total``, ``writes_total``."""
        ...


class ProbedStore(Protocol):
    async def probe(self) -> tuple[float, float]: ...

    def write_stats(self) -> dict[str, int]: ...


class DriverProbe:
    """:class:`StoreProbe` through the store's own ``probe()`` and ``write_stats()``."""

    def __init__(self, store: ProbedStore) -> None:
        self._store = store

    async def round_trip_ms(self) -> tuple[float, float]:
        return await self._store.probe()

    def counters(self) -> dict[str, int]:
        stats = self._store.write_stats()
        return {"write_queue": stats["pending"], "batches_total": stats["batches_total"],
                "writes_total": stats["writes_total"]}
