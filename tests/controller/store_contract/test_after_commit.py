"""``Tx.after_commit`` (controller/store/sql.py), on both engines: a callback runs once its
function's work is committed, even when the caller stopped waiting; never when that work was
rolled back. The soak's recorder writes ``applied`` this way (controller/gateway.py)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tether.controller.store.sql import Tx

from .conftest import open_driver


class Boom(Exception):
    pass


async def test_after_commit_runs_for_committed_work_only_and_outlives_a_cancelled_caller(
        backend: tuple[str, str]) -> None:
    driver = await open_driver(*backend)
    ran: list[str] = []
    done = threading.Event()

    def note(label: str) -> None:
        ran.append(label)
        if label == "cancelled-caller":
            done.set()

    async def good(tx: Tx) -> None:
        await tx.execute("UPDATE nodes SET labels=labels WHERE node_id='none'")
        tx.after_commit(lambda: note("committed"))

    async def bad(tx: Tx) -> None:
        tx.after_commit(lambda: note("rolled-back"))
        raise Boom

    started, release = threading.Event(), threading.Event()

    async def slow_caller(tx: Tx) -> None:
        tx.after_commit(lambda: note("cancelled-caller"))
        started.set()
        if tx.dialect == "sqlite":  # the writer thread itself waits
            release.wait(10)
        else:  # the writer task waits
            await asyncio.to_thread(release.wait, 10)

    try:
        await driver.write(good)
        with pytest.raises(Boom):
            await driver.write(bad)
        await driver.write(good)
        caller = asyncio.create_task(driver.write(slow_caller))
        assert await asyncio.to_thread(started.wait, 10)  # the writer runs it
        caller.cancel()
        release.set()
        assert await asyncio.to_thread(done.wait, 10)  # committed, caller gone
    finally:
        await driver.close()
    assert ran.count("rolled-back") == 0
    assert ran[:2] == ["committed", "committed"]
    assert "cancelled-caller" in ran
