"""The seam between the controller's store and a SQL engine (SQLite or PostgreSQL).

The store's transactions are written once, as ``async def fn(tx: Tx) -> T``, in the portable
subset of SQL both engines run, and handed to a :class:`SqlDriver`:

* placeholders are ``$1 .. $n`` (asyncpg's; the SQLite driver rewrites them to ``?1 .. ?n``);
* ``INSERT .. ON CONFLICT .. DO NOTHING / DO UPDATE`` and ``RETURNING`` (SQLite >= 3.35),
  never ``INSERT OR IGNORE``, ``rowid``, ``lastrowid`` or JSON functions;
* integers are signed 64-bit (``BIGINT``), times are epoch seconds (``DOUBLE PRECISION`` /
  ``REAL``), bytes are ``BYTEA`` / ``BLOB``, structured values are JSON text encoded and
  decoded in Python at the store's boundary (rows never leave the store as JSON text).

Contract of a driver:

* :meth:`SqlDriver.write` runs ``fn`` inside one transaction and returns its result only
  after the COMMIT that holds its effect is durable (fsynced, for ``durability="fsync"``).
  A driver may run many ``fn`` in one transaction (group commit); each runs in its own
  savepoint, so one that raises is undone alone and its exception re-raised to its caller.
* :meth:`SqlDriver.read` runs ``fn`` on a connection that sees the last commit.
* ``fn`` awaits nothing but its ``tx``: the SQLite driver runs it to completion on its writer
  thread without an event loop (:func:`run_to_completion`), which is what lets one
  implementation of the store serve both engines at SQLite's speed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any, Protocol, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Row(Protocol):
    """A result row: by column name or by position (``sqlite3.Row``, ``asyncpg.Record``)."""

    def __getitem__(self, key: int | str, /) -> Any: ...

    def keys(self) -> Iterable[str]: ...


class Tx(Protocol):
    """The statements of one transaction."""

    dialect: str  # "sqlite" | "postgres"

    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; returns the number of rows it changed."""
        ...

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...

    async def fetchrow(self, sql: str, *args: Any) -> Row | None: ...

    async def fetchval(self, sql: str, *args: Any) -> Any:
        """The first column of the first row, or None when there is no row."""
        ...

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` right after the COMMIT that holds this function's effects, in
        the driver's writer (SQLite: its thread; PostgreSQL: its task), before any caller
        hears of the result, and whether or not the caller still waits; never when this
        function's work was rolled back. It must not block or raise (an exception is
        logged). For observers that must see every commit, e.g. the soak's recorder."""
        ...


TxFn = Callable[[Tx], Awaitable[T]]


class SqlDriver(Protocol):
    """One SQL engine behind the store (see the module's contract)."""

    dialect: str

    async def open(self) -> None:
        """Connect, check, and run the versioned migrations of this dialect."""
        ...

    async def close(self) -> None: ...

    async def write(self, fn: Callable[[Tx], Awaitable[T]]) -> T: ...

    async def read(self, fn: Callable[[Tx], Awaitable[T]]) -> T: ...


def run_callbacks(callbacks: Iterable[Callable[[], None]]) -> None:
    """Run :meth:`Tx.after_commit` callbacks of a committed batch; one that raises is
    logged and the others still run (the commit is done whatever an observer does)."""
    for callback in callbacks:
        try:
            callback()
        except Exception:
            logger.exception("an after-commit callback failed")


def run_to_completion(coro: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that never suspends (a transaction function over a
    synchronous :class:`Tx`). Raises RuntimeError, after closing it, if it does suspend:
    it awaited something other than its ``tx``."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("a store transaction awaited something other than its Tx")
