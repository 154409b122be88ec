"""Admission control for edge handshakes (no I/O: the controller's seam, driven directly)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from tether.controller.services.admission import Admission, HelloGate


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


# -- the hello gate: connections that took the challenge and sent nothing yet --------------

class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _gate(**kw: float) -> tuple[HelloGate, _Clock, list[str]]:
    clock = _Clock()
    return HelloGate(clock=clock, **kw), clock, []  # type: ignore[arg-type]


def test_a_waiter_gets_the_full_hello_timeout_while_few_wait() -> None:
    gate, _, expired = _gate(timeout_s=10, min_timeout_s=2, pressure_at=4)
    for i in range(4):
        assert gate.enter(f"c{i}", "10.0.0.1", lambda i=i: expired.append(f"c{i}")) == 10
    assert gate.waiting == 4 and expired == []


def test_the_hello_deadline_tightens_as_more_connections_wait() -> None:
    gate, _, _ = _gate(timeout_s=10, min_timeout_s=2, pressure_at=4)
    allowances = [gate.enter(i, f"10.0.0.{i}", lambda: None) for i in range(40)]
    assert allowances[:4] == [10, 10, 10, 10]
    assert allowances[7] == 5  # 8 waiting: twice the pressure, half the time
    assert allowances[-1] == 2  # never below the minimum
    assert allowances == sorted(allowances, reverse=True)


def test_under_pressure_waiters_older_than_the_new_allowance_are_expired_oldest_first() -> None:
    gate, clock, expired = _gate(timeout_s=10, min_timeout_s=1, pressure_at=2)
    gate.enter("old", "10.0.0.1", lambda: expired.append("old"))
    clock.now = 3.0
    gate.enter("mid", "10.0.0.2", lambda: expired.append("mid"))
    assert expired == []  # two waiting: the full 10 s, and "old" has waited 3
    clock.now = 5.0
    for i in range(10):  # 12 waiting: 10 * 2 / 12 = 1.67 s
        gate.enter(f"new{i}", "10.0.0.3", lambda i=i: expired.append(f"new{i}"))
    assert expired == ["old", "mid"]
    assert gate.waiting == 10 and gate.expired_total == 2


def test_past_the_per_address_cap_the_oldest_waiter_from_that_address_goes() -> None:
    gate, clock, expired = _gate(max_per_address=3)
    for i in range(3):
        gate.enter(f"a{i}", "203.0.113.9", lambda i=i: expired.append(f"a{i}"))
    gate.enter("b0", "198.51.100.1", lambda: expired.append("b0"))
    clock.now = 3.0  # the minimum hello deadline: before it, nobody is pushed out
    gate.enter("a3", "203.0.113.9", lambda: expired.append("a3"))
    assert expired == ["a0"]
    assert gate.waiting_from("203.0.113.9") == 3 and gate.waiting_from("198.51.100.1") == 1
    assert gate.evicted_total == 1


def test_nobody_is_pushed_out_before_the_minimum_hello_deadline() -> None:
    gate, clock, expired = _gate(min_timeout_s=3, max_per_address=3, max_waiting=4)
    for i in range(6):  # a fleet behind one NAT, all at once
        clock.now = i * 0.5
        gate.enter(i, "192.0.2.1", lambda i=i: expired.append(str(i)))
    assert expired == [] and gate.waiting == 6  # over both caps, for now
    clock.now = 3.1
    gate.enter(6, "192.0.2.1", lambda: expired.append("6"))
    assert expired == ["0"]  # only those that waited 3 s can be pushed out


def test_past_the_total_cap_the_oldest_waiter_of_all_goes() -> None:
    gate, clock, expired = _gate(max_waiting=3)
    for i in range(5):
        clock.now = 3.0 * i
        gate.enter(i, f"10.0.0.{i}", lambda i=i: expired.append(str(i)))
    assert expired == ["0", "1"] and gate.waiting == 3


def test_leaving_is_idempotent_and_an_expired_waiter_is_expired_once() -> None:
    gate, clock, expired = _gate(max_per_address=1)
    gate.enter("x", "10.0.0.1", lambda: expired.append("x"))
    clock.now = 3.0
    gate.enter("y", "10.0.0.1", lambda: expired.append("y"))  # pushes "x" out
    gate.leave("x")  # its owner, closing it: nothing more happens
    gate.leave("y")
    gate.leave("y")
    assert expired == ["x"] and gate.waiting == 0 and gate.waiting_from("10.0.0.1") == 0


def test_a_waiter_whose_own_deadline_passed_counts_as_expired() -> None:
    gate, _, _ = _gate()
    gate.enter("x", "10.0.0.1", lambda: None)
    gate.leave("x", timed_out=True)
    assert gate.expired_total == 1 and gate.waiting == 0
