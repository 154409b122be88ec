"""Class C output (``log.chunk``): stored within its budgets (quotas.py Rule 3) and read in
pages bounded in count and bytes (docs/protocol.md §6)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .base import opt_peer_text, peer_text, wall_now
from .budgets import BudgetTransactions
from .quotas import log_chunk_size
from .records import LogChunk, LogPage
from .sql import Tx

_PAGE_STEP = 64  # log rows read per statement while filling a page (bounds what is loaded)


class LogTransactions(BudgetTransactions):
    """Log chunks of commands and of nodes (apps, runtime)."""

    async def append_logs(self, node_id: str,
                          chunks: Sequence[tuple[str | None, str, int, bytes, int]]
                          ) -> list[LogChunk]:
        """Store log chunks (command_id, source, seq, data, dropped) within the budgets of
        quotas.py Rule 3: each command keeps its first ``log_bytes_per_command`` bytes
        (past it, bytes are counted in ``log_dropped_bytes``, not kept); the node keeps its
        newest bytes of all logs and of logs not tied to a command, the oldest are pruned
        and counted. Returns the chunks stored, for live subscribers."""
        q = self.quotas
        limit = q.log_bytes_per_command

        async def fn(tx: Tx) -> list[LogChunk]:
            now = wall_now()
            stored: list[LogChunk] = []
            charged = {"logs": [0, 0], "node_logs": [0, 0]}  # rows, bytes
            for command_id, source, seq, data, dropped in chunks:
                command_id, source = opt_peer_text(command_id), peer_text(source)
                if command_id is not None:
                    row = await tx.fetchrow("SELECT log_bytes, log_dropped_bytes FROM "
                                            "commands WHERE command_id=$1 AND node_id=$2",
                                            command_id, node_id)
                    if row is None:
                        continue
                    # once anything was dropped, nothing after it is kept: no splices
                    room = 0 if row[1] else max(0, limit - row[0])
                    if len(data) > room:
                        await tx.execute("UPDATE commands SET log_dropped_bytes = "
                                         "log_dropped_bytes + $1 WHERE command_id=$2",
                                         len(data) - room, command_id)
                        data = data[:room]
                    if not data:
                        continue
                    await tx.execute("UPDATE commands SET log_bytes = log_bytes + $1 "
                                     "WHERE command_id=$2", len(data), command_id)
                size = log_chunk_size(source, data)
                chunk_id = await tx.fetchval(
                    "INSERT INTO logs (command_id, node_id, source, seq, data, dropped, at, "
                    "size) VALUES ($1,$2,$3,$4,$5,$6,$7,$8) RETURNING id",
                    command_id, node_id, source, seq, data, dropped, now, size)
                for what in ("logs",) if command_id is not None else ("logs", "node_logs"):
                    charged[what][0] += 1
                    charged[what][1] += size
                stored.append(LogChunk(id=int(chunk_id), command_id=command_id,
                                       source=source, seq=seq, data=data, dropped=dropped))
            totals = {what: await self._charge(tx, node_id, what, n, nbytes)
                      for what, (n, nbytes) in charged.items() if n}
            level = totals.get("node_logs")
            if level and (level[0] > q.node_log_chunks_per_node
                          or level[1] > q.node_log_bytes_per_node):
                await self._prune(tx, node_id, "node_logs",
                                  max_items=q.node_log_chunks_per_node,
                                  max_bytes=q.node_log_bytes_per_node)
            every = totals.get("logs")
            if every and every[1] > q.log_bytes_per_node:
                await self._prune(tx, node_id, "logs", max_items=1 << 62,
                                  max_bytes=q.log_bytes_per_node)
            return stored
        return await self.driver.write(fn)

    async def node_logs(self, node_id: str, *, source: str | None, after: int = 0,
                        limit: int = 1000, max_bytes: int | None = None) -> LogPage:
        """Node-level log chunks (apps, runtime): those not tied to a command, after chunk
        id ``after``, at most ``limit`` of them and (when given) at most ``max_bytes`` of
        data, though always the first chunk; ``.more`` says whether more follow."""
        sql = ("SELECT id, command_id, source, seq, data, dropped FROM logs WHERE node_id=$1 "
               "AND command_id IS NULL AND id>$2")
        params: tuple[Any, ...] = (peer_text(node_id),)
        if source is not None:
            sql += " AND source=$3"
            params = (peer_text(node_id), peer_text(source))
        return await self.driver.read(
            lambda tx: _page(tx, sql + f" ORDER BY id LIMIT ${len(params) + 2}", params,
                             after, limit, max_bytes))

    async def command_logs(self, command_id: str, *, after: int = 0, limit: int = 1000,
                           max_bytes: int | None = None) -> LogPage:
        """A command's log chunks after chunk id ``after``, bounded as :meth:`node_logs`."""
        sql = ("SELECT id, command_id, source, seq, data, dropped FROM logs WHERE "
               "command_id=$1 AND id>$2 ORDER BY id LIMIT $3")
        return await self.driver.read(
            lambda tx: _page(tx, sql, (peer_text(command_id),), after, limit, max_bytes))


async def _page(tx: Tx, sql: str, params: tuple[Any, ...], after: int, limit: int,
                max_bytes: int | None) -> LogPage:
    """At most ``limit`` chunks after id ``after`` and, when ``max_bytes`` is given, no
    more ``data`` bytes than that, except that a page always holds its first chunk,
    however large. ``sql`` takes ``params``, then the id to read after (``$2``, or ``$3``
    after a source) and a row count: rows are read :data:`_PAGE_STEP` at a time, so a page
    of large chunks never loads much more than it returns."""
    out: list[LogChunk] = []
    total = 0
    cursor = after
    while True:
        want = min(_PAGE_STEP, limit + 1 - len(out))
        rows = await tx.fetch(sql, params[0], cursor, *params[1:], want)
        for row in rows:
            data = bytes(row["data"])
            if len(out) >= limit or (out and max_bytes is not None
                                     and total + len(data) > max_bytes):
                return LogPage(tuple(out), more=True)
            out.append(LogChunk(id=int(row["id"]), command_id=row["command_id"],
                                source=str(row["source"]), seq=int(row["seq"]), data=data,
                                dropped=int(row["dropped"] or 0)))
            total += len(data)
            cursor = int(row["id"])
        if len(rows) < want:
            return LogPage(tuple(out), more=False)
