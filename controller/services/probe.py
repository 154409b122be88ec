"""How the store is doing, for diag and /metrics: one read and one commit timed, and the
write queue's counters. :class:`StoreProbe` is the interface; :class:`SqliteProbe` reads
the SQLite ``Database`` (common/sqlitedb.py) under the store; :class:`DriverProbe` asks the
store itself, whichever engine holds it (SQLite or PostgreSQL)."""

from __future__ import annotations

import time
from typing import Protocol

from tether.common.sqlitedb import Database


class StoreProbe(Protocol):
    async def round_trip_ms(self) -> tuple[float, float]:
        """(read_ms, commit_ms): one trivial read, then one empty group commit (fsync
        included when durable)."""
        ...

    def counters(self) -> dict[str, int]:
        """``write_queue`` (writes waiting), ``batches_total``, ``writes_total``."""
        ...


class SqliteProbe:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def round_trip_ms(self) -> tuple[float, float]:
        start = time.perf_counter()
        await self._db.read(lambda conn: conn.execute("SELECT 1").fetchone())
        read_ms = (time.perf_counter() - start) * 1000
        start = time.perf_counter()
        await self._db.write(lambda conn: None)
        return read_ms, (time.perf_counter() - start) * 1000

    def counters(self) -> dict[str, int]:
        db = self._db
        return {"write_queue": db.pending, "batches_total": db.batches_total,
                "writes_total": db.writes_total}


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
