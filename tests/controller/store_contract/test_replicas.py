"""Store contract on PostgreSQL with two replicas on one database: transactions that meet
there are ordered by row locks and compare-and-set, so fencing, the cmd stream's numbering,
join tokens and idempotency keys hold across replicas (SQLite has one writer: nothing meets)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tether.controller.store.controller_store import ControllerStore, Fenced
from tether.protocol.codec import decode_msgpack
from tether.protocol.errors import AuthError

from .conftest import open_driver
from .helpers import enrolled, event, evt, hello


@pytest.fixture
async def replicas(pg_dsn: str) -> AsyncIterator[tuple[ControllerStore, ControllerStore]]:
    a, b = await open_driver("postgres", pg_dsn), await open_driver("postgres", pg_dsn)
    try:
        yield ControllerStore(a), ControllerStore(b)
    finally:
        await a.close()
        await b.close()


async def test_a_batch_racing_a_hello_on_another_replica_lands_before_it_or_is_fenced(
        replicas: tuple[ControllerStore, ControllerStore]) -> None:
    stores = list(replicas)
    await enrolled(stores[0])
    owner = await hello(stores[0])
    q = 0
    for round_ in range(30):
        old, new = stores[round_ % 2], stores[(round_ + 1) % 2]
        q += 1
        applied, opened = await asyncio.gather(
            old.apply_evt(node_id="n1", session_id=owner.session_id,
                          frames=[evt(q, event("e", q=q))]),
            hello(new), return_exceptions=True)
        assert not isinstance(opened, BaseException), opened
        if isinstance(applied, Fenced):
            q -= 1  # refused whole: the node sends it again to the new owner
        else:
            assert not isinstance(applied, BaseException), applied
        assert opened.evt_applied == q  # the new owner saw every batch that landed
        owner = opened
    open_sessions = [s for s in await stores[0].sessions("n1", limit=100)
                     if s.closed_at is None]
    assert [s.session_id for s in open_sessions] == [owner.session_id]


async def test_commands_submitted_on_two_replicas_get_one_gapless_sequence(
        replicas: tuple[ControllerStore, ControllerStore]) -> None:
    a, b = replicas
    await enrolled(a)
    opened = await hello(a)
    results = await asyncio.gather(*(
        (a if i % 2 else b).submit_command(node_id="n1", kind="exec",
                                           args={"argv": ["true", str(i)]}, ttl_s=None,
                                           idem_key=None, actor="admin")
        for i in range(40)))
    assert sorted(c.q or 0 for c, _ in results) == list(range(1, 41))
    frames = await a.downlink_after("n1", opened.cmd_epoch, 0, 100)
    assert [decode_msgpack(f).q for _, f in frames] == list(range(1, 41))


async def test_an_idempotency_key_raced_on_two_replicas_makes_one_command(
        replicas: tuple[ControllerStore, ControllerStore]) -> None:
    a, b = replicas
    await enrolled(a)
    for round_ in range(10):
        made = await asyncio.gather(*(
            store.submit_command(node_id="n1", kind="exec", args={"argv": ["true"]},
                                 ttl_s=None, idem_key=f"k{round_}", actor="admin")
            for store in (a, b, a, b)))
        assert len({c.command_id for c, _ in made}) == 1
        assert sum(created for _, created in made) == 1


async def test_the_last_use_of_a_join_token_raced_on_two_replicas_enrolls_one_node(
        replicas: tuple[ControllerStore, ControllerStore]) -> None:
    a, b = replicas
    token, _ = await a.create_join_token(ttl_s=60, uses=1, labels={}, actor="admin")
    outcomes = await asyncio.gather(*(
        store.enroll(join_token=token, node_id=f"n{i}", public_key=bytes([i]) * 32,
                     labels={})
        for i, store in enumerate((a, b, a, b))), return_exceptions=True)
    assert sum(o is None for o in outcomes) == 1
    assert all(o is None or isinstance(o, AuthError) for o in outcomes), outcomes
