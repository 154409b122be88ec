"""The SQLite driver of the store seam (controller/store/sql.py) over
:class:`tether.common.sqlitedb.Database`.

Contract (besides :class:`~tether.controller.store.sql.SqlDriver`'s):

* :meth:`SqliteDriver.write` hands ``fn`` to the database's writer thread as one closure of
  its group commit: ``fn`` runs to completion there (:func:`run_to_completion`) in its own
  savepoint, and its result is returned after the batch's COMMIT (fsynced with
  ``durability="fsync"``). One thread hop and one fsync per batch, as before the seam.
* :meth:`SqliteDriver.read` runs ``fn`` on the read connection (WAL: the last commit).
* SQL is written with ``$1 .. $n``; :class:`SqliteTx` rewrites it once per statement text
  to SQLite's ``?1 .. ?n`` (the same numbered parameters) and caches the result.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

from tether.common.sqlitedb import Database

from .sql import Row, Tx, run_callbacks, run_to_completion

T = TypeVar("T")

_PLACEHOLDER = re.compile(r"\$(\d+)")
_rewritten: dict[str, str] = {}  # portable SQL -> SQLite SQL; bounded by the store's texts
_MAX_REWRITTEN = 4096  # statements built with a variable IN (...) list stay bounded too


def sqlite_sql(sql: str) -> str:
    """``sql`` with ``$n`` placeholders as SQLite's ``?n`` (cached per text)."""
    out = _rewritten.get(sql)
    if out is None:
        out = _PLACEHOLDER.sub(r"?\1", sql)
        if len(_rewritten) < _MAX_REWRITTEN:
            _rewritten[sql] = out
    return out


class SqliteTx:
    """The statements of one transaction on a ``sqlite3.Connection`` (synchronous under
    ``async``: nothing here suspends, so :func:`run_to_completion` can drive it)."""

    dialect = "sqlite"
    __slots__ = ("callbacks", "conn")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.callbacks: list[Callable[[], None]] = []

    def after_commit(self, callback: Callable[[], None]) -> None:
        self.callbacks.append(callback)

    async def execute(self, sql: str, *args: Any) -> int:
        return self.conn.execute(sqlite_sql(sql), args).rowcount

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.conn.executemany(sqlite_sql(sql), rows)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return self.conn.execute(sqlite_sql(sql), args).fetchall()

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        row: Row | None = self.conn.execute(sqlite_sql(sql), args).fetchone()
        return row

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = self.conn.execute(sqlite_sql(sql), args).fetchone()
        return None if row is None else row[0]


class SqliteDriver:
    """:class:`~tether.controller.store.sql.SqlDriver` on a :class:`Database` (which keeps
    its writer thread, group commit, reader connection, lock file and migrations)."""

    dialect = "sqlite"

    def __init__(self, db: Database) -> None:
        self.db = db
        # after_commit callbacks of the functions run in the open batch (writer thread)
        self._after_commit: list[Callable[[], None]] = []
        db.on_commit = self._committed

    def _committed(self, committed: bool) -> None:
        callbacks, self._after_commit = self._after_commit, []
        if committed:
            run_callbacks(callbacks)

    async def open(self) -> None:
        await self.db.open()

    @property
    def pending(self) -> int:
        """Writes queued for the next group commits."""
        return self.db.pending

    @property
    def batches_total(self) -> int:
        """Group commits done."""
        return self.db.batches_total

    @property
    def writes_total(self) -> int:
        """Transaction functions committed."""
        return self.db.writes_total

    async def close(self) -> None:
        await self.db.close()

    async def write(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        def closure(conn: sqlite3.Connection) -> T:
            tx = SqliteTx(conn)
            result = run_to_completion(fn(tx))  # type: ignore[arg-type]
            self._after_commit.extend(tx.callbacks)  # (a function that raised adds none)
            return result
        return await self.db.write(closure)

    async def read(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        def closure(conn: sqlite3.Connection) -> T:
            return run_to_completion(fn(SqliteTx(conn)))  # type: ignore[arg-type]
        return await self.db.read(closure)
