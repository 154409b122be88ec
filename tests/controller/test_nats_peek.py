"""The router's ``peek`` across replicas (NatsRouter on a real nats-server, replicas in one
process with fake sessions, nats_replicas.py): a replica reads what the holder of a node has
in memory; nobody holding it is None at once; a responder that sends garbage, oversize or
wrongly shaped replies (a raw nats client standing in for a hostile replica) is counted and
taken as no answer; one that never answers costs ``peek_timeout_s``, never more."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import msgpack
import nats
import pytest
from nats.aio.msg import Msg

from tether.controller.services.peek import (
    NodePeek,
    PeekRequest,
    parse_request,
    session_map,
)
from tether.controller.services.presence import SessionSnapshot

from .conftest import NET_TIMEOUT_S
from .nats_replicas import Replica, replicas, synced


def packet(topic: str, seq: int) -> dict[str, object]:
    return {"node_id": "n-1", "topic": topic, "data": {"v": seq}, "seq": seq, "at_ms": seq,
            "dropped": 0}


async def test_a_replica_reads_the_session_and_packets_the_holder_has_in_memory(
        nats_url: str) -> None:
    async with replicas(nats_url, "a", "b") as (a, b):
        a.hold("n-1")
        a.monitor.add("n-1", packet("cpu", 1))
        a.monitor.add("n-1", packet("disk", 2))
        await synced(a, b)
        peeked = await b.router.peek("n-1", PeekRequest(monitor=True))
        assert peeked is not None
        assert peeked.replica_id == "a"
        assert peeked.session is not None and peeked.session.session_id == "s-1"
        assert peeked.monitor == {"cpu": [packet("cpu", 1)], "disk": [packet("disk", 2)]}
        one = await b.router.peek("n-1", PeekRequest(monitor=True, topic="disk"))
        assert one is not None and one.monitor == {"disk": [packet("disk", 2)]}
        bare = await b.router.peek("n-1", PeekRequest())
        assert bare is not None and bare.monitor is None
        assert (b.router.stats().peeks_answered_total, a.router.stats().peeks_served_total) \
            == (3, 3)


async def test_a_node_held_here_is_read_from_memory_without_nats(nats_url: str) -> None:
    async with replicas(nats_url, "a") as (a,):
        a.hold("n-1")
        peeked = await a.router.peek("n-1", PeekRequest())
        assert peeked is not None and peeked.replica_id == "a"
        assert a.router.stats().peeks_total == 0


async def test_a_node_nobody_holds_is_none_at_once_even_with_packets_left_behind(
        nats_url: str) -> None:
    async with replicas(nats_url, "a", "b") as (a, b):
        a.monitor.add("n-1", packet("cpu", 1))  # from a session that ended: a holds nothing
        started = time.monotonic()
        assert await b.router.peek("n-1", PeekRequest(monitor=True)) is None
        assert time.monotonic() - started < b.router.peek_timeout_s  # no responders


Responder = Callable[[Msg], Awaitable[None]]


@pytest.fixture
async def impostor(nats_url: str) -> AsyncIterator[Callable[[Responder], Awaitable[None]]]:
    """impostor(cb): a raw nats client answering every peek for ``n-1`` with ``cb``."""
    nc = await nats.connect(nats_url, connect_timeout=NET_TIMEOUT_S)

    async def serve(cb: Responder) -> None:
        await nc.subscribe("tether.node.n-1.peek", cb=cb)
        await nc.flush()
    try:
        yield serve
    finally:
        await nc.close()


def _session() -> dict[str, object]:
    return session_map(SessionSnapshot(node_id="n-1", session_id="s-1", last_frame_age_s=0.0,
                                       opened_at=0.0, runtime={"state": "attached"}))


HOSTILE_REPLIES: list[bytes] = [
    b"",
    b"\xc1 garbage",
    b"\x00" * (600 << 10),  # over the reply bound
    msgpack.packb({"v": 1, "r": "r-x", "s": None, "m": None}),  # a key missing
    msgpack.packb({"v": 1, "r": "r x", "s": None, "m": None, "cut": 0}),
    msgpack.packb({"v": 1, "r": "r-x", "s": {**_session(), "last_frame_age_s": math.nan},
                   "m": None, "cut": 0}),
    msgpack.packb({"v": 1, "r": "r-x", "s": None, "m": {"cpu": [{"topic": "cpu"}]},
                   "cut": 0}),
    msgpack.packb({"v": 1, "r": "r-x", "s": None, "m": {"cpu": "all"}, "cut": 0}),
]


async def test_hostile_replies_are_counted_and_taken_as_no_answer(
        nats_url: str, impostor: Callable[[Responder], Awaitable[None]]) -> None:
    replies = list(HOSTILE_REPLIES)
    asked: list[PeekRequest | None] = []

    async def answer(msg: Msg) -> None:
        asked.append(parse_request(msg.data))
        await msg.respond(replies.pop(0))

    await impostor(answer)
    async with replicas(nats_url, "b") as (b,):
        for _ in HOSTILE_REPLIES:
            assert await b.router.peek("n-1", PeekRequest(monitor=True)) is None
        stats = b.router.stats()
        assert (stats.peeks_total, stats.peek_replies_malformed_total,
                stats.peeks_answered_total) == (len(HOSTILE_REPLIES), len(HOSTILE_REPLIES), 0)
    assert asked == [PeekRequest(monitor=True)] * len(HOSTILE_REPLIES)


async def test_a_well_formed_reply_from_the_same_raw_client_is_taken(
        nats_url: str, impostor: Callable[[Responder], Awaitable[None]]) -> None:
    """The hostile test's control: the raw client is heard when what it says is a reply."""
    async def answer(msg: Msg) -> None:
        await msg.respond(msgpack.packb({"v": 1, "r": "r-x", "s": _session(),
                                         "m": {"cpu": [packet("cpu", 1)]}, "cut": 2}))

    await impostor(answer)
    async with replicas(nats_url, "b") as (b,):
        peeked = await b.router.peek("n-1", PeekRequest(monitor=True))
    assert peeked == NodePeek("r-x", peeked.session if peeked else None,
                              {"cpu": [packet("cpu", 1)]}, 2)
    assert peeked is not None and peeked.session is not None


async def test_a_holder_that_never_answers_costs_the_peek_timeout_and_no_more(
        nats_url: str, impostor: Callable[[Responder], Awaitable[None]]) -> None:
    async def silent(msg: Msg) -> None:
        pass

    await impostor(silent)
    async with replicas(nats_url, Replica(nats_url, "b")) as (b,):
        b.router.peek_timeout_s = 0.3
        started = time.monotonic()
        assert await b.router.peek("n-1", PeekRequest()) is None
        assert 0.25 < time.monotonic() - started < 1.3


async def test_hostile_peek_requests_are_counted_and_get_no_reply(nats_url: str) -> None:
    async with replicas(nats_url, "a", "b") as (a, b):
        a.hold("n-1")
        await synced(a, b)
        for payload in (b"", b"\xc1", msgpack.packb({"m": "yes"}), b"x" * 4096):
            with pytest.raises((nats.errors.TimeoutError, asyncio.TimeoutError)):
                await b.link.nc.request("tether.node.n-1.peek", payload, timeout=0.2)
        assert a.router.stats().malformed_total == 4
        assert await b.router.peek("n-1", PeekRequest()) is not None  # still served
