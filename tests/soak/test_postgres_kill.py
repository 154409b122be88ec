"""PostgreSQL killed with -9 under a replica (``--durability fsync``) while commands flow, then
restarted: nothing acked is lost (issue 16, docs/reliability.md). And a replica crashed in
the middle of its PostgreSQL migrations (``store.mid_migration``) starts cleanly after.

The replica runs on a PostgreSQL and a nats-server of this test's own; one real node; the
history recorder armed in every process. The states the operator saw before the kill go into
the history, so a command whose acked status the server lost (a state that went back, or
never came again) is a violation; markers show no command ran twice.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tether.common.failpoints import CRASH_EXIT_CODE
from tether.tools.servers import NatsServer, PostgresServer, ServerUnavailable
from tether.tools.soak.history import CmdState, HistoryWriter

from ..conftest import server_unavailable
from ..helpers import wait_until
from .crashkit import Rig, crashed_at, summary

pytestmark = pytest.mark.timeout(150)
T = TypeVar("T")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _kill9(server: PostgresServer) -> None:
    server._proc.signal_tree(signal.SIGKILL)  # the postmaster and every backend at once
    await server._proc.end(signal.SIGKILL, 10)


@pytest.fixture
def servers() -> Iterator[tuple[PostgresServer, str, str]]:
    pg, nats = PostgresServer(fsync=True), NatsServer()
    try:
        try:
            _run(pg.start())
            _run(nats.start())
        except ServerUnavailable as exc:
            server_unavailable(exc)
        yield pg, _run(pg.create_database("tether")), nats.url
    finally:
        _run(nats.close())
        _run(pg.close())


def test_a_postgres_kill_9_mid_traffic_loses_nothing_acked(
        tmp_path: Path, servers: tuple[PostgresServer, str, str]) -> None:
    pg, dsn, nats_url = servers
    rig = Rig(tmp_path, controller_extra=["--durability", "fsync", "--store", dsn,
                                          "--bus", nats_url, "--replica-id", "r-a"])
    try:
        rig.start_controller()
        rig.enroll()
        rig.start_node()
        rig.wait_online()
        for _ in range(4):
            rig.submit()
        wait_until(rig.all_terminal, timeout_s=30, what="the first commands terminal")
        in_flight = [rig.submit() for _ in range(4)]
        seen = {c: rig.state(c) for c in rig.commands}
        _run(_kill9(pg))
        _run(pg.start())
        writer = HistoryWriter(rig.history / "before-kill.jsonl")
        for command_id, state in seen.items():
            writer.write(CmdState(command_id=command_id, state=state))
        writer.close()
        wait_until(lambda: all(rig.state(c) == "succeeded" for c in in_flight),
                   timeout_s=60, what="the commands in flight at the kill to succeed")
        violations, _records, states = rig.finish()
    finally:
        rig.stop()
    assert violations == [], summary(rig, violations)
    assert set(states.values()) == {"succeeded"}
    assert sorted(rig.markers.read_text().split()) == sorted(rig.commands.values())


def test_a_replica_crashed_mid_migration_on_postgres_migrates_cleanly_when_started_again(
        tmp_path: Path, servers: tuple[PostgresServer, str, str]) -> None:
    _pg, dsn, nats_url = servers
    rig = Rig(tmp_path, controller_extra=["--durability", "fsync", "--store", dsn,
                                          "--bus", nats_url, "--replica-id", "r-a"],
              controller_env={"TETHER_FAILPOINTS": "store.mid_migration=crash@3"})
    try:
        assert rig.start_controller_to_crash() == CRASH_EXIT_CODE
        assert crashed_at(rig, "store.mid_migration")
        rig.start_controller(armed=False)  # the open transaction was rolled back: all again
        rig.enroll()
        rig.start_node()
        rig.wait_online()
        rig.submit()
        violations, _records, states = rig.finish()
    finally:
        rig.stop()
    assert violations == [], summary(rig, violations)
    assert set(states.values()) == {"succeeded"}
