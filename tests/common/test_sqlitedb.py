"""The group-commit store: real SQLite files."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from tether.common.sqlitedb import Database, StoreCorrupt, StoreLocked

SCHEMA = ["CREATE TABLE t (v INTEGER NOT NULL)"]


def insert(v: int):  # type: ignore[no-untyped-def]
    def fn(conn: sqlite3.Connection) -> int:
        if v < 0:
            raise ValueError(f"negative {v}")
        conn.execute("INSERT INTO t VALUES (?)", (v,))
        return v
    return fn


async def test_concurrent_writes_share_one_commit_and_a_failing_one_is_rolled_back_alone(
        tmp_path: Path) -> None:
    db = Database(tmp_path / "s.db", migrations=SCHEMA)
    await db.open()
    try:
        results = await asyncio.gather(*[db.write(insert(v)) for v in (1, 2, -3, 4)],
                                       return_exceptions=True)
        assert results[:2] == [1, 2] and results[3] == 4
        assert isinstance(results[2], ValueError)
        assert db.batches_total == 1
        rows = await db.read(lambda c: [r[0] for r in c.execute("SELECT v FROM t ORDER BY v")])
        assert rows == [1, 2, 4]
    finally:
        await db.close()


async def test_a_second_process_on_the_same_store_is_refused(tmp_path: Path) -> None:
    db = Database(tmp_path / "s.db", migrations=SCHEMA)
    await db.open()
    try:
        with pytest.raises(StoreLocked, match="in use by another process"):
            await Database(tmp_path / "s.db", migrations=SCHEMA).open()
    finally:
        await db.close()
    again = Database(tmp_path / "s.db", migrations=SCHEMA)
    await again.open()
    await again.close()


async def test_a_file_that_is_not_sqlite_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not a database " * 400)
    with pytest.raises(StoreCorrupt, match="restore it from a backup"):
        await Database(path, migrations=SCHEMA).open()


async def test_a_damaged_store_fails_its_integrity_check(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    db = Database(path, migrations=SCHEMA, durability="process")
    await db.open()
    for chunk in range(20):
        await db.write(lambda c, chunk=chunk: c.executemany(
            "INSERT INTO t VALUES (?)", [(chunk * 1000 + i,) for i in range(500)]))
    await db.write(lambda c: c.execute("CREATE INDEX t_v ON t (v)"))
    await db.close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(path.read_bytes())
    page = 4096
    for offset in range(3 * page, len(data) - page, 2 * page):  # scribble over pages
        data[offset + 100:offset + 400] = b"\xff" * 300
    path.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupt):
        await Database(path, migrations=SCHEMA).open()


async def test_a_store_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    db = Database(tmp_path / "s.db", migrations=[*SCHEMA, "CREATE TABLE u (x)"])
    await db.open()
    await db.close()
    with pytest.raises(StoreCorrupt, match="newer than this release"):
        await Database(tmp_path / "s.db", migrations=SCHEMA).open()


async def test_writes_after_close_are_refused(tmp_path: Path) -> None:
    db = Database(tmp_path / "s.db", migrations=SCHEMA)
    await db.open()
    await db.close()
    with pytest.raises(Exception, match="closed"):
        await db.write(insert(1))
