"""Replicas in one process for the NATS router and bus tests: each with its own NATS
connection, its own registry of fake sessions, its own bus and router, as three controller
processes would have."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from tether.controller.services.events import Event, Subscriber
from tether.controller.services.monitor import MonitorStore
from tether.controller.services.nats_bus import NatsBus
from tether.controller.services.nats_link import NatsLink
from tether.controller.services.nats_router import NatsRouter
from tether.controller.services.peek import LocalPeek
from tether.controller.services.presence import SessionSnapshot
from tether.controller.services.registry import SessionRegistry
from tether.protocol.frames import Frame

from .conftest import NET_TIMEOUT_S


@dataclass(eq=False)
class FakeSession:
    """What LocalRouter calls on a live session, recorded."""

    node_id: str
    session_id: str | None = "s-1"
    max_frame: int = 1 << 20
    accept: bool = True  # what send_ephemeral answers
    wakes: int = 0
    sent: list[Frame] = field(default_factory=list)
    disabled: bool = False
    woken: asyncio.Event = field(default_factory=asyncio.Event)

    def wake_downlink(self) -> None:
        self.wakes += 1
        self.woken.set()

    async def send_ephemeral(self, frame: Frame) -> bool:
        if not self.accept:
            return False
        self.sent.append(frame)
        return True

    async def supersede(self) -> None:
        pass

    async def disable(self) -> None:
        self.disabled = True

    def snapshot(self) -> SessionSnapshot:
        return SessionSnapshot(node_id=self.node_id, session_id=self.session_id,
                               last_frame_age_s=0.0, opened_at=0.0, runtime={})


class Replica:
    def __init__(self, url: str, name: str, **link_options: float) -> None:
        self.registry = SessionRegistry()
        options: dict[str, float] = {"connect_timeout_s": NET_TIMEOUT_S,
                                     "reconnect_base_s": 0.05, "reconnect_cap_s": 0.5,
                                     **link_options}
        self.link = NatsLink(url, replica_id=name, **options)  # type: ignore[arg-type]
        self.bus = NatsBus(self.link)
        self.monitor = MonitorStore()  # what a peek reads (services/peek.py)
        self.router = NatsRouter(self.registry, self.link, send_timeout_s=NET_TIMEOUT_S / 2,
                                 peek=LocalPeek(self.registry, self.monitor, name))

    async def start(self) -> None:
        await self.link.start()
        await self.bus.start()
        await self.router.start()

    async def close(self) -> None:
        await self.router.close()
        await self.bus.close()
        await self.link.close()

    def hold(self, node_id: str, **kw: object) -> FakeSession:
        session = FakeSession(node_id, **kw)  # type: ignore[arg-type]
        self.registry.claim(node_id, session)
        return session

    def subscriber(self, *topics: str) -> Subscriber:
        sub = Subscriber()
        self.bus.subscribe(sub, topics)
        return sub


@contextlib.asynccontextmanager
async def replicas(url: str, *names: str | Replica) -> AsyncIterator[list[Replica]]:
    """Replicas started in order (a name, or a Replica built by the test), closed after."""
    started: list[Replica] = []
    try:
        for name in names:
            replica = name if isinstance(name, Replica) else Replica(url, name)
            await replica.start()
            started.append(replica)
        yield started
    finally:
        for replica in reversed(started):
            await replica.close()


async def next_event(sub: Subscriber, timeout_s: float = NET_TIMEOUT_S) -> Event:
    async with asyncio.timeout(timeout_s):
        event = await sub.get()
    assert event is not None, "the subscriber was cut off"
    return event


async def synced(*reps: Replica) -> None:
    """Every replica's subscriptions are known to the server (NatsRouter.settled: a round
    trip on each connection after its SUBs)."""
    for rep in reps:
        await rep.router.settled(NET_TIMEOUT_S)
