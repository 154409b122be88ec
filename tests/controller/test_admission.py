"""Admission control for edge handshakes (no I/O: the controller's seam, driven directly)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from tether.controller.services.admission import Admission


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Yield to the loop until ``predicate`` holds; fail after ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0)


async def test_up_to_the_slot_count_is_admitted_at_once() -> None:
    adm = Admission(slots=2, max_waiting=0, max_wait_s=1)
    assert await adm.acquire() and await adm.acquire()
    assert adm.running == 2
    assert not await adm.acquire()  # no slot and nobody may wait
    assert adm.refused_total == 1


async def test_a_waiting_connection_gets_the_next_free_slot_in_order() -> None:
    adm = Admission(slots=1, max_waiting=4, max_wait_s=30)
    assert await adm.acquire()
    order: list[int] = []

    async def wait(i: int) -> None:
        assert await adm.acquire()
        order.append(i)

    async with asyncio.TaskGroup() as tg:
        for i in range(3):
            tg.create_task(wait(i))
        await until(lambda: adm.waiting == 3)
        for n in range(1, 4):
            adm.release()
            await until(lambda n=n: len(order) == n)
    assert order == [0, 1, 2] and adm.running == 1 and adm.waiting == 0


async def test_past_the_waiting_limit_a_connection_is_refused_at_once() -> None:
    adm = Admission(slots=1, max_waiting=1, max_wait_s=30)
    assert await adm.acquire()
    waiter = asyncio.create_task(adm.acquire())
    await until(lambda: adm.waiting == 1)
    assert not await adm.acquire()
    adm.release()
    assert await waiter
    assert adm.refused_total == 1


async def test_a_connection_that_waits_too_long_is_refused() -> None:
    adm = Admission(slots=1, max_waiting=10, max_wait_s=0.01)
    assert await adm.acquire()
    assert not await adm.acquire()
    assert adm.waiting == 0 and adm.refused_total == 1
    adm.release()
    assert await adm.acquire()  # the slot a timed-out waiter gave up is still usable


async def test_no_slots_refuses_everything() -> None:
    adm = Admission(slots=0, max_waiting=100, max_wait_s=30)
    assert not await adm.acquire()


async def test_retry_after_grows_with_the_backlog_and_is_at_least_a_second() -> None:
    adm = Admission(slots=1000, max_waiting=0, max_wait_s=1, rng=random.Random(1))
    idle = adm.retry_after()
    assert idle == 1.0
    for _ in range(1000):
        await adm.acquire()
    # 1,000 running and no rate measured yet: the prior (500/s) gives 2 s, jittered.
    busy = adm.retry_after()
    assert 1.0 <= busy <= 3.0
    for _ in range(1000):
        adm.release()
    # 1,000 completed within the window: the measured rate is now 500/s, backlog 0.
    assert adm.rate_per_s() >= 500
    slow = Admission(slots=100, max_waiting=0, max_wait_s=1, rng=random.Random(1))
    for _ in range(100):
        await slow.acquire()
    for _ in range(20):  # 20 completions in the window: 10/s, floored at 20/s
        slow.release()
        await slow.acquire()
    assert slow.rate_per_s() == 20.0
    assert slow.retry_after() >= 2.5  # 100 running at 20/s: 5 s, jittered by 0.5..1.5
