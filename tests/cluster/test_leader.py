"""Leadership (services/leader.py) on a real PostgreSQL: one holder of the advisory lock at a
time, handed over when the leader stops or its connection is ended by the server; the
sweeper runs its fleet-wide duties only while leader; two replica processes expire an
overdue command once, and the survivor takes over when the leader is killed with SIGKILL.
A node taken over by another replica has its dead session closed in the history no later
than the new one opened."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest
from websockets.asyncio.client import ClientConnection

from tether.controller.services.leader import Leadership
from tether.controller.services.sweeper import Sweeper
from tether.controller.store.controller_store import ControllerStore
from tether.controller.store.pg import LEADER_LOCK_KEY, PostgresDriver
from tether.controller.store.records import Touch
from tether.controller.store.schema import POSTGRES_MIGRATIONS

from ..controller.store_contract.helpers import enrolled
from ..helpers import Api, ControllerProc, NodeProc, metric, wait_until
from .test_two_replicas import ws_subscribed

RETRY_S = 0.2


async def eventually(predicate: Callable[[], bool], *, timeout_s: float, what: str) -> float:
    """Seconds until ``predicate()`` held (polled on the loop); fails after ``timeout_s``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def leadership(dsn: str) -> Leadership:
    driver = PostgresDriver(dsn, migrations=POSTGRES_MIGRATIONS, connect_timeout_s=3,
                            command_timeout_s=3)
    return Leadership(driver.advisory_lock(LEADER_LOCK_KEY), retry_s=RETRY_S)


@pytest.fixture
async def pair(pg_dsn: str) -> AsyncIterator[tuple[Leadership, Leadership]]:
    a, b = leadership(pg_dsn), leadership(pg_dsn)
    try:
        yield a, b
    finally:
        await a.stop()
        await b.stop()


async def test_of_two_contenders_on_one_database_exactly_one_leads(
        pair: tuple[Leadership, Leadership]) -> None:
    a, b = pair
    assert not a.is_leader and not b.is_leader  # on PostgreSQL, nobody leads before trying
    assert await a.step() is True
    assert await b.step() is False
    assert await a.step() is True and await b.step() is False  # still held, still refused
    assert a.acquired_total == 1 and b.acquired_total == 0


async def test_when_the_leader_stops_the_other_leads_within_the_retry_bound(
        pair: tuple[Leadership, Leadership]) -> None:
    a, b = pair
    await a.start()
    await eventually(lambda: a.is_leader, timeout_s=5, what="a to lead")
    await b.start()
    assert await b.step() is False
    await a.stop()
    assert not a.is_leader
    took = await eventually(lambda: b.is_leader, timeout_s=5, what="b to take over")
    assert took <= RETRY_S + 1.0


async def test_a_leader_whose_connection_the_server_ends_stops_leading_and_the_other_takes_over(
        pair: tuple[Leadership, Leadership], pg_dsn: str) -> None:
    a, b = pair
    await a.start()
    await eventually(lambda: a.is_leader, timeout_s=5, what="a to lead")
    await b.start()
    admin = await asyncpg.connect(pg_dsn, timeout=5)
    try:
        holders = await admin.fetch(
            "SELECT pid FROM pg_locks WHERE locktype='advisory' AND granted AND "
            "database=(SELECT oid FROM pg_database WHERE datname=current_database())")
        assert len(holders) == 1
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", holders[0]["pid"])
    finally:
        await admin.close()
    await eventually(lambda: not a.is_leader, timeout_s=5, what="a to notice it lost")
    took = await eventually(lambda: b.is_leader, timeout_s=5, what="b to take over")
    assert took <= RETRY_S + 1.0
    assert a.lost_total == 1
    assert await a.step() is False  # a reconnects but b holds the lock now
    assert b.is_leader


async def test_without_a_lock_one_controller_always_leads() -> None:
    alone = Leadership(None)
    await alone.start()
    assert alone.is_leader
    await alone.stop()
    assert alone.is_leader  # SQLite: one process per store, nothing to hand over


# -- the sweeper's split, without I/O --------------------------------------------------


@dataclass
class CountingStore:
    calls: list[str] = field(default_factory=list)

    async def expire_due(self) -> list[str]:
        self.calls.append("expire_due")
        return ["c_1"]

    async def prune_idempotency_keys(self, *, older_than_s: float = 0) -> int:
        self.calls.append("prune")
        return 0

    async def touch_nodes(self, seen: dict[str, Touch]) -> None:
        self.calls.append("touch")

    async def downlink_pending(self) -> dict[str, tuple[int, int]]:
        self.calls.append("downlink_pending")
        return {}


class Bus:
    def __init__(self) -> None:
        self.kinds: list[str] = []

    def publish(self, topic: str, kind: str, data: Any, *, size: int | None = None) -> None:
        self.kinds.append(kind)


async def test_a_sweeper_that_does_not_lead_skips_the_fleet_duties_but_keeps_its_own() -> None:
    leader = False
    store, bus = CountingStore(), Bus()
    idle_checked: list[float] = []
    offline_checked: list[int] = []

    def expire_if_idle(now_mono: float) -> bool:
        idle_checked.append(now_mono)
        return False

    own = SimpleNamespace(node_id="n1", session_id="s_1", last_frame_mono=0.0,
                          runtime={"state": "attached"}, expire_if_idle=expire_if_idle,
                          check_downlink=lambda epoch, q: False)
    sweeper = Sweeper(store, bus, [own],
                      expire_closed=lambda: offline_checked.append(1),
                      sweep_interval_s=3600.0, touch_interval_s=1.0, downlink_check_s=1.0,
                      is_leader=lambda: leader)
    await sweeper.tick()  # hourly == every tick at this interval: pruning is due too
    assert store.calls == ["touch", "downlink_pending"] and bus.kinds == []
    assert len(idle_checked) == 1 and len(offline_checked) == 1
    leader = True
    store.calls.clear()
    await sweeper.tick()
    assert store.calls == ["expire_due", "prune", "touch", "downlink_pending"]
    assert bus.kinds == ["command.updated"]


