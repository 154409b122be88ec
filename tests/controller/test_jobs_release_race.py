"""The job service's release on a real SQLite store: two releases of the same part at once
(the create request's and the driver's tick overlap) record it once and keep its command;
a part cancelled while its command was being submitted gets that command cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tether.controller.services.bus import LocalBus
from tether.controller.services.jobs import JobService
from tether.controller.store.controller_store import ControllerStore

from ..helpers import until
from .store_contract.conftest import QUOTAS, open_driver
from .store_contract.helpers import enrolled

EXEC = {"argv": ["true"]}


class GatedCommands:
    """The CommandService's two calls the job service makes: an idempotent submit (the
    store's own) that waits at a gate, and cancels recorded."""

    def __init__(self, store: ControllerStore) -> None:
        self.store = store
        self.gate = asyncio.Event()
        self.waiting = 0
        self.cancelled: list[str] = []

    async def submit(self, node_id: str, *, kind: str, args: dict[str, Any],
                     ttl_s: float | None, idem_key: str, actor: str, offline: str) -> Any:
        command = await self.store.submit_command(node_id=node_id, kind=kind, args=args,
                                                  ttl_s=ttl_s, idem_key=idem_key,
                                                  actor=actor)
        self.waiting += 1
        await self.gate.wait()
        return command

    async def control(self, command_id: str, action: str, *, actor: str) -> None:
        assert action == "cancel"
        self.cancelled.append(command_id)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ControllerStore]:
    driver = await open_driver("sqlite", str(tmp_path / "controller.db"))
    try:
        yield ControllerStore(driver, quotas=QUOTAS, max_dead_letters_per_node=3)
    finally:
        await driver.close()


async def _job(store: ControllerStore, nodes: list[str]) -> Any:
    return await store.create_job(kind="exec", args=EXEC, selector={"nodes": nodes},
                                  offline="queue", max_in_flight=None, ttl_s=None,
                                  actor="admin", parts=[(n, "pending") for n in nodes])




async def test_two_releases_of_the_same_part_at_once_keep_its_command(
        store: ControllerStore) -> None:
    nodes = [await enrolled(store, n) for n in ("n1", "n2")]
    commands = GatedCommands(store)
    jobs = JobService(store, commands, LocalBus(),  # type: ignore[arg-type]
                      view=lambda row: {"liveness": "online"})
    job = await _job(store, nodes)
    first = asyncio.create_task(jobs.release(job))
    await until(lambda: commands.waiting == 2)  # both parts claimed and being submitted
    second = asyncio.create_task(jobs.release(job))  # claims the same releasing parts
    await until(lambda: commands.waiting == 4)
    commands.gate.set()
    assert sorted([await first, await second]) == [0, 2]
    assert commands.cancelled == []  # the part's own command is never cancelled
    got = await store.get_job(job.job_id)
    assert [(p.node_id, p.state) for p in got.parts] == [("n1", "queued"), ("n2", "queued")]


async def test_a_part_cancelled_while_its_command_is_submitted_cancels_that_command(
        store: ControllerStore) -> None:
    nodes = [await enrolled(store, "n1")]
    commands = GatedCommands(store)
    jobs = JobService(store, commands, LocalBus(),  # type: ignore[arg-type]
                      view=lambda row: {"liveness": "online"})
    job = await _job(store, nodes)
    release = asyncio.create_task(jobs.release(job))
    await until(lambda: commands.waiting == 1)
    await store.cancel_job(job.job_id, actor="admin")
    commands.gate.set()
    assert await release == 0
    assert len(commands.cancelled) == 1
    got = await store.get_job(job.job_id)
    assert [p.state for p in got.parts] == ["cancelled"]
