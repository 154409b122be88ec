"""The two dialects' schemas are the same logical schema, and stores written before the
portable schema (SQLite migrations 1-5) upgrade to it."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import asyncpg
import pytest

from tether.common.sqlitedb import Database, _split_sql
from tether.controller.store.controller_store import ControllerStore
from tether.controller.store.schema import POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS

from .conftest import open_driver

Columns = dict[str, dict[str, tuple[str, bool]]]  # table -> column -> (type class, not null)

SQLITE_TYPES = {"INTEGER": "int", "REAL": "float", "TEXT": "text", "BLOB": "bytes"}
POSTGRES_TYPES = {"bigint": "int", "double precision": "float", "text": "text",
                  "bytea": "bytes"}


def sqlite_columns(path: Path) -> Columns:
    with sqlite3.connect(path) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
        return {t: {c[1]: (SQLITE_TYPES[c[2]], bool(c[3]) or bool(c[5]))
                    for c in conn.execute(f"PRAGMA table_info({t})")} for t in tables}


def postgres_columns_parsed() -> Columns:
    """Tables and columns as POSTGRES_MIGRATIONS declare them (no server needed)."""
    out: Columns = {}
    for statement in (s for m in POSTGRES_MIGRATIONS for s in _split_sql(m)):
        added = re.match(r"ALTER TABLE (\w+) ADD COLUMN (\w+) (.*)\Z", statement, re.S)
        if added is not None:
            table, name, rest = added.groups()
            kind = next(v for k, v in POSTGRES_TYPES.items() if rest.lower().startswith(k))
            out[table][name] = (kind, "NOT NULL" in rest)
            continue
        created = re.match(r"CREATE TABLE (\w+) \((.*)\)\Z", statement, re.S)
        if created is None:
            # indexes, and data carried into new columns
            assert statement.startswith(("CREATE ", "UPDATE ")), statement
            continue
        table, body = created.groups()
        parts, depth, current = [], 0, ""
        for ch in body:
            depth += ch == "("
            depth -= ch == ")"
            if ch == "," and depth == 0:
                parts.append(current)
                current = ""
            else:
                current += ch
        parts.append(current)
        columns = {}
        for part in (" ".join(p.split()) for p in parts):
            if part.startswith(("PRIMARY KEY", "UNIQUE")):
                continue
            name, rest = part.split(" ", 1)
            kind = next(v for k, v in POSTGRES_TYPES.items() if rest.lower().startswith(k))
            columns[name] = (kind, "NOT NULL" in rest or "PRIMARY KEY" in rest)
        out[table] = columns
    return out


async def migrated_sqlite(tmp_path: Path) -> Path:
    path = tmp_path / "schema.db"
    driver = await open_driver("sqlite", str(path))
    await driver.close()
    return path


def without_pk_nullability(columns: Columns) -> dict[str, dict[str, str]]:
    return {t: {c: kind for c, (kind, _) in cols.items()} for t, cols in columns.items()}


async def test_the_postgres_migrations_declare_the_tables_and_columns_of_the_sqlite_ones(
        tmp_path: Path) -> None:
    sqlite = sqlite_columns(await migrated_sqlite(tmp_path))
    assert without_pk_nullability(postgres_columns_parsed()) == without_pk_nullability(sqlite)
    # NOT NULL where SQLite says so (SQLite lets a non-integer primary key be NULL)
    parsed = postgres_columns_parsed()
    for table, cols in sqlite.items():
        for column, (_, not_null) in cols.items():
            if not_null:
                assert parsed[table][column][1], (table, column)


async def test_a_migrated_postgres_database_has_the_tables_and_columns_of_sqlite(
        tmp_path: Path, pg_dsn: str) -> None:
    driver = await open_driver("postgres", pg_dsn)
    await driver.close()
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema='public' AND table_name <> 'schema_migrations'")
    finally:
        await conn.close()
    live: dict[str, dict[str, str]] = {}
    for r in rows:
        live.setdefault(r["table_name"], {})[r["column_name"]] = POSTGRES_TYPES[r["data_type"]]
    sqlite = sqlite_columns(await migrated_sqlite(tmp_path))
    assert live == without_pk_nullability(sqlite)


async def test_a_store_from_before_the_portable_schema_upgrades_with_its_order_and_epochs(
        tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = Database(path, migrations=SQLITE_MIGRATIONS[:5], durability="process")
    await old.open()

    def fill(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO nodes (node_id, public_key, labels, created_at) "
                     "VALUES ('n1', x'00', '{}', 0)")
        conn.executemany("INSERT INTO stream_cursors (node_id, stream, epoch, applied, last, "
                         "sent) VALUES ('n1', ?, ?, ?, 0, 0)",
                         [("evt", "9223372036854775807", 4), ("cmd", 77, 0)])
        conn.executemany(  # same created_at: only the insertion order tells them apart
            "INSERT INTO commands (command_id, node_id, kind, args, state, created_at, "
            "updated_at) VALUES (?, 'n1', 'exec', '{\"argv\":[\"true\"]}', 'queued', 5, 5)",
            [("c_b",), ("c_a",), ("c_c",)])
        conn.executemany("INSERT INTO edge_sessions (session_id, node_id, opened_at, resumed, "
                         "closed_at) VALUES (?, 'n1', 1, 0, 2)", [("s_2",), ("s_1",)])
    await old.write(fill)
    await old.close()
    driver = await open_driver("sqlite", str(path))
    try:
        store = ControllerStore(driver)
        rows, _ = await store.list_commands(node_id="n1", state=None, limit=10)
        assert [c.command_id for c in rows] == ["c_c", "c_a", "c_b"]  # newest first
        assert [s.session_id for s in await store.sessions("n1")] == ["s_1", "s_2"]
        opened = await store.open_session(
            node_id="n1", remote="r", previous_session=None, evt_epoch=(1 << 63) - 1,
            cmd_acked=0, runtime={}, sidecar={}, capabilities=[], labels={})
        assert not opened.evt_epoch_reset and opened.evt_applied == 4  # the text epoch kept
        assert opened.cmd_epoch == 77
        frames = await store.downlink_after("n1", 77, 0, 10)
        assert len(frames) == 3  # sequenced in their insertion order
        command = await store.get_command("c_b")
        assert command.q == 1
    finally:
        await driver.close()
    with sqlite3.connect(path) as conn:
        assert {r[0] for r in conn.execute("SELECT typeof(epoch) FROM stream_cursors")} == {
            "integer"}


@pytest.mark.parametrize("text", ["18446744073709551615", "x"])
async def test_a_stored_text_epoch_that_is_not_a_signed_64_bit_integer_is_forgotten(
        tmp_path: Path, text: str) -> None:
    path = tmp_path / "old.db"
    old = Database(path, migrations=SQLITE_MIGRATIONS[:5], durability="process")
    await old.open()
    await old.write(lambda conn: conn.execute(
        "INSERT INTO stream_cursors (node_id, stream, epoch) VALUES ('n1', 'evt', ?)",
        (text,)))
    await old.close()
    driver = await open_driver("sqlite", str(path))
    await driver.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT epoch FROM stream_cursors").fetchone()[0] is None
