"""Node events within their budgets (quotas.py Rule 2), and the budget bookkeeping that
logs use too (Rule 3): running totals per node in ``node_usage``, pruning oldest first.

A transaction collects its node events in an :class:`EventBatch` and stores them at its end
(:meth:`BudgetTransactions._flush`): one ``executemany`` and one budget charge per
transaction, not one per event (the acked-throughput path).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from .base import StoreBase, peer_text, wall_now
from .quotas import LOW_WATER, Refusal, encode_event_data, node_event_refusal, node_event_size
from .records import NodeEventRecord, usage_counts
from .sql import Tx

logger = logging.getLogger(__name__)

_INSERT_EVENT = "INSERT INTO node_events (node_id, kind, data, at, size) VALUES ($1,$2,$3,$4,$5)"


class EventBatch:
    """Node events of one transaction, stored together by
    :meth:`BudgetTransactions._flush`."""

    __slots__ = ("bytes", "refused", "rows")

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, float, int]] = []
        self.bytes = 0
        self.refused: list[int] = []  # sizes of events over the per-event limit


class BudgetTransactions(StoreBase):
    """Node events and the per-node budgets."""

    def node_event_refusal(self, kind: str, data: Any) -> Refusal | None:
        """None when a node event may be stored, else why not (quotas.py Rule 2): for the
        gateway's rejected-frame path, before it calls :meth:`apply_evt`."""
        return node_event_refusal(kind, data, self.quotas)

    def _node_event(self, node_id: str, kind: str, data: Any, now: float,
                    events: EventBatch) -> Refusal | None:
        """Add one node event to ``events`` within the node's budgets (quotas.py Rule 2):
        an event over the per-event limit is not stored (a small ``node.event.refused``
        record with its kind and size is, and it is counted). :meth:`_flush` stores them
        and prunes past the per-node budget. Returns the refusal, if any."""
        data_json = encode_event_data(data)
        size = node_event_size(kind, data_json)
        q = self.quotas
        refusal = None
        if size > q.node_event_max_bytes:
            logger.warning("node event over the per-event byte limit was not stored",
                           extra={"node_id": node_id, "kind": kind[:64], "bytes": size,
                                  "limit": q.node_event_max_bytes})
            events.refused.append(size)
            refusal = node_event_refusal(kind, data, q)
            kind, data_json = "node.event.refused", encode_event_data(
                {"kind": kind[:128], "bytes": size, "limit": q.node_event_max_bytes,
                 "code": "quota_exceeded"})
            size = node_event_size(kind, data_json)
        events.rows.append((node_id, kind, data_json, now, size))
        events.bytes += size
        return refusal

    async def _flush(self, tx: Tx, node_id: str, events: EventBatch) -> None:
        """Store ``events`` (in order), count the refused ones, charge the node and prune
        past its budget (quotas.py Rule 2)."""
        if events.refused:
            await tx.execute(
                "INSERT INTO node_usage (node_id, what, refused_items, refused_bytes) "
                "VALUES ($1, 'events', $2, $3) ON CONFLICT (node_id, what) DO UPDATE SET "
                "refused_items = node_usage.refused_items + excluded.refused_items, "
                "refused_bytes = node_usage.refused_bytes + excluded.refused_bytes",
                node_id, len(events.refused), sum(events.refused))
        if not events.rows:
            return
        if len(events.rows) == 1:
            await tx.execute(_INSERT_EVENT, *events.rows[0])
        else:
            await tx.executemany(_INSERT_EVENT, events.rows)
        q = self.quotas
        items, total = await self._charge(tx, node_id, "events", len(events.rows),
                                          events.bytes)
        if items > q.node_events_per_node or total > q.node_events_bytes_per_node:
            await self._prune(tx, node_id, "events", max_items=q.node_events_per_node,
                              max_bytes=q.node_events_bytes_per_node)

    async def record_node_events(self, node_id: str,
                                 items: Sequence[tuple[str, Any]]) -> list[Refusal | None]:
        """Store node events recorded by the controller itself (``kind``, ``data``), in
        one transaction, within the node's budgets; returns each one's refusal, if any."""
        async def fn(tx: Tx) -> list[Refusal | None]:
            now = wall_now()
            events = EventBatch()
            out = [self._node_event(node_id, kind, data, now, events)
                   for kind, data in items]
            await self._flush(tx, node_id, events)
            return out
        return await self.driver.write(fn)

    @staticmethod
    async def _charge(tx: Tx, node_id: str, what: str, items: int,
                      nbytes: int) -> tuple[int, int]:
        """Add to the node's running totals of budget ``what``; returns the new totals."""
        row = await tx.fetchrow(
            "INSERT INTO node_usage (node_id, what, items, bytes) VALUES ($1,$2,$3,$4) "
            "ON CONFLICT (node_id, what) DO UPDATE SET items = node_usage.items + "
            "excluded.items, bytes = node_usage.bytes + excluded.bytes RETURNING items, bytes",
            node_id, what, items, nbytes)
        assert row is not None
        return int(row[0]), int(row[1])

    async def _prune(self, tx: Tx, node_id: str, what: str, *, max_items: int,
                     max_bytes: int) -> None:
        """Delete the node's oldest rows of budget ``what`` until it is within 90% of both
        bounds (quotas.py ``LOW_WATER``: so pruning runs once per tenth of a budget, not
        on every row), counting them as pruned. Rows deleted from one log budget are also
        taken off the other ('logs' holds every 'node_logs' row)."""
        table, where = {"events": ("node_events", ""), "logs": ("logs", ""),
                        "node_logs": ("logs", " AND command_id IS NULL")}[what]
        max_items = int(max_items * LOW_WATER)
        max_bytes = int(max_bytes * LOW_WATER)
        while True:
            usage = await tx.fetchrow("SELECT items, bytes FROM node_usage WHERE "
                                      "node_id=$1 AND what=$2", node_id, what)
            if usage is None or (usage[0] <= max_items and usage[1] <= max_bytes):
                return
            over_items, over_bytes = usage[0] - max_items, usage[1] - max_bytes
            if over_bytes <= 0 and what != "logs":
                # Over on rows only (the common case: small events): the cut is the
                # over_items-th oldest row, found and counted by the engine in two statements.
                cut = await tx.fetchval(f"SELECT id FROM {table} WHERE node_id=$1{where} "
                                        "ORDER BY id LIMIT 1 OFFSET $2", node_id,
                                        over_items - 1)
                if cut is not None:
                    counted = await tx.fetchrow(
                        f"SELECT count(*), coalesce(sum(size), 0) FROM {table} WHERE "
                        f"node_id=$1{where} AND id<=$2", node_id, cut)
                    assert counted is not None
                    n, freed = int(counted[0]), int(counted[1])
                    await tx.execute(f"DELETE FROM {table} WHERE node_id=$1{where} AND "
                                     "id<=$2", node_id, cut)
                    await self._pruned(tx, node_id, what, n, freed)
                    if what == "node_logs":
                        await self._pruned(tx, node_id, "logs", n, freed)
                    continue
            level = ", command_id IS NULL" if table == "logs" else ", 0"
            rows = await tx.fetch(f"SELECT id, size{level} FROM {table} WHERE "
                                  f"node_id=$1{where} ORDER BY id LIMIT 256", node_id)
            if not rows:  # the totals disagree with the table: trust the table
                await tx.execute("UPDATE node_usage SET items=0, bytes=0 WHERE node_id=$1 "
                                 "AND what=$2", node_id, what)
                return
            n = freed = freed_node_level = level_n = 0
            last_id = None
            for row in rows:
                if n >= over_items and freed >= over_bytes:
                    break
                n, freed, last_id = n + 1, freed + int(row[1]), row[0]
                if row[2]:
                    freed_node_level += int(row[1])
                    level_n += 1
            await tx.execute(f"DELETE FROM {table} WHERE node_id=$1{where} AND id<=$2",
                             node_id, last_id)
            await self._pruned(tx, node_id, what, n, freed)
            if what == "logs" and freed_node_level:
                await self._pruned(tx, node_id, "node_logs", level_n, freed_node_level)
            elif what == "node_logs":
                await self._pruned(tx, node_id, "logs", n, freed)

    @staticmethod
    async def _pruned(tx: Tx, node_id: str, what: str, n: int, freed: int) -> None:
        await tx.execute(
            "UPDATE node_usage SET items = CASE WHEN items > $1 THEN items - $1 ELSE 0 END, "
            "bytes = CASE WHEN bytes > $2 THEN bytes - $2 ELSE 0 END, "
            "pruned_items = pruned_items + $1, pruned_bytes = pruned_bytes + $2 "
            "WHERE node_id=$3 AND what=$4", n, freed, node_id, what)

    async def node_usage(self, node_id: str | None = None) -> dict[str, dict[str, int]]:
        """What each budget holds and has pruned or refused, summed over nodes (or for one
        node): for ``diag`` and the metrics."""
        async def fn(tx: Tx) -> dict[str, dict[str, int]]:
            sql = ("SELECT what, sum(items) AS items, sum(bytes) AS bytes, "
                   "sum(pruned_items) AS pruned_items, sum(pruned_bytes) AS pruned_bytes, "
                   "sum(refused_items) AS refused_items, "
                   "sum(refused_bytes) AS refused_bytes FROM node_usage")
            params: tuple[str, ...] = ()
            if node_id is not None:
                sql, params = sql + " WHERE node_id=$1", (node_id,)
            return {str(r["what"]): usage_counts(r)
                    for r in await tx.fetch(sql + " GROUP BY what", *params)}
        return await self.driver.read(fn)

    async def node_events(self, node_id: str, *, limit: int = 100) -> list[NodeEventRecord]:
        """The node's newest events, newest first."""
        node_id = peer_text(node_id)

        async def fn(tx: Tx) -> list[NodeEventRecord]:
            return [NodeEventRecord.from_row(r) for r in await tx.fetch(
                "SELECT id, kind, data, at FROM node_events WHERE node_id=$1 ORDER BY id DESC "
                "LIMIT $2", node_id, limit)]
        return await self.driver.read(fn)

    async def count_node_events(self, node_id: str, kind: str) -> int:
        async def fn(tx: Tx) -> int:
            return int(await tx.fetchval("SELECT count(*) FROM node_events WHERE node_id=$1 "
                                         "AND kind=$2", node_id, kind))
        return await self.driver.read(fn)
