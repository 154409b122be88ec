"""Store contract: byte budgets per node for what peers make the controller store (issue 11
item 3, store/quotas.py), on every backend, in process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tether.common.sqlitedb import Database
from tether.controller.store.controller_store import ControllerStore
from tether.controller.store.quotas import ROW_OVERHEAD, StoreQuotas, node_event_refusal
from tether.controller.store.schema import MIGRATIONS
from tether.controller.store.sql import Tx

from .conftest import open_driver

QUOTAS = StoreQuotas(node_event_max_bytes=64 << 10, node_events_bytes_per_node=1 << 20,
                     node_events_per_node=10_000, log_bytes_per_command=1 << 20,
                     log_bytes_per_node=2 << 20, node_log_bytes_per_node=512 << 10,
                     node_log_chunks_per_node=100)


@pytest.fixture
async def store(backend: tuple[str, str]) -> AsyncIterator[ControllerStore]:
    driver = await open_driver(*backend)
    try:
        yield ControllerStore(driver, quotas=QUOTAS)
    finally:
        await driver.close()


async def stored_bytes(store: ControllerStore, sql: str, *args: object) -> int:
    """What the rows really hold (portable SQL, ``$n`` parameters)."""
    async def fn(tx: Tx) -> int:
        return int(await tx.fetchval(sql, *args) or 0)
    return await store.driver.read(fn)


async def insert_command(store: ControllerStore, command_id: str) -> None:
    async def fn(tx: Tx) -> None:
        await tx.execute("INSERT INTO commands (command_id, node_id, kind, args, state, "
                         "created_at, updated_at) VALUES ($1, 'n1', 'exec', '{}', 'running', "
                         "0, 0)", command_id)
    await store.driver.write(fn)


async def events(store: ControllerStore, node_id: str, items: list[tuple[str, object]]
                 ) -> list[object]:
    return list(await store.record_node_events(node_id, items))


async def test_a_node_event_over_the_per_event_limit_is_refused_and_not_stored(
        store: ControllerStore) -> None:
    big = {"blob": "x" * 1_000_000}  # one of the 300 x 1 MB events of the issue
    assert node_event_refusal("flood", big, QUOTAS) is not None
    assert store.node_event_refusal("flood", {"ok": 1}) is None
    refusals = await events(store, "n1", [("flood", big)] * 5 + [("ok", {"n": 1})])
    assert [r is not None for r in refusals] == [True] * 5 + [False]
    first = refusals[0]
    assert first is not None and first.code == "quota_exceeded"  # type: ignore[attr-defined]
    assert await stored_bytes(store, "SELECT sum(length(data)) FROM node_events") < 5_000
    kinds = [e.kind for e in await store.node_events("n1")]
    assert kinds.count("node.event.refused") == 5 and "ok" in kinds
    usage = (await store.node_usage("n1"))["events"]
    assert usage["refused_items"] == 5 and usage["refused_bytes"] > 5_000_000


async def test_a_node_keeps_its_newest_events_within_its_byte_budget(
        store: ControllerStore) -> None:
    blob = "y" * 50_000
    await events(store, "n1", [("e", {"i": i, "blob": blob}) for i in range(100)])  # ~5 MB
    await events(store, "n2", [("e", {"i": 0})])
    on_disk = await stored_bytes(store, "SELECT sum(size) FROM node_events WHERE node_id='n1'")
    # the UTF-8 bytes of the text columns (SQLite before 3.43 has no octet_length)
    utf8 = "octet_length({})" if store.driver.dialect == "postgres" else "length(CAST({} AS BLOB))"
    real = await stored_bytes(store, f"SELECT sum({utf8.format('kind')} + {utf8.format('data')}) "
                                     "FROM node_events WHERE node_id='n1'")
    assert real <= on_disk <= QUOTAS.node_events_bytes_per_node  # size counts what's stored
    kept = [e.id for e in await store.node_events("n1", limit=1000)]
    assert len(kept) >= 15
    usage = await store.node_usage("n1")
    assert usage["events"]["pruned_items"] == 100 - len(kept)
    assert usage["events"]["bytes"] == on_disk
    assert len(await store.node_events("n2")) == 1  # another node's budget is its own


async def test_a_node_past_its_event_row_budget_keeps_its_newest_rows_and_counts_the_rest(
        backend: tuple[str, str]) -> None:
    """The row-count prune (small events; settled once per batch): the newest rows stay,
    the totals match the table exactly, and every pruned row is counted."""
    driver = await open_driver(*backend)
    try:
        store = ControllerStore(driver, quotas=StoreQuotas(node_events_per_node=100))

        for start in range(0, 1000, 37):  # batches that straddle the budget unevenly
            await store.record_node_events("n1", [("e", {"i": i})
                                                  for i in range(start, start + 37)])
        kept = [e.data for e in await store.node_events("n1", limit=1000)]
        rows = await stored_bytes(store, "SELECT count(*) FROM node_events WHERE node_id='n1'")
        assert rows == len(kept) <= 100
        assert kept[0] == {"i": 1035}  # newest first, and the newest are the ones kept
        usage = (await store.node_usage("n1"))["events"]
        assert usage["items"] == rows
        assert usage["bytes"] == await stored_bytes(
            store, "SELECT sum(size) FROM node_events WHERE node_id='n1'")
        assert usage["pruned_items"] == 1036 - rows  # 28 batches of 37: every row counted
    finally:
        await driver.close()


async def test_a_node_keeps_its_newest_logs_within_its_budgets_and_counts_the_rest(
        store: ControllerStore) -> None:
    chunk = b"z" * 100_000
    for c in range(3):  # three commands of 1 MB each: 3 MB past the 2 MiB node budget
        await insert_command(store, f"c{c}")
        for seq in range(10):
            await store.append_logs("n1", [(f"c{c}", "stdout", seq, chunk, 0)])
    for seq in range(20):  # app logs: 2 MB past their 512 KiB budget
        await store.append_logs("n1", [(None, "app:web", seq, chunk, 0)])
    total = await stored_bytes(store, "SELECT sum(length(data)) FROM logs WHERE node_id='n1'")
    assert total <= QUOTAS.log_bytes_per_node
    app = await stored_bytes(store, "SELECT sum(length(data)) FROM logs WHERE command_id IS NULL")
    assert 0 < app <= QUOTAS.node_log_bytes_per_node
    newest = await store.node_logs("n1", source=None, after=0)
    assert newest[-1].seq == 19  # the oldest went first
    assert len(await store.command_logs("c0")) == 0  # the oldest command's output is gone
    assert (await store.command_logs("c2"))[-1].seq == 9
    usage = await store.node_usage("n1")
    assert usage["logs"]["bytes"] == await stored_bytes(
        store, "SELECT sum(size) FROM logs WHERE node_id='n1'")
    assert usage["logs"]["pruned_bytes"] >= 3_000_000 + 2_000_000 - (2 << 20)
    assert usage["node_logs"]["items"] == len(newest)


async def test_a_flood_of_empty_log_chunks_is_bounded_by_the_row_overhead(
        store: ControllerStore) -> None:
    await insert_command(store, "c1")
    per_row = ROW_OVERHEAD + len("stdout")
    rows = QUOTAS.log_bytes_per_node // per_row
    batch = [("c1", "stdout", i, b"", 0) for i in range(1000)]
    for _ in range(rows // 1000 + 5):
        await store.append_logs("n1", batch)
    count = await stored_bytes(store, "SELECT count(*) FROM logs")
    assert count <= rows


async def test_a_page_of_logs_is_bounded_in_bytes_and_holds_at_least_one_chunk(
        store: ControllerStore) -> None:
    await insert_command(store, "c1")
    await store.append_logs("n1", [("c1", "stdout", i, b"a" * 30_000, 0) for i in range(10)])
    page = await store.command_logs("c1", max_bytes=100_000)
    assert len(page) == 3 and page.more  # stops before the chunk that would pass the bound
    page = await store.command_logs("c1", max_bytes=1)
    assert len(page) == 1 and page.more  # a chunk larger than the bound still comes, alone
    page = await store.command_logs("c1")
    assert len(page) == 10 and not page.more
    page = await store.command_logs("c1", limit=10)
    assert len(page) == 10 and not page.more  # exactly full is not "more"
    page = await store.command_logs("c1", limit=9)
    assert len(page) == 9 and page.more


async def test_a_sqlite_store_from_before_the_budgets_is_migrated_with_its_usage_counted(
        tmp_path: Path) -> None:
    old = Database(tmp_path / "c.db", migrations=MIGRATIONS[:3], durability="process")
    await old.open()
    await old.write(lambda conn: conn.executemany(
        "INSERT INTO node_events (node_id, kind, data, at) VALUES ('n1', 'e', ?, 0)",
        [('{"blob":"' + "q" * 400_000 + '"}',)] * 5))
    await old.close()
    db = Database(tmp_path / "c.db", migrations=MIGRATIONS, durability="process")
    await db.open()
    try:
        store = ControllerStore(db, quotas=QUOTAS)
        assert (await store.node_usage("n1"))["events"]["items"] == 5
        await events(store, "n1", [("e", {"n": 1})])  # the next event enforces the budget
        assert await stored_bytes(store, "SELECT sum(size) FROM node_events") <= (1 << 20)
    finally:
        await db.close()
