"""The PostgreSQL driver of the store (asyncpg): :class:`PostgresDriver` implements
:class:`~tether.controller.store.sql.SqlDriver`.

Contract (beside the one in ``sql.py``):

* Group commit: :meth:`PostgresDriver.write` queues ``fn``; one writer task (owned by the
  driver, cancelled and awaited by :meth:`close`) takes up to ``max_batch`` queued functions
  and runs them in ONE transaction, each in its own savepoint. A function that raises is
  rolled back alone and its exception re-raised to its caller; the others commit. A caller
  gets its result only after that COMMIT (durable: the server's ``fsync`` and
  ``synchronous_commit=on`` for ``durability="fsync"``).
* The write queue is bounded (``max_pending``): producers wait when it is full. The writer
  has a connection of its own (so readers never starve it), reconnected after a failure;
  reads share a pool: ``max_connections`` counts both (a replica's leader lock,
  :class:`AdvisoryLock`, holds one more). Every statement has
  ``command_timeout_s`` and every connection attempt ``connect_timeout_s``.
* A caller cancelled while its write is queued is dropped from the batch; one cancelled
  while its batch runs may still have its effect committed.
* A lost or refused connection, a timed-out statement, or a closed driver surfaces as
  ``StoreError(code="unavailable")``, never as a raw asyncpg exception; the pool reconnects
  on the next call once the server is back. SQL errors of a function's own statements
  (a constraint, a syntax error) reach its caller as asyncpg raised them.
* When a batch's COMMIT itself fails, every caller in it gets ``unavailable``: the outcome is
  unknown to them (the commit may have happened), so a caller retries only what is
  idempotent. The driver never retries a write.
* Versioned migrations: ``migrations[i]`` is schema version ``i + 1``; the version is kept in
  ``schema_migrations`` and pending versions run in one transaction under
  ``pg_advisory_xact_lock``, so replicas starting together migrate once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import asyncpg

from tether.common import failpoints
from tether.common.tasks import cancel_and_wait
from tether.protocol.errors import StoreError

from .sql import Row, Tx, run_callbacks

logger = logging.getLogger(__name__)

T = TypeVar("T")
TxFunction = Callable[[Tx], Awaitable[Any]]

SYNCHRONOUS_COMMIT = {"fsync": "on", "process": "off"}

# pg_advisory_xact_lock key of schema migrations: b"tether\0\1" as a signed 64-bit integer.
MIGRATION_LOCK_KEY = int.from_bytes(b"tether\x00\x01", "big", signed=True)
# pg_try_advisory_lock key of the leader (services/leader.py): b"tether\0\2".
LEADER_LOCK_KEY = int.from_bytes(b"tether\x00\x02", "big", signed=True)

# What "the server cannot be reached" looks like from asyncpg: the socket (OSError), a
# connection lost or refused, a server shutting down or not yet accepting, a statement past
# command_timeout (TimeoutError), a pooled connection found closed (a plain InterfaceError).
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,  # includes ConnectionDoesNotExistError
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    # The connection's protocol state broke under it ("cannot switch to state 15; another
    # operation is in progress"), as when the server shuts down mid-batch: the connection
    # is dropped like a lost one, and callers hear unavailable, not a failed write.
    asyncpg.InternalClientError,
    # Refused at connect (a wrong password or role, a database that does not exist): the
    # store cannot be reached as configured; the message names the cause for the operator.
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidCatalogNameError,
)


def is_connection_error(exc: BaseException) -> bool:
    """True when ``exc`` says the server cannot be reached (not that a statement is wrong).

    InterfaceError's subclasses are the caller's mistakes (a value that does not encode as
    its parameter's type, a bad DSN option); InterfaceError itself is "connection closed"."""
    return isinstance(exc, CONNECTION_ERRORS) or type(exc) is asyncpg.InterfaceError


class PgTx:
    """:class:`~tether.controller.store.sql.Tx` over one asyncpg connection."""

    dialect = "postgres"

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self.callbacks: list[Callable[[], None]] = []  # after_commit, for the whole batch

    def after_commit(self, callback: Callable[[], None]) -> None:
        self.callbacks.append(callback)

    async def execute(self, sql: str, *args: Any) -> int:
        return rows_changed(await self._conn.execute(sql, *args))

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self._conn.executemany(sql, rows)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return list(await self._conn.fetch(sql, *args))

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        row: Row | None = await self._conn.fetchrow(sql, *args)
        return row

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._conn.fetchval(sql, *args)


def rows_changed(status: str) -> int:
    """Rows changed by a statement, from asyncpg's command status: ``"INSERT 0 3"`` -> 3,
    ``"UPDATE 2"`` -> 2, ``"CREATE TABLE"`` -> 0."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


class PostgresDriver:
    """:class:`~tether.controller.store.sql.SqlDriver` on a PostgreSQL server (see the
    module's contract)."""

    dialect = "postgres"

    def __init__(self, dsn: str, *, migrations: Sequence[str], durability: str = "fsync",
                 max_batch: int = 512, max_pending: int = 8192, max_connections: int = 8,
                 connect_timeout_s: float = 5.0, command_timeout_s: float = 10.0,
                 migrate_timeout_s: float = 120.0) -> None:
        if durability not in SYNCHRONOUS_COMMIT:
            raise ValueError(f"durability must be one of {sorted(SYNCHRONOUS_COMMIT)}")
        if max_connections < 2:
            raise ValueError("max_connections must be >= 2 (the writer and a reader)")
        self.dsn = dsn
        self.migrations = list(migrations)
        self.durability = durability
        self.max_batch = max_batch
        self.max_connections = max_connections
        self.connect_timeout_s = connect_timeout_s
        self.command_timeout_s = command_timeout_s
        self.migrate_timeout_s = migrate_timeout_s
        self._queue: asyncio.Queue[tuple[TxFunction, asyncio.Future[Any]]] = asyncio.Queue(
            maxsize=max_pending)
        self._pool: asyncpg.Pool | None = None  # readers and migrations
        self._wconn: asyncpg.Connection | None = None  # the writer's; only its task uses it
        self._writer_task: asyncio.Task[None] | None = None
        self.batches_total = 0  # transactions committed by the writer (tests count groups)
        self.writes_total = 0

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect (``unavailable`` if the server cannot be reached within
        ``connect_timeout_s``), run pending migrations, start the writer task."""
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                self._pool = await asyncpg.create_pool(
                    self.dsn, min_size=0, max_size=self.max_connections - 1,
                    **self._connect_options())
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            raise self._unavailable("cannot connect", exc) from exc
        try:
            await self._migrate()
        except BaseException:
            await self._close_pool()
            raise
        self._writer_task = asyncio.create_task(self._writer_loop(), name="pg-writer")

    async def close(self) -> None:
        """Finish queued writes (bounded), stop the writer, close the pool. Writes still
        queued after that get ``unavailable``."""
        if self._writer_task is not None:
            if not self._writer_task.done():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.command_timeout_s):
                        await self._queue.join()
            await cancel_and_wait(self._writer_task)
            self._writer_task = None
        while not self._queue.empty():
            _, fut = self._queue.get_nowait()
            self._queue.task_done()
            if not fut.done():
                fut.set_exception(StoreError("store is closed", code="unavailable"))
        await self._close_pool()

    def _connect_options(self) -> dict[str, Any]:
        return {"command_timeout": self.command_timeout_s, "timeout": self.connect_timeout_s,
                "server_settings": {
                    "synchronous_commit": SYNCHRONOUS_COMMIT[self.durability],
                    "application_name": "tether-controller"}}

    async def _writer_connection(self) -> asyncpg.Connection:
        if self._wconn is None or self._wconn.is_closed():
            self._wconn = None
            async with asyncio.timeout(self.connect_timeout_s):
                self._wconn = await asyncpg.connect(self.dsn, **self._connect_options())
        return self._wconn

    def _drop_writer_connection(self) -> None:
        # After a failure its state is unknown (a statement may still run): start afresh.
        conn, self._wconn = self._wconn, None
        if conn is not None:
            conn.terminate()

    async def _close_pool(self) -> None:
        conn, self._wconn = self._wconn, None
        if conn is not None:
            try:
                await conn.close(timeout=self.command_timeout_s)
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                conn.terminate()
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            async with asyncio.timeout(self.command_timeout_s):
                await pool.close()
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            pool.terminate()

    async def _migrate(self) -> None:
        assert self._pool is not None
        try:
            async with asyncio.timeout(self.migrate_timeout_s), \
                    self._pool.acquire(timeout=self.connect_timeout_s) as conn, \
                    conn.transaction():
                # Serialises replicas that start together; released at COMMIT.
                await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY,
                                   timeout=self.migrate_timeout_s)
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version BIGINT PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)")
                version = await conn.fetchval(
                    "SELECT coalesce(max(version), 0) FROM schema_migrations")
                if version > len(self.migrations):
                    raise StoreError(
                        f"store has schema version {version}, newer than this release knows "
                        f"({len(self.migrations)}); upgrade tether", code="store_corrupt")
                for number, script in enumerate(self.migrations[version:], start=version + 1):
                    # No arguments: the simple protocol, so a script may hold many statements.
                    await conn.execute(script, timeout=self.migrate_timeout_s)
                    if failpoints.ARMED:  # a script run, the transaction open (@N: the Nth)
                        failpoints.hit("store.mid_migration")
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                        number, time.time())
                    logger.info("store migrated", extra={"store": "postgres",
                                                         "version": number})
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            raise self._unavailable("migration interrupted", exc) from exc

    # -- work -----------------------------------------------------------------------------

    async def write(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        """Run ``fn`` in the next group commit; its result after COMMIT (see the module)."""
        if self._writer_task is None or self._writer_task.done():
            raise StoreError("store is closed", code="unavailable")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._queue.put((fn, future))
        return await future

    async def read(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        """Run ``fn`` on a pooled connection, in a read-only transaction (one snapshot for
        all its statements) that sees the last commit."""
        pool = self._pool
        if pool is None:
            raise StoreError("store is closed", code="unavailable")
        try:
            async with pool.acquire(timeout=self.connect_timeout_s) as conn, \
                    conn.transaction(isolation="repeatable_read", readonly=True):
                return await fn(PgTx(conn))
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            raise self._unavailable("read failed", exc) from exc

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def connect(self, *, server_settings: dict[str, str] | None = None
                      ) -> asyncpg.Connection:
        """A dedicated connection, outside the pool, with the driver's DSN, timeouts and
        settings, plus ``server_settings`` (``unavailable`` if it cannot be opened within
        ``connect_timeout_s``): for what lives as long as a connection, like a session-level
        advisory lock. The caller closes it."""
        options = self._connect_options()
        options["server_settings"] = {**options["server_settings"], **(server_settings or {})}
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                return await asyncpg.connect(self.dsn, **options)
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            raise self._unavailable("cannot connect", exc) from exc

    def advisory_lock(self, key: int) -> AdvisoryLock:
        """A session-level advisory lock on ``key``, on a dedicated connection (not yet
        connected; see :class:`AdvisoryLock`)."""
        return AdvisoryLock(self, key)

    async def _writer_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._commit(batch)
            except asyncio.CancelledError:
                self._drop_writer_connection()  # it may be mid-statement
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(StoreError("store is closed", code="unavailable"))
                raise
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _commit(self, batch: list[tuple[TxFunction, asyncio.Future[Any]]]) -> None:
        live = [(fn, fut) for fn, fut in batch if not fut.cancelled()]
        if not live:
            return
        try:
            conn = await self._writer_connection()
            outcomes = await self._run_batch(conn, [fn for fn, _ in live])
        except Exception as exc:
            connection_lost = is_connection_error(exc)
            self._drop_writer_connection()
            if not connection_lost:  # e.g. a deferred constraint failing at COMMIT
                logger.exception("store batch failed", extra={"store": "postgres"})
            for _, fut in live:
                if not fut.done():
                    fut.set_exception(
                        self._unavailable("write failed", exc) if connection_lost
                        else StoreError(f"store write failed: {exc}", code="unavailable"))
            return
        self.batches_total += 1
        self.writes_total += len(live)
        for (_, fut), (ok, value) in zip(live, outcomes, strict=True):
            if fut.done():
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    @staticmethod
    async def _run_batch(conn: asyncpg.Connection, fns: list[TxFunction]
                         ) -> list[tuple[bool, Any]]:
        """One transaction, a savepoint per function; (ok, result or exception) for each.

        The transaction is driven by hand rather than with ``conn.transaction()`` so that
        closing one savepoint and opening the next is one round trip (a simple-protocol
        query may hold several statements): a function costs its own statements plus one.
        A failed function costs one more (ROLLBACK TO, which keeps the savepoint). Raises
        what a connection failure raises; any exception leaves the connection mid-
        transaction, so the caller drops it."""
        outcomes: list[tuple[bool, Any]] = []
        tx = PgTx(conn)
        await conn.execute("BEGIN; SAVEPOINT op")
        for index, fn in enumerate(fns):
            if index:
                await conn.execute("RELEASE SAVEPOINT op; SAVEPOINT op")
            mark = len(tx.callbacks)
            try:
                result = await fn(tx)
            except Exception as exc:
                if is_connection_error(exc):
                    raise  # the whole batch is lost: every caller hears unavailable
                await conn.execute("ROLLBACK TO SAVEPOINT op")
                del tx.callbacks[mark:]  # rolled back with its work
                outcomes.append((False, exc))
            else:
                outcomes.append((True, result))
        # COMMIT of a transaction the server has aborted answers ROLLBACK, not an error.
        status = await conn.execute("COMMIT")
        if status != "COMMIT":
            raise StoreError(f"postgresql ended the batch with {status}, not COMMIT",
                             code="unavailable")
        run_callbacks(tx.callbacks)
        return outcomes

    def _unavailable(self, what: str, exc: BaseException) -> StoreError:
        detail = type(exc).__name__ + (f": {exc}" if str(exc) else "")
        return StoreError(f"postgresql {what} ({detail}); check that the server is up and "
                          "reachable", code="unavailable")


# The lock's connection: the server probes it when idle, so a leader cut off by the network
# (its socket never closed) loses the lock within about 10 + 5 * 3 s, not the kernel's hours.
LOCK_KEEPALIVES = {"tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5",
                   "tcp_keepalives_count": "3"}


class AdvisoryLock:
    """A PostgreSQL session-level advisory lock (``pg_try_advisory_lock(key)``) held on a
    connection of its own: it is held exactly as long as that connection lives, so a
    process that dies (or whose connection the server ends) releases it, and another may
    take it. Advisory locks are per database.

    No method raises when the server cannot be reached: the lock is then not held (and
    :meth:`try_acquire` answers False); its connection is dropped and the next attempt
    opens a new one. Every wait is bounded by the driver's ``connect_timeout_s`` or
    ``command_timeout_s``. One task at a time uses it (its owner, services/leader.py)."""

    def __init__(self, driver: PostgresDriver, key: int) -> None:
        self._driver = driver
        self.key = key
        self._conn: asyncpg.Connection | None = None
        self._held = False

    async def try_acquire(self) -> bool:
        """Take the lock if no other session holds it; True when this one holds it now."""
        if self._held and await self.held():
            return True
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = None
                self._conn = await self._driver.connect(server_settings=LOCK_KEEPALIVES)
            self._held = bool(await self._conn.fetchval(
                "SELECT pg_try_advisory_lock($1)", self.key,
                timeout=self._driver.command_timeout_s))
        except StoreError as exc:
            logger.debug("advisory lock: %s", exc)
            self._drop()
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            self._drop()
        return self._held

    async def held(self) -> bool:
        """Whether the lock is still held: its connection answers (a round trip, bounded
        by ``command_timeout_s``). A lost connection means a lost lock."""
        if not self._held or self._conn is None or self._conn.is_closed():
            self._drop()
            return False
        try:
            await self._conn.fetchval("SELECT 1", timeout=self._driver.command_timeout_s)
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            self._drop()
            return False
        return True

    async def release(self) -> None:
        """Give the lock up: its connection is closed (the server releases the lock with
        it), bounded; then terminated if it did not close in time."""
        conn, self._conn, self._held = self._conn, None, False
        if conn is None:
            return
        try:
            await conn.close(timeout=self._driver.command_timeout_s)
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            conn.terminate()

    def _drop(self) -> None:
        conn, self._conn, self._held = self._conn, None, False
        if conn is not None:
            conn.terminate()
