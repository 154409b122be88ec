"""The router's ``supersede`` across replicas (NatsRouter on a real nats-server, replicas in
one process with fake sessions, tests/controller/nats_replicas.py): only the replica holding
exactly the superseded session closes it; a newer session of the node is never touched."""

from __future__ import annotations

from dataclasses import dataclass

from tether.protocol.frames import Frame

from ..controller.nats_replicas import FakeSession, replicas, synced


@dataclass(eq=False)
class Supersedable(FakeSession):
    superseded: int = 0

    async def supersede(self) -> None:
        self.superseded += 1


async def test_supersede_closes_the_session_another_replica_holds_when_it_is_that_session(
        nats_url: str) -> None:
    async with replicas(nats_url, "a", "b") as (a, b):
        old = Supersedable("n-1", session_id="s-old")
        a.registry.claim("n-1", old)
        new = Supersedable("n-1", session_id="s-new")
        b.registry.claim("n-1", new)  # B's hello took the node: B holds it too, for now
        await synced(a, b)
        assert await b.router.supersede("n-1", "s-old")
        assert (old.superseded, new.superseded) == (1, 0)
        assert a.router.stats().served_total == 1


async def test_supersede_leaves_a_newer_session_of_the_node_alone(nats_url: str) -> None:
    async with replicas(nats_url, "a", "b") as (a, b):
        newer = Supersedable("n-1", session_id="s-newer")
        a.registry.claim("n-1", newer)
        await synced(a, b)
        assert not await b.router.supersede("n-1", "s-older")
        assert newer.superseded == 0


async def test_supersede_says_false_at_once_when_no_replica_holds_the_node(
        nats_url: str) -> None:
    async with replicas(nats_url, "a", "b") as (_a, b):
        assert not await b.router.supersede("n-gone", "s-1")


async def test_a_supersede_naming_no_session_id_is_counted_as_malformed(
        nats_url: str) -> None:
    async with replicas(nats_url, "a", "b") as (a, b):
        held = Supersedable("n-1", session_id="s-1")
        a.registry.claim("n-1", held)
        await synced(a, b)
        for payload in (b"", b"\xff\xfe", b"s-1\n", b"x" * 129):
            await b.link.nc.publish(f"{b.link.prefix}.node.n-1.supersede", payload)
        await b.link.nc.flush()
        await a.link.nc.flush()
        # a round trip through A's subscription: served after the malformed ones, in order
        assert await b.router.send("n-1", Frame(t="rtc.offer", id="o-1", b={"sdp": "v=0"}))
        assert a.router.stats().malformed_total == 4
        assert held.superseded == 0
