"""``run_to_completion``: how the SQLite driver runs one async store transaction on its
writer thread without an event loop (controller/store/sql.py)."""

from __future__ import annotations

import asyncio

import pytest

from tether.controller.store.sql import run_to_completion


class _SyncTx:
    dialect = "sqlite"

    def __init__(self) -> None:
        self.statements: list[str] = []

    async def execute(self, sql: str, *args: object) -> int:
        self.statements.append(sql)
        return 1


def test_a_transaction_that_only_awaits_its_tx_runs_to_its_result() -> None:
    tx = _SyncTx()

    async def fn() -> int:
        return await tx.execute("A") + await tx.execute("B")

    assert run_to_completion(fn()) == 2
    assert tx.statements == ["A", "B"]


def test_a_transaction_that_awaits_anything_else_is_refused_and_closed() -> None:
    reached_end = False

    async def fn() -> None:
        nonlocal reached_end
        await asyncio.sleep(0)  # suspends: would need an event loop
        reached_end = True

    coro = fn()
    with pytest.raises(RuntimeError, match="awaited something other"):
        run_to_completion(coro)
    assert not reached_end and coro.cr_frame is None  # closed, not left pending
