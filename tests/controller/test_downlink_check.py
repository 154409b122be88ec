"""The periodic downlink check heals a lost nudge (services/sweeper.py, gateway
``EdgeConnection.check_downlink``): a command written to the store with no nudge reaches
the node's live session within ``downlink_check_s``; the check asks the store once for
all sessions, and an idle session costs no store call.

End to end on a controller served in this process (uvicorn on loopback, port 0) with raw
edge clients; the sweeper's and the session's halves also alone, without I/O."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tether.controller.config import ControllerConfig
from tether.controller.gateway import EdgeConnection
from tether.controller.services.sweeper import Sweeper
from tether.controller.store.records import Touch

from .conftest import (
    Edge,
    InProcess,
    enroll_in_process,
    eventually,
    serve_in_process,
)

CHECK_S = 0.2  # the period the served controller checks at
EXEC = {"argv": ["true"]}


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[InProcess]:
    config = ControllerConfig(data_dir=tmp_path / "ctl", durability="process", port=0,
                              sweep_interval_s=0.05, downlink_check_s=CHECK_S)
    async with serve_in_process(config) as served:
        yield served


@pytest.fixture
async def edge(served: InProcess) -> AsyncIterator[Edge]:
    factory = Edge(served.url)
    try:
        yield factory
    finally:
        await factory.aclose()


def count_calls(obj: Any, name: str) -> list[tuple[Any, ...]]:
    """Wrap the coroutine method ``obj.name`` on the instance; returns the list of the
    arguments of each call, appended as each returns."""
    calls: list[tuple[Any, ...]] = []
    inner: Callable[..., Awaitable[Any]] = getattr(obj, name)

    async def counted(*args: Any, **kwargs: Any) -> Any:
        result = await inner(*args, **kwargs)
        calls.append(args)
        return result
    setattr(obj, name, counted)
    return calls


async def returned(calls: list[tuple[Any, ...]], times: int) -> bool:
    return len(calls) >= times


async def submit_without_nudge(served: InProcess, node_id: str) -> str:
    """A command written through the store alone: what a lost nudge leaves behind."""
    command, created = await served.controller.store.submit_command(
        node_id=node_id, kind="exec", args=EXEC, ttl_s=None, idem_key=None, actor="test")
    assert created and command.q is not None  # sequenced: the node has a session
    return command.command_id


async def test_a_command_queued_without_a_nudge_reaches_the_live_session_within_the_period(
        served: InProcess, edge: Edge) -> None:
    [ident] = await enroll_in_process(served, "n-lost-nudge")
    reads = count_calls(served.controller.store, "downlink_after")
    client = await edge.session(ident)
    # the session's first pass read its (empty) outbox: only a wake-up sends from now on
    await eventually(lambda: returned(reads, 1), what="the first downlink pass")
    sweeper = served.controller.sweeper
    assert sweeper.downlink_wakes_total == 0
    command_id = await submit_without_nudge(served, ident.node_id)
    # CHECK_S plus a sweep bounds it; the margin is for a loaded machine
    deliver = await client.recv_type("cmd.deliver", timeout_s=CHECK_S + 3.0)
    assert (deliver.s, deliver.q, deliver.b["command_id"]) == ("cmd", 1, command_id)
    assert sweeper.downlink_wakes_total == 1  # the check woke it, nothing else did


async def test_idle_sessions_cost_one_store_query_per_check_and_none_each(
        served: InProcess, edge: Edge) -> None:
    idents = await enroll_in_process(served, "n-idle-1", "n-idle-2", "n-idle-3")
    store = served.controller.store
    reads = count_calls(store, "downlink_after")
    clients = [await edge.session(ident) for ident in idents]
    await eventually(lambda: returned(reads, 3), what="each session's first downlink pass")
    reads.clear()
    pending_calls = count_calls(store, "downlink_pending")

    await eventually(lambda: returned(pending_calls, 3), timeout_s=CHECK_S * 3 + 5.0,
                     what="three downlink checks")
    assert reads == []  # three checks over three idle sessions: no read per session
    command_id = await submit_without_nudge(served, idents[1].node_id)
    deliver = await clients[1].recv_type("cmd.deliver", timeout_s=CHECK_S + 3.0)
    assert deliver.b["command_id"] == command_id
    assert {args[0] for args in reads} == {idents[1].node_id}  # only the one with work


# -- the sweeper's half, without I/O ---------------------------------------------------


@dataclass
class PendingStore:
    pending: dict[str, tuple[int, int]] = field(default_factory=dict)
    calls: int = 0

    async def expire_due(self) -> list[str]:
        return []

    async def prune_idempotency_keys(self, *, older_than_s: float = 0) -> int:
        return 0

    async def touch_nodes(self, seen: dict[str, Touch]) -> None:
        pass

    async def downlink_pending(self) -> dict[str, tuple[int, int]]:
        self.calls += 1
        return dict(self.pending)


class Bus:
    def publish(self, topic: str, kind: str, data: Any, *, size: int | None = None) -> None:
        pass


def swept(node_id: str, asked: list[tuple[str, int, int]]) -> SimpleNamespace:
    def check_downlink(epoch: int, last_q: int) -> bool:
        asked.append((node_id, epoch, last_q))
        return True
    return SimpleNamespace(node_id=node_id, session_id="s_" + node_id, last_frame_mono=0.0,
                           runtime={"state": "attached"},
                           expire_if_idle=lambda now_mono: False,
                           check_downlink=check_downlink)


async def test_the_sweeper_asks_the_store_once_per_check_and_only_pending_sessions_wake(
        ) -> None:
    asked: list[tuple[str, int, int]] = []
    store = PendingStore()
    sessions = [swept(f"n{i}", asked) for i in range(1000)]
    sweeper = Sweeper(store, Bus(), sessions, expire_closed=lambda: [],  # type: ignore[arg-type]
                      sweep_interval_s=1.0, touch_interval_s=30.0, downlink_check_s=3.0)
    for _ in range(6):
        await sweeper.tick()
    assert store.calls == 2 and asked == []  # ticks 3 and 6; nothing pending, nobody asked
    store.pending = {"n7": (5, 2), "n-elsewhere": (1, 1)}  # the second: another replica's
    assert await sweeper.check_downlinks() == 1
    assert store.calls == 3 and asked == [("n7", 5, 2)]
    assert sweeper.downlink_wakes_total == 1


# -- the session's half, without I/O ---------------------------------------------------


def welcomed_connection(*, window: int = 4) -> EdgeConnection:
    config = ControllerConfig(cmd_window=window)
    conn = EdgeConnection(SimpleNamespace(client=None),  # type: ignore[arg-type]
                          SimpleNamespace(config=config))  # type: ignore[arg-type]
    conn.node_id, conn.session_id = "n1", "s_1"
    conn.core.welcomed(evt_epoch=7, evt_applied=0, cmd_epoch=5, cmd_acked=0)
    return conn


def test_a_session_wakes_only_for_frames_it_could_send_and_has_not() -> None:
    conn = welcomed_connection()
    assert not conn.check_downlink(9, 3)  # another epoch: a rotation fenced this session
    assert not conn.check_downlink(5, 0)  # nothing beyond what was sent
    assert conn.check_downlink(5, 3)
    conn.core.cmd_sending(1)
    conn.core.cmd_sending(2)
    conn.core.cmd_sending(3)
    assert not conn.check_downlink(5, 3)  # sent, awaiting the node's ack
    assert conn.check_downlink(5, 4)
    conn.core.cmd_sending(4)
    assert not conn.check_downlink(5, 9)  # the window is full: the node's ack wakes it
    conn = welcomed_connection()
    conn.runtime = {"state": "detached", "version": None}
    assert not conn.check_downlink(5, 3)  # nobody to deliver to: edge.resume wakes it
    conn = welcomed_connection()
    conn.fenced = True
    assert not conn.check_downlink(5, 3)
