"""Edge connections before their hello (issue 11, item 5): they hold no handshake slot, their
deadline tightens as more of them wait, and one address cannot keep more than its cap of
them; a node that says hello at once is welcomed through all of it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tether.controller.gateway import hello_expirer

from ..helpers import FAST, ControllerProc
from .conftest import Edge, EdgeClient

PER_ADDRESS = 8
HELLO_TIMEOUT_S = 30.0


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[ControllerProc]:
    """One handshake slot; the hello deadline is 30 s alone and 30/n s with n waiting
    (``--hello-pressure-at 1``), never under 1 s; at most 8 waiting from one address."""
    ctl = ControllerProc(tmp_path / "controller", extra=[
        *FAST, "--max-concurrent-handshakes", "1", "--handshake-timeout-s",
        str(HELLO_TIMEOUT_S), "--hello-pressure-at", "1", "--min-hello-timeout-s", "1",
        "--max-prehello-per-address", str(PER_ADDRESS)])
    ctl.start()
    try:
        yield ctl
    finally:
        ctl.terminate()


async def _silent(edge: Edge, count: int) -> list[EdgeClient]:
    return [await edge.open() for _ in range(count)]


async def test_silent_sockets_hold_no_handshake_slot_so_a_node_saying_hello_gets_in(
        edge: Edge, enroll: Any) -> None:
    ident = await enroll()
    await _silent(edge, 5)  # before: the first took the only slot for its 30 s
    t0 = time.monotonic()
    client = await edge.session(ident)
    assert client.welcome is not None and time.monotonic() - t0 < 3


async def test_past_the_per_address_cap_the_oldest_silent_socket_is_closed_4408(
        edge: Edge, enroll: Any) -> None:
    silent = await _silent(edge, PER_ADDRESS)
    await asyncio.sleep(1.0)  # only a socket that has waited a second may be pushed out
    await edge.open()  # one more from 127.0.0.1
    closed = await silent[0].expect_close(timeout_s=2)
    assert closed.code == 4408
    assert silent[1].ws.close_code is None  # only the oldest went
    client = await edge.session(await enroll())  # and a node still gets in
    assert client.welcome is not None


async def test_under_pressure_the_hello_deadline_tightens_for_those_already_waiting(
        edge: Edge) -> None:
    t0 = time.monotonic()
    silent = await _silent(edge, 7)  # the 7th may wait 30/7 = 4.3 s, the first 30 s
    assert (await silent[-1].expect_close(timeout_s=10)).code == 4408
    await edge.open()  # 7 waiting again: everyone older than 4.3 s goes now
    codes = await asyncio.gather(*(c.expect_close(timeout_s=3) for c in silent[:-1]))
    assert {c.code for c in codes} == {4408}
    assert time.monotonic() - t0 < HELLO_TIMEOUT_S / 2


async def test_the_gate_cutting_a_wait_whose_own_allowance_just_ran_out_changes_nothing(
        ) -> None:
    # the timeout has fired (expiring) but its task has not resumed yet: the gate, run by a
    # newer connection's arrival, cuts it then; that must not fail the newer connection
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(None) as deadline:
            expire = hello_expirer(deadline)
            deadline.reschedule(loop.time())
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                assert deadline.expired()
                expire()
                raise
    with pytest.raises(TimeoutError):  # one still waiting is cut at once
        async with asyncio.timeout(None) as waiting:
            hello_expirer(waiting)()
            await asyncio.sleep(5)
