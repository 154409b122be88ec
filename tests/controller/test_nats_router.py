"""NatsRouter against a real nats-server: replicas in one process, each with its own NATS
connection and its own registry of fake sessions (nats_replicas.py). A node held on one
replica is reached from the others; nothing here sleeps, every wait has a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import msgpack
import pytest

from tether.controller.services.registry import SessionRegistry
from tether.protocol.codec import encode_msgpack
from tether.protocol.errors import LocalProtocolError
from tether.protocol.frames import Frame
from tether.tools.faultproxy import FaultProxy
from tether.tools.servers import NatsServer

from .conftest import NET_TIMEOUT_S, eventually
from .nats_replicas import FakeSession, Replica, replicas, synced

OFFER = Frame(t="rtc.offer", id="o-1", b={"sdp": "v=0", "peer": "browser-1"})


async def woken(session: FakeSession, timeout_s: float = NET_TIMEOUT_S) -> None:
    async with asyncio.timeout(timeout_s):
        await session.woken.wait()
    session.woken.clear()


async def test_a_nudge_on_one_replica_wakes_the_session_held_on_another(nats_url: str) -> None:
    async with replicas(nats_url, "a", "b") as (a, b):
        held = a.hold("n-1")
        await synced(a, b)
        b.router.nudge("n-1")
        await woken(held)
        assert b.router.stats().nudges_sent_total == 1
        assert a.router.stats().nudges_received_total == 1


async def test_a_nudge_for_a_node_held_here_wakes_it_without_nats(nats_url: str) -> None:
    async with replicas(nats_url, "a") as (a,):
        held = a.hold("n-1")
        a.router.nudge("n-1")
        assert held.wakes == 1
        assert a.router.stats().nudges_sent_total == 0


async def test_a_class_e_frame_sent_from_another_replica_reaches_the_session(
        nats_url: str) -> None:
    async with replicas(nats_url, "a", "b") as (a, b):
        held = a.hold("n-1")
        await synced(a, b)
        assert await b.router.send("n-1", OFFER)
        assert held.sent == [OFFER]


async def test_send_says_false_at_once_for_a_node_nobody_holds(nats_url: str) -> None:
    async with replicas(nats_url, "a", "b") as (a, b):
        a.hold("n-other")
        await synced(a, b)
        started = time.monotonic()
        assert not await b.router.send("n-1", OFFER)
        assert time.monotonic() - started < b.router.send_timeout_s  # "no responders"
        assert not await b.router.disable("n-1")


async def test_send_says_false_within_its_timeout_when_the_session_refuses(
        nats_url: str) -> None:
    async with replicas(nats_url, "a", "b") as (a, b):
        a.hold("n-1", accept=False)  # closing: send_ephemeral answers False
        await synced(a, b)
        b.router.send_timeout_s = 0.3
        started = time.monotonic()
        assert not await b.router.send("n-1", OFFER)
        assert time.monotonic() - started < 0.3 + NET_TIMEOUT_S / 5


@pytest.mark.parametrize("frame", [
    Frame(t="cmd.deliver", s="cmd", q=1, b={"command_id": "c_1"}),  # class A
    Frame(t="node.resources", b={}),  # class B
    Frame(t="monitor.packet", b={}),  # class C
    Frame(t="edge.welcome", b={}),  # session plumbing
    Frame(t="no.such_type", b={}),  # no class at all
], ids=lambda f: f.t)
async def test_send_refuses_any_frame_that_is_not_class_e_before_it_leaves(
        nats_url: str, frame: Frame) -> None:
    async with replicas(nats_url, "a", "b") as (a, b):
        held = a.hold("n-1")
        await synced(a, b)
        with pytest.raises(LocalProtocolError, match="only class E"):
            await b.router.send("n-1", frame)
        assert b.router.stats().remote_calls_total == 0
        # even forged onto the subject, the owner refuses it (and still serves good frames)
        await b.link.nc.publish("tether.node.n-1.send", encode_msgpack(frame))
        assert await b.router.send("n-1", OFFER)
        assert held.sent == [OFFER]
        assert a.router.stats().malformed_total == 1


async def test_disable_from_another_replica_closes_the_session(nats_url: str) -> None:
    async with replicas(nats_url, "a", "b") as (a, b):
        held = a.hold("n-1")
        await synced(a, b)
        assert await b.router.disable("n-1")
        assert held.disabled


async def test_a_released_node_is_no_longer_reached_and_the_replica_taking_it_over_is(
        nats_url: str) -> None:
    async with replicas(nats_url, "a", "b", "c") as (a, b, c):
        on_a = a.hold("n-1")
        await synced(a, c)
        assert await c.router.send("n-1", OFFER)
        a.registry.release("n-1", on_a)
        on_b = b.hold("n-1")
        await synced(a, b, c)
        assert await c.router.send("n-1", OFFER)
        c.router.nudge("n-1")
        await woken(on_b)
        assert (len(on_a.sent), len(on_b.sent)) == (1, 1)
        assert a.router.stats().held_subscriptions == 0
        assert b.router.stats().held_subscriptions == 1


async def test_hostile_router_messages_are_counted_and_dropped(nats_url: str) -> None:
    async with replicas(nats_url, "a", "b") as (a, b):
        held = a.hold("n-1")
        await synced(a, b)
        a.router.max_frame_bytes = 64 << 10
        nc = b.link.nc
        for subject, payload in [
                ("tether.node.n-1.send", b"\xff garbage"),
                ("tether.node.n-1.send", msgpack.packb({"t": 5})),
                ("tether.node.n-1.send", encode_msgpack(Frame(t="rtc.offer",
                                                               b={"x": "y" * (65 << 10)}))),
                ("tether.node.n-1.explode", b""),  # not a verb
        ]:
            await nc.publish(subject, payload)
        assert await b.router.send("n-1", OFFER)
        assert held.sent == [OFFER]
        assert a.router.stats().malformed_total == 4


async def test_after_a_nats_restart_nudges_sends_and_events_work_again(
        nats_server: NatsServer, nats_url: str) -> None:
    async with replicas(nats_url, "a", "b", "c") as (a, b, c):
        held = a.hold("n-1")
        sub = c.subscriber("node:n-1")
        await synced(a, b, c)
        assert await b.router.send("n-1", OFFER)
        await nats_server.restart()

        async def all_back() -> bool:
            return all(r.link.stats().reconnects_total >= 1 and r.link.connected
                       for r in (a, b, c))

        await eventually(all_back, timeout_s=NET_TIMEOUT_S * 3, what="every replica back")
        # The subscriptions made before the restart were re-sent by nats-py, not re-made:
        # the router's own subscription count did not change.
        assert a.router.stats().held_subscriptions == 1
        await synced(a, b, c)
        assert await b.router.send("n-1", OFFER)
        assert held.sent == [OFFER, OFFER]
        held.woken.clear()
        b.router.nudge("n-1")
        await woken(held)
        b.bus.publish("node:n-1", "after-restart", {})
        async with asyncio.timeout(NET_TIMEOUT_S):
            event = await sub.get()
        assert event is not None and event.kind == "after-restart"


async def test_a_node_claimed_while_nats_is_down_is_subscribed_once_it_is_back(
        nats_server: NatsServer, nats_url: str) -> None:
    async with replicas(nats_url, "a", "b") as (a, b):
        await nats_server.stop()

        async def down() -> bool:
            return not a.link.connected and not b.link.connected

        await eventually(down, what="both replicas to see NATS gone")
        held = a.hold("n-1")
        assert not await b.router.send("n-1", OFFER)  # at once: not connected
        await nats_server.start()

        async def up() -> bool:
            return a.link.connected and b.link.connected

        await eventually(up, timeout_s=NET_TIMEOUT_S * 3, what="both replicas back")
        await synced(a, b)
        assert await b.router.send("n-1", OFFER)
        assert held.sent == [OFFER]


@pytest.fixture
async def proxy(nats_server: NatsServer) -> AsyncIterator[tuple[FaultProxy, str]]:
    """A fault proxy in front of the test's nats-server: one replica's own partition."""
    assert nats_server.port is not None
    fault = FaultProxy("127.0.0.1", nats_server.port)
    server = await asyncio.start_server(fault.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield fault, f"nats://127.0.0.1:{port}"
    finally:
        server.close()
        await fault.close()
        await server.wait_closed()


async def test_nudges_a_partitioned_replica_could_not_send_are_sent_once_it_is_back(
        nats_url: str, proxy: tuple[FaultProxy, str]) -> None:
    fault, proxy_url = proxy
    # b reaches NATS through the proxy, and notices a silent server within a second
    b = Replica(proxy_url, "b", ping_interval_s=0.2, max_outstanding_pings=1,
                connect_timeout_s=0.5)
    async with replicas(nats_url, "a", b) as (a, b):
        held = a.hold("n-1")
        await synced(a, b)
        fault.blackhole()

        async def b_down() -> bool:
            return not b.link.connected

        await eventually(b_down, what="replica b to notice its partition")
        b.router.nudge("n-1")
        b.router.nudge("n-1")  # one per node is kept
        assert b.router.stats().nudges_unsent_total == 2
        assert held.wakes == 0 and a.link.connected
        fault.heal()
        await woken(held, timeout_s=NET_TIMEOUT_S * 3)
        assert a.router.stats().nudges_received_total == 1
        assert b.link.stats().reconnects_total == 1


async def test_a_replica_wakes_every_session_it_holds_after_reconnecting(
        nats_server: NatsServer, nats_url: str) -> None:
    async with replicas(nats_url, "a") as (a,):
        sessions = [a.hold(f"n-{i}") for i in range(3)]
        await synced(a)
        await nats_server.restart()
        for session in sessions:
            await woken(session, timeout_s=NET_TIMEOUT_S * 3)


async def test_a_claim_and_release_in_quick_succession_end_in_the_registrys_state(
        nats_url: str) -> None:
    async with replicas(nats_url, "a", "b") as (a, b):
        for i in range(20):
            session = a.hold(f"n-{i}")
            if i % 2:
                a.registry.release(f"n-{i}", session)
        await synced(a, b)
        assert a.router.stats().held_subscriptions == 10
        assert await b.router.send("n-0", OFFER)
        assert not await b.router.send("n-1", OFFER)


def test_the_registry_tells_its_observers_when_a_node_is_first_held_and_finally_released(
        ) -> None:
    seen: list[tuple[str, str]] = []

    class Observer:
        def held(self, node_id: str) -> None:
            seen.append(("held", node_id))

        def released(self, node_id: str) -> None:
            seen.append(("released", node_id))

    registry = SessionRegistry()
    registry.observe(Observer())
    first, second = FakeSession("n-1"), FakeSession("n-1")
    registry.claim("n-1", first)
    assert registry.claim("n-1", second) is first  # superseded: still held, no news
    registry.release("n-1", first)  # the old session's release changes nothing
    assert registry.get("n-1") is second
    registry.release("n-1", second)
    assert seen == [("held", "n-1"), ("released", "n-1")]
