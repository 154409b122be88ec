"""The store's contract suite runs against every backend: ``sqlite`` always, ``postgres`` on
the PostgreSQL that tests/conftest.py starts on loopback (skipped with the reason when it
cannot start, failed under CI)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tether.common.sqlitedb import Database
from tether.controller.store.controller_store import ControllerStore
from tether.controller.store.quotas import StoreQuotas
from tether.controller.store.schema import POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS
from tether.controller.store.sql import SqlDriver
from tether.controller.store.sqlite import SqliteDriver

QUOTAS = StoreQuotas(node_events_per_node=50, log_bytes_per_node=1 << 20,
                     node_log_chunks_per_node=20)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(dialect, where). Sync, so that pg_dsn (async) is set up only for ``postgres``."""
    dialect: str = request.param
    if dialect == "postgres":
        return dialect, request.getfixturevalue("pg_dsn")
    return dialect, str(tmp_path / "controller.db")


async def open_driver(dialect: str, where: str) -> SqlDriver:
    driver: SqlDriver
    if dialect == "postgres":
        from tether.controller.store.pg import PostgresDriver
        driver = PostgresDriver(where, migrations=POSTGRES_MIGRATIONS, durability="process")
    else:
        driver = SqliteDriver(Database(Path(where), migrations=SQLITE_MIGRATIONS,
                                       durability="process"))
    await driver.open()
    return driver


@pytest.fixture
async def store(backend: tuple[str, str]) -> AsyncIterator[ControllerStore]:
    driver = await open_driver(*backend)
    try:
        yield ControllerStore(driver, quotas=QUOTAS, max_dead_letters_per_node=3)
    finally:
        await driver.close()
