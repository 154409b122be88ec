"""The contract of a SQL driver (controller/store/sql.py), run against every driver: group
commit with one savepoint per transaction function, ``$n`` parameters, signed 64-bit integers
and bytes, rows changed, versioned migrations; and for PostgreSQL, migrations under a lock
when replicas open together, and ``unavailable`` while the server is down, then recovery.

PostgreSQL runs for real (tests/conftest.py starts it on loopback)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from tether.common.sqlitedb import Database
from tether.controller.store.pg import PostgresDriver, rows_changed
from tether.controller.store.sql import SqlDriver, Tx
from tether.controller.store.sqlite import SqliteDriver
from tether.protocol.errors import StoreError
from tether.tools.servers import PostgresServer

from ..conftest import started

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

ITEMS = {
    "postgres": "CREATE TABLE items (id BIGINT PRIMARY KEY, name TEXT NOT NULL, n BIGINT,"
                " data BYTEA, x DOUBLE PRECISION)",
    "sqlite": "CREATE TABLE items (id BIGINT PRIMARY KEY, name TEXT NOT NULL, n BIGINT,"
              " data BLOB, x REAL)",
}
EXTRA = "CREATE TABLE extra (k TEXT PRIMARY KEY)"

class Boom(Exception):
    pass


class Drivers:
    """Opens drivers of one dialect on the test's database, and closes them at the end."""

    def __init__(self, dialect: str, where: str) -> None:
        self.dialect = dialect
        self.where = where  # a DSN, or a file for SQLite
        self.opened: list[SqlDriver] = []

    async def open(self, migrations: Sequence[str]) -> SqlDriver:
        driver: SqlDriver
        if self.dialect == "postgres":
            driver = PostgresDriver(self.where, migrations=migrations, command_timeout_s=5.0)
        else:
            driver = SqliteDriver(Database(Path(self.where), migrations=migrations))
        await driver.open()
        self.opened.append(driver)
        return driver

    async def items(self) -> SqlDriver:
        """A driver whose schema is the items table."""
        return await self.open([ITEMS[self.dialect]])