# -- takeover in the history -------------------------------------------------------------


async def test_the_replica_that_takes_a_node_over_closes_the_dead_session_no_later_than_its_own(
        pg_dsn: str) -> None:
    drivers = [PostgresDriver(pg_dsn, migrations=POSTGRES_MIGRATIONS, durability="process")
               for _ in range(2)]
    for driver in drivers:
        await driver.open()
    try:
        dead, survivor = (ControllerStore(d) for d in drivers)
        await enrolled(dead)
        kw: dict[str, Any] = {
            "node_id": "n1", "remote": "127.0.0.1", "previous_session": None, "evt_epoch": 7,
            "cmd_acked": 0, "runtime": {"state": "ready"}, "sidecar": {},
            "capabilities": ["exec"], "labels": {}}
        old = await dead.open_session(**kw, replica_id="r-a")
        new = await survivor.open_session(**kw, replica_id="r-b")  # r-a died, never closed
        assert new.superseded_session == old.session_id and new.superseded_replica == "r-a"
        history = {s.session_id: s for s in await survivor.sessions("n1", limit=10)}
        closed, opened = history[old.session_id], history[new.session_id]
        assert closed.replica_id == "r-a" and opened.replica_id == "r-b"
        assert closed.closed_at is not None and opened.opened_at is not None
        assert closed.closed_at <= opened.opened_at
        assert opened.closed_at is None
        assert [s for s in history.values() if s.closed_at is None] == [opened]
    finally:
        for driver in drivers:
            await driver.close()


# -- two replica processes ---------------------------------------------------------------


def leads(ctl: ControllerProc) -> bool:
    """What the replica's /metrics says (``tether_leader``), and its log agrees."""
    metrics = ctl.api().get("/metrics")
    assert metrics.status_code == 200, metrics.text
    leader = metric(metrics.text, "tether_leader")
    assert leader in (0, 1)
    if leader:
        assert "leader: this replica runs" in ctl.log()
    return bool(leader)


async def updates_until_expired(ws: ClientConnection, command_id: str
                                ) -> list[tuple[str, str]]:
    """Every ``command.updated`` (command id, state) the socket gets, up to ``command_id``'s
    ``expired``: a duplicate of an earlier command's arrives before it, so is caught."""
    seen: list[tuple[str, str]] = []
    async with asyncio.timeout(30):
        while (command_id, "expired") not in seen:
            frame = json.loads(await ws.recv())
            body = frame["b"]
            if frame["t"] == "event" and body["kind"] == "command.updated":
                seen.append((body["data"]["command_id"], body["data"]["state"]))
    return seen


async def overdue(api: Api, ws: ClientConnection, node_id: str) -> str:
    """Submit a command with a 3 s deadline to the offline ``node_id`` and subscribe ``ws``
    to its topic (where its expiry is pushed); its id."""
    cmd = await asyncio.to_thread(api.submit, node_id, "exec", {"argv": ["true"]}, ttl_s=3)
    command_id = str(cmd["command_id"])
    await ws.send(json.dumps({"t": "subscribe", "b": {"topics": [f"command:{command_id}"]}}))
    async with asyncio.timeout(10):
        while (frame := json.loads(await ws.recv()))["t"] != "subscribed":
            if frame["t"] == "snapshot":  # subscribed before it could expire
                assert frame["b"]["data"]["state"] == "queued", frame
    return command_id


def expired_entries(api: Api, command_id: str) -> int:
    command = api.command(command_id)
    assert command["state"] == "expired", command
    return [e["state"] for e in command["timeline"]].count("expired")


async def test_two_replicas_expire_an_overdue_command_once_and_the_survivor_takes_over(
        make_replica: Callable[[str], ControllerProc], tmp_path: Path) -> None:
    a = make_replica("r-a")
    await asyncio.to_thread(wait_until, lambda: leads(a), what="r-a to lead")
    b = make_replica("r-b")
    NodeProc(tmp_path / "n-x", "n-x").enroll(a)  # enrolled, never started: offline
    api_b = b.api()
    ws = await ws_subscribed(b, b.token, ["nodes"])
    try:
        first = await overdue(api_b, ws, "n-x")
        await updates_until_expired(ws, first)
        second = await overdue(api_b, ws, "n-x")
        seen = await updates_until_expired(ws, second)
        assert (first, "expired") not in seen, seen  # published once, by the leader
        assert seen.count((second, "expired")) == 1
        assert expired_entries(api_b, first) == 1 and expired_entries(api_b, second) == 1
        assert not leads(b)
        await asyncio.to_thread(a.kill9)
        await asyncio.to_thread(wait_until, lambda: leads(b), what="r-b to take over")
        third = await overdue(api_b, ws, "n-x")
        seen = await updates_until_expired(ws, third)
        assert seen.count((third, "expired")) == 1
        assert expired_entries(api_b, third) == 1
    finally:
        await ws.close()
