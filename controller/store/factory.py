"""Which SQL driver a ``--store`` value names, built with this dialect's migrations.

``postgresql://...`` (or ``postgres://...``): :class:`~tether.controller.store.pg.PostgresDriver`
(asyncpg, imported only then) with ``POSTGRES_MIGRATIONS``. Anything else is the path of a
SQLite file: :class:`~tether.controller.store.sqlite.SqliteDriver` with
``SQLITE_MIGRATIONS``. The caller opens the driver (that runs the migrations) and closes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tether.common.sqlitedb import Database

from .schema import POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS
from .sql import SqlDriver
from .sqlite import SqliteDriver

if TYPE_CHECKING:
    from .pg import AdvisoryLock

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(store: str | Path) -> bool:
    return isinstance(store, str) and store.startswith(POSTGRES_SCHEMES)


def make_driver(store: str | Path, *, durability: str = "fsync") -> SqlDriver:
    """The driver for ``store`` (a PostgreSQL URL or a SQLite path), not yet open."""
    if is_postgres(store):
        from .pg import PostgresDriver  # asyncpg: only for a PostgreSQL store
        return PostgresDriver(str(store), migrations=POSTGRES_MIGRATIONS,
                              durability=durability)
    return SqliteDriver(Database(Path(store), migrations=SQLITE_MIGRATIONS,
                                 durability=durability))


def leader_lock(driver: SqlDriver) -> AdvisoryLock | None:
    """The lock that makes a replica leader (services/leader.py): PostgreSQL's advisory
    lock on a connection of its own; None on SQLite (one process per store: always leader)."""
    if driver.dialect != "postgres":
        return None
    from .pg import LEADER_LOCK_KEY, PostgresDriver
    assert isinstance(driver, PostgresDriver)
    return driver.advisory_lock(LEADER_LOCK_KEY)
