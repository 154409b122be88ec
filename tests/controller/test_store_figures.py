"""/metrics needs no token, so what it reads from the store is read at most once per TTL
whatever the scrape rate (services/probe.py CachedStoreFigures); an outage is remembered
for the TTL too, and a store error that is not an outage still surfaces."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest

from tether.controller.services.probe import CachedStoreFigures
from tether.protocol.errors import StoreError


@dataclass
class CountingStore:
    reads: int = 0
    error: StoreError | None = None
    gate: asyncio.Event | None = None

    async def dead_letters_total(self) -> int:
        self.reads += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return self.reads

    async def node_usage(self) -> dict[str, Any]:
        return {"events": {"items": self.reads}}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_flood_of_scrapes_costs_one_store_read_per_ttl() -> None:
    store, clock = CountingStore(gate=asyncio.Event()), Clock()
    figures = CachedStoreFigures(store, ttl_s=2.0, monotonic=clock)
    scrapes = [asyncio.create_task(figures.get()) for _ in range(200)]
    await asyncio.sleep(0)
    store.gate.set()  # type: ignore[union-attr]
    results = await asyncio.gather(*scrapes)
    assert store.reads == 1 and {r.dead_letters_total for r in results} == {1}
    clock.now += 1.9
    assert (await figures.get()).dead_letters_total == 1 and store.reads == 1
    clock.now += 0.1
    fresh = await figures.get()
    assert store.reads == 2 and fresh.up and fresh.usage == {"events": {"items": 2}}


async def test_an_outage_is_remembered_for_the_ttl_and_then_tried_again() -> None:
    store, clock = CountingStore(error=StoreError("down", code="unavailable")), Clock()
    figures = CachedStoreFigures(store, ttl_s=2.0, monotonic=clock)
    down = await figures.get()
    assert not down.up and down.usage == {}
    assert not (await figures.get()).up and store.reads == 1
    store.error = None
    clock.now += 2.0
    assert (await figures.get()).up and store.reads == 2


async def test_a_store_error_that_is_not_an_outage_is_raised() -> None:
    figures = CachedStoreFigures(CountingStore(error=StoreError("corrupt")))
    with pytest.raises(StoreError):
        await figures.get()