@pytest.fixture(params=["postgres", "sqlite"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(dialect, where): this test's database. Sync, so that pg_dsn (an async fixture) is
    only set up, through getfixturevalue, for the postgres parameter."""
    dialect: str = request.param
    if dialect == "postgres":
        return dialect, request.getfixturevalue("pg_dsn")
    return dialect, str(tmp_path / "store.db")


@pytest.fixture
async def drivers(database: tuple[str, str]) -> AsyncIterator[Drivers]:
    """Drivers of the parameter's dialect, all on one database of this test."""
    dialect, where = database
    made = Drivers(dialect, where)
    try:
        yield made
    finally:
        for driver in reversed(made.opened):
            await driver.close()


def batches_total(driver: SqlDriver) -> int:
    """Transactions the driver's writer committed (its group-commit counter)."""
    counter = getattr(driver, "batches_total", None)
    if counter is None:  # SqliteDriver keeps it on its Database
        counter = driver.db.batches_total  # type: ignore[attr-defined]
    return int(counter)


async def names(driver: SqlDriver) -> list[str]:
    async def fn(tx: Tx) -> list[str]:
        return [row["name"] for row in await tx.fetch("SELECT name FROM items ORDER BY id")]
    return await driver.read(fn)


def insert(item_id: int, name: str, *, then_raise: bool = False
           ) -> Callable[[Tx], Awaitable[int]]:
    async def fn(tx: Tx) -> int:
        changed = await tx.execute("INSERT INTO items (id, name) VALUES ($1, $2)",
                                   item_id, name)
        if then_raise:
            raise Boom(name)
        return changed
    return fn


async def test_a_write_returns_after_commit_and_a_read_then_sees_it(
        drivers: Drivers) -> None:
    driver = await drivers.items()
    assert await driver.write(insert(1, "one")) == 1
    assert await names(driver) == ["one"]


async def test_a_raising_function_is_rolled_back_alone_and_the_rest_of_its_batch_commits(
        drivers: Drivers) -> None:
    driver = await drivers.items()
    before = batches_total(driver)
    results = await asyncio.gather(
        driver.write(insert(1, "kept")), driver.write(insert(2, "undone", then_raise=True)),
        driver.write(insert(3, "also kept")), return_exceptions=True)
    assert results[0] == 1 and results[2] == 1
    assert isinstance(results[1], Boom) and str(results[1]) == "undone"
    assert batches_total(driver) - before == 1  # the three shared one transaction
    assert await names(driver) == ["kept", "also kept"]


async def test_a_failing_statement_undoes_only_its_own_function(
        drivers: Drivers) -> None:
    driver = await drivers.items()
    await driver.write(insert(1, "first"))
    results = await asyncio.gather(
        driver.write(insert(1, "duplicate key")), driver.write(insert(2, "second")),
        return_exceptions=True)
    assert isinstance(results[0], Exception) and not isinstance(results[0], StoreError)
    assert results[1] == 1
    assert await names(driver) == ["first", "second"]


async def test_concurrent_writes_are_grouped_into_few_transactions(
        drivers: Drivers) -> None:
    driver = await drivers.items()
    before = batches_total(driver)
    writes = 200
    assert await asyncio.gather(*(driver.write(insert(i, f"n{i}"))
                                  for i in range(writes))) == [1] * writes
    assert batches_total(driver) - before <= 3  # one per writer wake-up, not per write
    assert len(await names(driver)) == writes


async def test_numbered_parameters_bind_by_number_and_may_repeat(
        drivers: Drivers) -> None:
    driver = await drivers.items()

    async def fn(tx: Tx) -> Any:
        await tx.execute("INSERT INTO items (id, name, n) VALUES ($2, $1, $2)", "seven", 7)
        return await tx.fetchrow("SELECT id, name, n FROM items WHERE name = $1", "seven")

    row = await driver.write(fn)
    assert row is not None and (row["id"], row[1], row["n"]) == (7, "seven", 7)


async def test_int64_extremes_bytes_floats_text_and_null_round_trip(
        drivers: Drivers) -> None:
    driver = await drivers.items()
    values = [(1, "min", INT64_MIN, b"\x00\xff" * 100, -1.5),
              (2, "max", INT64_MAX, b"", 1e300),
              (3, "ünïcode ✓", 0, None, None)]

    async def fn(tx: Tx) -> None:
        await tx.executemany("INSERT INTO items (id, name, n, data, x) VALUES ($1, $2, $3, $4, $5)",
                             values)

    await driver.write(fn)

    async def read(tx: Tx) -> list[tuple[Any, ...]]:
        rows = await tx.fetch("SELECT id, name, n, data, x FROM items ORDER BY id")
        return [(r["id"], r["name"], r["n"], None if r["data"] is None else bytes(r["data"]),
                 r["x"]) for r in rows]

    assert await driver.read(read) == values


async def test_execute_returns_the_rows_changed_and_fetchval_none_without_a_row(
        drivers: Drivers) -> None:
    driver = await drivers.items()

    async def fn(tx: Tx) -> tuple[int, int, int, int, Any, Any]:
        await tx.executemany("INSERT INTO items (id, name) VALUES ($1, $2)",
                             [(i, "x") for i in range(5)])
        updated = await tx.execute("UPDATE items SET n = 1 WHERE id < $1", 3)
        ignored = await tx.execute(
            "INSERT INTO items (id, name) VALUES ($1, 'y') ON CONFLICT (id) DO NOTHING", 0)
        upserted = await tx.execute(
            "INSERT INTO items (id, name) VALUES ($1, 'y') ON CONFLICT (id)"
            " DO UPDATE SET name = excluded.name", 0)
        deleted = await tx.execute("DELETE FROM items WHERE id >= $1", 1)
        return (updated, ignored, upserted, deleted,
                await tx.fetchval("SELECT name FROM items WHERE id = $1", 99),
                await tx.fetchrow("SELECT name FROM items WHERE id = $1", 99))

    assert await driver.write(fn) == (3, 0, 1, 4, None, None)


async def test_migrations_run_once_each_in_order_and_a_newer_schema_is_refused(
        drivers: Drivers) -> None:
    first = await drivers.items()
    await first.write(insert(1, "survives"))
    await first.close()

    # Reopening runs only the new version: items would fail to be created twice.
    second = await drivers.open([ITEMS[drivers.dialect], EXTRA])

    async def fn(tx: Tx) -> int:
        return await tx.execute("INSERT INTO extra (k) VALUES ($1)", "k")

    assert await second.write(fn) == 1
    assert await names(second) == ["survives"]
    await second.close()

    with pytest.raises(StoreError, match="newer than this release") as info:
        await drivers.items()
    assert info.value.code == "store_corrupt"


async def test_three_replicas_opening_at_once_migrate_once(pg_dsn: str) -> None:
    migrations = [ITEMS["postgres"] + "; CREATE TABLE opened (n BIGINT);"
                  " INSERT INTO opened VALUES (1)",
                  EXTRA]
    drivers = [PostgresDriver(pg_dsn, migrations=migrations) for _ in range(3)]
    try:
        await asyncio.gather(*(driver.open() for driver in drivers))

        async def fn(tx: Tx) -> tuple[int, int]:
            return (await tx.fetchval("SELECT count(*) FROM opened"),
                    await tx.fetchval("SELECT max(version) FROM schema_migrations"))

        assert [await driver.read(fn) for driver in drivers] == [(1, 2)] * 3
    finally:
        for driver in drivers:
            await driver.close()


async def test_close_finishes_the_writes_already_queued(drivers: Drivers) -> None:
    driver = await drivers.items()
    writes = [asyncio.ensure_future(driver.write(insert(i, f"n{i}"))) for i in range(50)]
    # Tasks take their first step in the order they were created: every write is queued
    # before close() starts.
    await asyncio.ensure_future(driver.close())
    assert [w.result() for w in writes] == [1] * 50
    reopened = await drivers.items()
    assert len(await names(reopened)) == 50


async def test_a_write_after_close_is_unavailable(pg_dsn: str) -> None:
    driver = PostgresDriver(pg_dsn, migrations=[ITEMS["postgres"]])
    await driver.open()
    await driver.close()
    with pytest.raises(StoreError) as info:
        await driver.write(insert(1, "late"))
    assert info.value.code == "unavailable"


@pytest.fixture
async def own_postgres() -> AsyncIterator[PostgresServer]:
    """A PostgreSQL of this test's own, to stop or freeze without disturbing the others."""
    async with started(PostgresServer()) as server:
        yield server


async def assert_unavailable_within(timeout_s: float,
                                    attempt: Callable[[], Awaitable[object]]) -> None:
    started = time.monotonic()
    with pytest.raises(StoreError) as info:
        await attempt()
    assert info.value.code == "unavailable" and "postgresql" in info.value.message
    assert time.monotonic() - started < 2 * timeout_s + 1


async def wait_for_recovery(driver: SqlDriver, item_id: int) -> None:
    deadline = time.monotonic() + 20
    while True:  # the connections are remade on a later call; poll with a deadline
        try:
            await driver.write(insert(item_id, "after"))
            return
        except StoreError as exc:
            assert exc.code == "unavailable"
            assert time.monotonic() < deadline, "the driver did not recover"
            await asyncio.sleep(0.1)


@pytest.mark.parametrize("outage", ["stopped", "frozen"])
async def test_a_server_that_is_down_or_hung_is_unavailable_within_the_timeout_then_recovers(
        own_postgres: PostgresServer, outage: str) -> None:
    timeout_s = 1.0
    driver = PostgresDriver(await own_postgres.create_database("outage"),
                            migrations=[ITEMS["postgres"]], connect_timeout_s=timeout_s,
                            command_timeout_s=timeout_s)
    try:
        await driver.open()
        await driver.write(insert(1, "before"))
        if outage == "stopped":
            await own_postgres.stop()
        else:
            own_postgres.freeze()

        await assert_unavailable_within(timeout_s,
                                        lambda: driver.write(insert(2, "while down")))
        await assert_unavailable_within(timeout_s, lambda: names(driver))

        if outage == "stopped":
            await own_postgres.start()
        else:
            own_postgres.thaw()
        await wait_for_recovery(driver, 3)
        assert await names(driver) == ["before", "after"]
    finally:
        await driver.close()


async def test_opening_against_no_server_is_unavailable_within_the_timeout() -> None:
    from tether.tools.servers import free_port

    driver = PostgresDriver(f"postgresql://tether@127.0.0.1:{free_port()}/none",
                            migrations=[], connect_timeout_s=2.0)
    started = time.monotonic()
    with pytest.raises(StoreError) as info:
        await driver.open()
    assert info.value.code == "unavailable" and time.monotonic() - started < 5


async def test_a_database_that_does_not_exist_is_unavailable_and_named(
        postgres_server: PostgresServer) -> None:
    driver = PostgresDriver(postgres_server.dsn("no_such_db"), migrations=[])
    with pytest.raises(StoreError, match="no_such_db") as info:
        await driver.open()
    assert info.value.code == "unavailable"


@pytest.mark.parametrize(("status", "rows"), [
    ("INSERT 0 3", 3), ("UPDATE 2", 2), ("DELETE 0", 0), ("SELECT 5", 5),
    ("CREATE TABLE", 0), ("BEGIN", 0),
])
def test_rows_changed_are_read_from_the_command_status(status: str, rows: int) -> None:
    assert rows_changed(status) == rows
