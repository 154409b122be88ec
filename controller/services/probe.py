"""How the store is doing, for diag and /metrics: one read and one commit timed, and the
write queue's counters. :class:`StoreProbe` is the interface; :class:`DriverProbe` asks the
store itself, whichever engine holds it (SQLite or PostgreSQL)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tether.protocol.errors import StoreError


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


class FigureStore(Protocol):
    async def dead_letters_total(self) -> int: ...

    async def node_usage(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class StoreFigures:
    """What /metrics reads from the store; ``up`` is False (and the figures empty) while
    the store cannot be reached."""

    up: bool
    dead_letters_total: int = 0
    usage: dict[str, Any] = field(default_factory=dict)
    nodes_by_liveness: dict[str, int] = field(default_factory=dict)  # every node, any replica


class CachedStoreFigures:
    """The store's figures for /metrics, read at most once per ``ttl_s`` whatever the
    scrape rate: /metrics needs no token, so without this anyone could turn requests into
    store reads. Concurrent scrapes share one read (a lock); an outage is remembered for
    ``ttl_s`` too, so scrapes during it do not each wait for the store's timeout.
    ``count_liveness`` (services/metrics.py ``nodes_by_liveness``) is read with them."""

    def __init__(self, store: FigureStore, *, ttl_s: float = 2.0,
                 monotonic: Callable[[], float] = time.monotonic,
                 count_liveness: Callable[[], Awaitable[dict[str, int]]] | None = None
                 ) -> None:
        self._store = store
        self._count_liveness = count_liveness
        self._ttl_s = ttl_s
        self._monotonic = monotonic
        self._lock = asyncio.Lock()
        self._cached: StoreFigures | None = None
        self._read_at = 0.0
        self.reads_total = 0

    async def get(self) -> StoreFigures:
        async with self._lock:
            if self._cached is None or self._monotonic() - self._read_at >= self._ttl_s:
                self.reads_total += 1
                try:
                    self._cached = StoreFigures(
                        up=True, dead_letters_total=await self._store.dead_letters_total(),
                        usage=await self._store.node_usage(),
                        nodes_by_liveness=(await self._count_liveness()
                                           if self._count_liveness is not None else {}))
                except StoreError as exc:
                    if exc.code != "unavailable":
                        raise
                    self._cached = StoreFigures(up=False)
                self._read_at = self._monotonic()
            return self._cached
