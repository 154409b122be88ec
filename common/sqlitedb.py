"""SQLite with one writer doing group commit, shared by the controller and node stores.

Contract:
* :meth:`Database.write` runs a closure on the writer thread inside a transaction that may
  hold many other closures; it returns only after the COMMIT that holds its effect (and,
  with ``durability="fsync"``, after that commit is fsynced). One thread hop and one fsync
  per batch, never per closure.
* Each closure runs in its own SAVEPOINT: one that raises is rolled back alone and its
  exception is re-raised to its caller; the rest of the batch commits.
* :meth:`Database.read` runs a closure on a separate read connection (WAL: readers see the
  last commit and never block the writer).
* The write queue is bounded (``max_pending``): producers wait when it is full.
* At open: a lock file keeps a second process off the store; ``PRAGMA quick_check`` refuses
  a damaged store; versioned migrations run in order.

Why not aiosqlite: it hops to its thread once per statement (~100 us each here); group commit
needs a whole batch of closures to run in one hop, which a dedicated thread gives directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from tether.common import failpoints
from tether.common.tasks import cancel_and_wait
from tether.protocol.errors import StoreError

logger = logging.getLogger(__name__)

T = TypeVar("T")
Closure = Callable[[sqlite3.Connection], Any]

DURABILITY_SYNCHRONOUS = {"fsync": "FULL", "process": "NORMAL"}


class StoreCorrupt(StoreError):
    default_code = "store_corrupt"


class StoreLocked(StoreError):
    default_code = "store_locked"


class Database:
    def __init__(self, path: Path, *, migrations: Sequence[str], durability: str = "fsync",
                 max_batch: int = 512, max_pending: int = 8192) -> None:
        if durability not in DURABILITY_SYNCHRONOUS:
            raise ValueError(f"durability must be one of {sorted(DURABILITY_SYNCHRONOUS)}")
        self.path = Path(path)
        self.migrations = list(migrations)
        self.durability = durability
        self.max_batch = max_batch
        self._queue: asyncio.Queue[tuple[Closure, asyncio.Future[Any], bool]] = asyncio.Queue(
            maxsize=max_pending)
        # Called in the writer thread after any rollback (of one closure's savepoint or of a
        # whole batch): a store that caches state between closures drops it here.
        self.on_rollback: Callable[[], None] | None = None
        # Called in the writer thread right after each batch's COMMIT (True) or its whole
        # ROLLBACK (False), before any caller hears of it (the soak's history recorder).
        self.on_commit: Callable[[bool], None] | None = None
        self._writer_pool = ThreadPoolExecutor(1, thread_name_prefix=f"db-w-{self.path.stem}")
        self._reader_pool = ThreadPoolExecutor(1, thread_name_prefix=f"db-r-{self.path.stem}")
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self.batches_total = 0
        self.writes_total = 0

    # -- lifecycle ----------------------------------------------------------------------

    async def open(self) -> None:
        """Lock, check, migrate, and start the writer task (owned by this object)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock()
        loop = asyncio.get_running_loop()
        try:
            self._wconn = await loop.run_in_executor(self._writer_pool, self._open_writer)
            self._rconn = await loop.run_in_executor(self._reader_pool, self._open_reader)
        except BaseException:
            self._unlock()
            raise
        self._writer_task = asyncio.create_task(self._writer_loop(), name=f"db-writer:{self.path}")

    async def close(self) -> None:
        """Finish queued writes, stop the writer, close connections, release the lock."""
        if self._writer_task is not None:
            if not self._writer_task.done():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(10):
                        await self._queue.join()
            await cancel_and_wait(self._writer_task)
            self._writer_task = None
        loop = asyncio.get_running_loop()
        if self._wconn is not None:
            await loop.run_in_executor(self._writer_pool, self._wconn.close)
            self._wconn = None
        if self._rconn is not None:
            await loop.run_in_executor(self._reader_pool, self._rconn.close)
            self._rconn = None
        self._writer_pool.shutdown(wait=True)
        self._reader_pool.shutdown(wait=True)
        self._unlock()

    def _lock(self) -> None:
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreLocked(
                f"store {self.path} is in use by another process (pid {holder}); "
                "stop it first or use another data dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
            self._lock_fd = None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    def _open_writer(self) -> sqlite3.Connection:
        existed = self.path.exists() and self.path.stat().st_size > 0
        try:
            conn = self._connect()
            if existed:
                result = conn.execute("PRAGMA quick_check").fetchone()[0]
                if result != "ok":
                    conn.close()
                    raise StoreCorrupt(
                        f"store {self.path} failed its integrity check ({result}); restore it "
                        "from a backup or move it aside to start with a new epoch")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={DURABILITY_SYNCHRONOUS[self.durability]}")
            conn.execute("PRAGMA foreign_keys=ON")
            self._migrate(conn)
        except sqlite3.DatabaseError as exc:
            raise StoreCorrupt(
                f"store {self.path} cannot be read as SQLite ({exc}); restore it from a "
                "backup or move it aside to start with a new epoch") from exc
        return conn

    def _open_reader(self) -> sqlite3.Connection:
        conn = self._connect()
        conn.execute("PRAGMA query_only=ON")
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(self.migrations):
            raise StoreCorrupt(f"store {self.path} has schema version {version}, newer than "
                               f"this release knows ({len(self.migrations)}); upgrade tether")
        for number, script in enumerate(self.migrations[version:], start=version + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _split_sql(script):
                    conn.execute(statement)
                    if failpoints.ARMED:  # after each statement, inside the transaction
                        failpoints.hit("store.mid_migration")
                conn.execute(f"PRAGMA user_version={number}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            logger.info("store migrated", extra={"store": str(self.path), "version": number})

    # -- work ---------------------------------------------------------------------------

    async def write(self, fn: Callable[[sqlite3.Connection], T], *,
                    savepoint: bool = True) -> T:
        """Run ``fn`` in the next group commit; returns its result after COMMIT.

        ``fn`` runs in its own savepoint, so that when it raises, what it did is undone and
        the rest of the batch commits. ``savepoint=False`` skips that (two statements fewer)
        and is only for a closure that executes a single statement: a failed statement
        leaves nothing behind."""
        if self._writer_task is None or self._writer_task.done():
            raise StoreError(f"store {self.path} is closed", code="unavailable")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._queue.put((fn, future, savepoint))
        return await future

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._rconn is None:
            raise StoreError(f"store {self.path} is closed", code="unavailable")
        conn = self._rconn
        return await asyncio.get_running_loop().run_in_executor(self._reader_pool, fn, conn)

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def _writer_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._commit(loop, batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _commit(self, loop: asyncio.AbstractEventLoop,
                      batch: list[tuple[Closure, asyncio.Future[Any], bool]]) -> None:
        live = [(fn, fut, sp) for fn, fut, sp in batch if not fut.cancelled()]
        if not live:
            return
        try:
            outcomes = await loop.run_in_executor(self._writer_pool, self._run_batch,
                                                  [(fn, sp) for fn, _, sp in live])
        except Exception as exc:
            logger.exception("store batch failed", extra={"store": str(self.path)})
            for _, fut, _ in live:
                if not fut.done():
                    fut.set_exception(StoreError(f"store write failed: {exc}",
                                                 code="unavailable"))
            return
        self.batches_total += 1
        self.writes_total += len(live)
        for (_, fut, _), (ok, value) in zip(live, outcomes, strict=True):
            if fut.done():
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    def _run_batch(self, fns: list[tuple[Closure, bool]]) -> list[tuple[bool, Any]]:
        conn = self._wconn
        assert conn is not None
        outcomes: list[tuple[bool, Any]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for fn, savepoint in fns:
                if not savepoint:
                    try:
                        outcomes.append((True, fn(conn)))
                    except Exception as exc:
                        outcomes.append((False, exc))
                    continue
                conn.execute("SAVEPOINT op")
                try:
                    outcomes.append((True, fn(conn)))
                    conn.execute("RELEASE op")
                except Exception as exc:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    self._rolled_back()
                    outcomes.append((False, exc))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._rolled_back()
            if self.on_commit is not None:
                self.on_commit(False)
            raise
        if self.on_commit is not None:
            self.on_commit(True)
        return outcomes

    def _rolled_back(self) -> None:
        if self.on_rollback is not None:
            self.on_rollback()


def _split_sql(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
