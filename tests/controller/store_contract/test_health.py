"""Store contract: what ``diag`` and the metrics read of the store, on every backend, and
which driver a ``--store`` value names."""

from __future__ import annotations

from pathlib import Path

from tether.controller.store.controller_store import ControllerStore
from tether.controller.store.factory import is_postgres, make_driver
from tether.controller.store.sqlite import SqliteDriver


async def test_a_probe_times_a_read_and_a_commit_and_the_counters_count_it(
        store: ControllerStore) -> None:
    before = store.write_stats()
    read_ms, commit_ms = await store.probe()
    assert read_ms >= 0 and commit_ms >= 0
    after = store.write_stats()
    assert set(after) == {"pending", "batches_total", "writes_total"}
    assert after["writes_total"] == before["writes_total"] + 1
    assert after["batches_total"] >= before["batches_total"] + 1


async def test_a_store_value_names_its_driver(tmp_path: Path) -> None:
    assert is_postgres("postgresql://u@h/db") and is_postgres("postgres://h/db")
    assert not is_postgres(tmp_path / "c.db") and not is_postgres("data/c.db")
    driver = make_driver(tmp_path / "c.db", durability="process")
    assert isinstance(driver, SqliteDriver) and driver.dialect == "sqlite"
    await driver.open()
    try:
        assert await ControllerStore(driver).controller_id()
    finally:
        await driver.close()
    pg = make_driver("postgresql://127.0.0.1:1/none")
    assert pg.dialect == "postgres"  # built, not connected
