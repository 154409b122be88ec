"""NatsBus against a real nats-server (tests/conftest.py starts one per test): replicas in
one process, each with its own connection, hub and subscribers (nats_replicas.py)."""

from __future__ import annotations

import asyncio
import time

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.controller.services.nats_link import (
    NatsLink,
    NatsUnavailable,
    subject_token,
    token_text,
)
from tether.protocol.frames import Frame
from tether.tools.servers import NatsServer, free_port

from .conftest import NET_TIMEOUT_S, eventually
from .nats_replicas import Replica, next_event, replicas, synced


@pytest.mark.parametrize("text", [
    "nodes", "node:n-1", "command:c_01", "a.b", "*", ">", "x y", "100%", "", "é", "%41",
    "node:a.b.*.>", "\t\r\n"])
def test_a_topic_becomes_one_subject_token_and_back(text: str) -> None:
    token = subject_token(text)
    assert token and not any(c in token for c in ".*> \t\r\n")
    assert token_text(token) == text


@pytest.mark.parametrize("token", ["%4", "%zz", "%2e", "a%2Eb%", "%C3", "%41", "a b"])
def test_a_token_that_no_topic_encodes_to_is_refused(token: str) -> None:
    # %41 is "A", which is encoded as itself: one encoding per topic, so it is refused too
    assert token_text(token) is None


@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=64))
def test_every_text_round_trips_through_a_token_that_holds_no_subject_syntax(text: str) -> None:
    token = subject_token(text)
    assert token and not any(c in token for c in ".*>") and not any(c.isspace() for c in token)
    assert token_text(token) == text


@given(st.text(max_size=64))
def test_any_token_decodes_to_the_one_text_that_encodes_to_it_or_to_nothing(token: str) -> None:
    text = token_text(token)
    assert text is None or subject_token(text) == token


def test_node_ids_and_the_controllers_topics_are_their_own_tokens() -> None:
    for text in ("n-router", "node:n-1", "monitor:n-1", "commands:n-1", "logs:c_1"):
        assert subject_token(text) == text


async def test_an_event_published_on_one_replica_reaches_a_subscriber_on_another_once_in_order(
        nats_url: str) -> None:
    async with replicas(nats_url, "a", "b", "c") as (a, b, c):
        sub_c = c.subscriber("node:n-1", "nodes")
        sub_a = a.subscriber("node:n-1")
        await c.link.nc.flush()
        for i in range(50):
            a.bus.publish("node:n-1", "runtime.changed", {"i": i})
        a.bus.publish("nodes", "session.opened", {"node_id": "n-1"})
        got = [await next_event(sub_c) for _ in range(51)]
        assert [e.data.get("i") for e in got[:50]] == list(range(50))
        assert (got[50].topic, got[50].kind) == ("nodes", "session.opened")
        # the publisher's own subscriber got each event exactly once, at once
        assert sub_a.queue.qsize() == 50
        assert [e.data["i"] for e in [sub_a.queue.get_nowait() for _ in range(50)]] == \
            list(range(50))
        # nothing more arrives on either side: a marker published after is the next event
        a.bus.publish("node:n-1", "marker", {})
        assert (await next_event(sub_c)).kind == "marker"
        assert (await next_event(sub_a)).kind == "marker"
        assert sub_c.queue.empty() and sub_a.queue.empty()
        assert b.bus.nats_stats().delivered_total == 0  # nobody on b subscribed


async def test_a_topic_with_dots_and_wildcards_reaches_only_its_own_subscribers(
        nats_url: str) -> None:
    async with replicas(nats_url, "a", "c") as (a, c):
        odd = c.subscriber("x.*.>")
        plain = c.subscriber("x")
        await c.link.nc.flush()
        a.bus.publish("x.*.>", "k", {"v": 1})
        a.bus.publish("x", "k", {"v": 2})
        assert (await next_event(odd)).data == {"v": 1}
        assert (await next_event(plain)).data == {"v": 2}
        assert odd.queue.empty()


async def test_hostile_bus_messages_are_counted_and_dropped_while_good_ones_keep_flowing(
        nats_url: str) -> None:
    async with replicas(nats_url, "a", "c") as (a, c):
        sub = c.subscriber("node:n-1")
        await c.link.nc.flush()
        nc = a.link.nc
        hostile = [
            b"\xff\x00garbage",  # not msgpack
            msgpack.packb([1, 2, 3]),  # not a map
            msgpack.packb({"v": 2, "r": "x", "k": "k", "d": {}}),  # unknown version
            msgpack.packb({"v": 1, "r": 7, "k": "k", "d": {}}),  # replica id not text
            msgpack.packb({"v": 1, "r": "x", "k": None, "d": {}}),  # kind not text
            msgpack.packb({"v": 1, "r": "x", "k": "k", "d": [1]}),  # data not a map
            msgpack.packb({"v": 1, "r": "x", "k": "k", "d": {"n": 2 ** 63}}),  # over int64
            msgpack.packb({"v": 1, "r": "x", "k": "k" * 1000, "d": {}}),  # kind too long
            msgpack.packb({"v": 1, "r": "x", "k": "k", "d": {"x": "y" * (600 << 10)}}),  # size
            msgpack.packb({"v": 1, "r": "x", "k": "k", "d": _deep(200)}),  # too deep
            b"\xc1",  # msgpack's one never-used byte
            msgpack.packb({"v": 1, "r": "x", "k": "k", "d": {"n": float("nan")}}),  # not plain
        ]
        for payload in hostile:
            await nc.publish("tether.ev.node:n-1", payload)
        await nc.publish("tether.ev.%zz", msgpack.packb({"v": 1, "r": "x", "k": "k", "d": {}}))
        a.bus.publish("node:n-1", "good", {"ok": True})
        event = await next_event(sub)
        assert (event.kind, event.data) == ("good", {"ok": True})
        assert c.bus.nats_stats().malformed_total == len(hostile) + 1
        assert sub.queue.empty()


def _deep(n: int) -> dict[str, object]:
    value: dict[str, object] = {}
    for _ in range(n):
        value = {"a": value}
    return value


async def test_a_message_carrying_the_replicas_own_id_is_not_delivered_twice(
        nats_url: str) -> None:
    async with replicas(nats_url, "a", "c") as (a, c):
        sub = c.subscriber("t")
        await c.link.nc.flush()
        await a.link.nc.publish("tether.ev.t", msgpack.packb(
            {"v": 1, "r": "c", "k": "forged", "d": {}}))
        a.bus.publish("t", "real", {})
        assert (await next_event(sub)).kind == "real"
        assert c.bus.nats_stats().echo_total == 1


async def test_an_event_too_large_for_the_bus_is_delivered_locally_and_counted(
        nats_url: str) -> None:
    async with replicas(nats_url, "a", "c") as (a, c):
        local = a.subscriber("t")
        remote = c.subscriber("t")
        await c.link.nc.flush()
        a.bus.publish("t", "big", {"x": "y" * (a.bus.max_event_bytes + 1)})
        a.bus.publish("t", "unsendable", {"x": {1, 2}})  # a set: msgpack cannot encode it
        a.bus.publish("t", "small", {})
        assert (await next_event(remote)).kind == "small"
        assert [(await next_event(local)).kind for _ in range(3)] == \
            ["big", "unsendable", "small"]
        stats = a.bus.nats_stats()
        assert (stats.oversize_total, stats.unsendable_total) == (1, 1)


async def test_with_nats_down_publish_neither_blocks_nor_raises_and_local_delivery_goes_on(
        nats_server: NatsServer, nats_url: str) -> None:
    async with replicas(nats_url, "a", "c") as (a, c):
        local = a.subscriber("t")
        remote = c.subscriber("t")
        await c.link.nc.flush()
        await nats_server.stop()

        async def down() -> bool:
            return not a.link.connected

        await eventually(down, what="replica a to see NATS gone")
        for i in range(1000):
            a.bus.publish("t", "while-down", {"i": i})
        assert [(await next_event(local)).data["i"] for _ in range(1000)] == list(range(1000))
        assert a.bus.nats_stats().dropped_total == 1000
        await nats_server.start()

        async def both_up() -> bool:
            return a.link.connected and c.link.connected

        await eventually(both_up, timeout_s=NET_TIMEOUT_S * 3, what="both replicas back")
        await c.link.nc.flush()
        a.bus.publish("t", "after", {})
        assert (await next_event(remote)).kind == "after"  # the subscription came back
        assert remote.queue.empty()  # and nothing published while down arrived late
        assert a.link.stats().reconnects_total >= 1 and a.link.stats().disconnects_total >= 1


async def test_the_first_connection_is_bounded_by_connect_timeout() -> None:
    link = NatsLink(f"nats://127.0.0.1:{free_port()}", replica_id="r", connect_timeout_s=0.5)
    with pytest.raises(NatsUnavailable, match=r"within 0\.5 s"):
        await link.start()
    await link.close()


async def test_closing_a_link_publishes_what_it_had_queued_first(nats_url: str) -> None:
    async with replicas(nats_url, "c") as (c,):
        sub = c.subscriber("t")
        await c.link.nc.flush()
        a = Replica(nats_url, "a")
        await a.start()
        for i in range(200):
            a.bus.publish("t", "k", {"i": i})
        await a.close()  # right away: the pump had not published them all yet
        assert a.link.stats().published_total == 200
        assert [(await next_event(sub)).data["i"] for _ in range(200)] == list(range(200))


def test_reconnect_delays_grow_with_full_jitter_and_start_over_after_a_reconnection() -> None:
    link = NatsLink("nats://127.0.0.1:1", replica_id="r", reconnect_base_s=0.25,
                    reconnect_cap_s=2.0, uniform=lambda lo, hi: hi)
    delays = [link._next_server([], {})[1] for _ in range(6)]
    assert delays == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    asyncio.run(link._on_reconnected())
    assert link._next_server([], {})[1] == 0.25


async def test_a_hung_server_neither_blocks_publishers_nor_requests_and_they_recover_after(
        nats_server: NatsServer, nats_url: str) -> None:
    async with replicas(nats_url, "a", "c") as (a, c):
        c.hold("n-1")
        sub = c.subscriber("t")
        await synced(a, c)
        a.router.send_timeout_s = 0.5
        nats_server.freeze()
        try:
            started = time.monotonic()
            for i in range(20_000):  # more than the socket buffers hold
                a.bus.publish("t", "frozen", {"i": i, "pad": "x" * 200})
            assert time.monotonic() - started < 2.0
            assert not await a.router.send("n-1", Frame(t="rtc.offer", b={}))
            assert time.monotonic() - started < 0.5 + 2.0
        finally:
            nats_server.thaw()
        # whatever NATS got through arrives in order; then new events flow again
        a.bus.publish("t", "after", {})
        last = -1
        while (event := await next_event(sub, timeout_s=NET_TIMEOUT_S * 3)).kind != "after":
            assert event.data["i"] > last
            last = event.data["i"]
        assert await a.router.send("n-1", Frame(t="rtc.offer", b={}))
