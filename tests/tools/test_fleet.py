"""Simulated nodes (tools/fleet.py) survive what real nodes survive, against a real
controller process on loopback: a connection that stalls silently behind a blackhole
(tools/faultproxy.py) is caught by the ack timeout, aborted and redialled after a jittered
backoff, and nothing acked is lost; a controller restored from a backup (its cursors behind
the node's: a new ``cmd`` epoch, an ``evt`` cursor that does not fit) is followed into new
epochs without an exception, as the real runtime follows it; a node that gets a final
close code stops alone, the fleet goes on."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tether.tools.faultproxy import FaultProxy
from tether.tools.fleet import Fleet, SimNode

from ..helpers import ControllerProc, until

NET_TIMEOUT_S = 10.0


@pytest.fixture
def slow_controller(tmp_path: Path) -> Iterator[ControllerProc]:
    """A controller on the default liveness thresholds (heartbeat 15 s, stale after 60 s):
    its own stale check is far slower than anything these tests wait for."""
    ctl = ControllerProc(tmp_path / "controller", extra=[])
    ctl.start()
    try:
        yield ctl
    finally:
        ctl.terminate()


async def emit(sim: SimNode, *numbers: int) -> None:
    for i in numbers:
        sim.emit(i)
        await sim.pump()


async def held_events(http: httpx.AsyncClient, node_id: str) -> list[int]:
    resp = await http.get(f"/api/v1/nodes/{node_id}/events", params={"limit": 10_000})
    resp.raise_for_status()
    return sorted(e["data"]["i"] for e in resp.json()["items"] if e["kind"] == "sim")


async def command_state(http: httpx.AsyncClient, command_id: str) -> str:
    resp = await http.get(f"/api/v1/commands/{command_id}")
    resp.raise_for_status()
    return str(resp.json()["state"])


async def submit(http: httpx.AsyncClient, node_id: str, n: int) -> str:
    resp = await http.post(f"/api/v1/nodes/{node_id}/commands",
                           json={"kind": "sim.apply", "args": {"n": n}})
    resp.raise_for_status()
    return str(resp.json()["command_id"])


async def test_a_silently_stalled_connection_is_aborted_by_the_ack_timeout_and_nothing_acked_is_lost(  # noqa: E501
        slow_controller: ControllerProc) -> None:
    proxy = FaultProxy("127.0.0.1", slow_controller.port)
    port = await proxy.serve()
    try:
        async with Fleet(f"http://127.0.0.1:{port}", slow_controller.token, prefix="bh",
                         seed=16, connect_timeout_s=2, ack_timeout_s=1.0) as fleet:
            [sim] = await fleet.add(1)
            await fleet.wait_online(timeout_s=30)
            await emit(sim, 0, 1, 2)
            await until(lambda: sim.evt.acked == 3, NET_TIMEOUT_S, "the first events acked")
            assert sim.link is not None and sim.link.status.reconnects == 0

            # Everything the node sends is swallowed; the connection stays open and nothing
            # closes it but a timeout (the controller's own is 60 s away).
            proxy.set("up", blackhole=True)
            await emit(sim, 3, 4, 5)
            await until(lambda: sim.link is not None and sim.link.status.reconnects >= 1,
                        20, "the node to give the stalled connection up")
            assert sim.ack_timeouts == 1  # the ack timeout, not the controller, gave it up
            assert sim.link.status.backoff_s > 0  # a jittered backoff, not a redial at once

            proxy.clear("up")
            await until(lambda: sim.welcomed.is_set() and sim.evt.acked == sim.evt.last == 6,
                        45, "the node back, its unacked frames sent again and acked")
            report = await fleet.zero_loss(sample=1)
            assert report["ok"], report  # every event held exactly once: none lost, none twice
            assert sim.epoch and sim.evt_epochs == 1  # the same epoch: only resent, same q
            assert sim.stopped is None
    finally:
        await proxy.close()


async def test_a_controller_restored_from_a_backup_is_followed_into_new_epochs(
        tmp_path: Path, slow_controller: ControllerProc) -> None:
    ctl = slow_controller
    backup = tmp_path / "backup"
    http = httpx.AsyncClient(base_url=ctl.url, timeout=NET_TIMEOUT_S,
                             headers={"Authorization": f"Bearer {ctl.token}"})
    async with http, Fleet(ctl.url, ctl.token, prefix="ep", seed=7,
                           connect_timeout_s=2) as fleet:
        [sim] = await fleet.add(1)
        await fleet.wait_online(timeout_s=30)
        await emit(sim, 0, 1, 2)
        first = await submit(http, sim.node_id, 1)
        await until(lambda: sim.evt.acked == sim.evt.last == 4, NET_TIMEOUT_S,
                    "three events and a status acked")

        await asyncio.to_thread(ctl.terminate)
        shutil.copytree(ctl.data_dir, backup, ignore=shutil.ignore_patterns("*.log"))
        await asyncio.to_thread(ctl.start)
        welcomes = sim.welcomes
        await until(lambda: sim.welcomes > welcomes and sim.welcomed.is_set(), 45,
                    "the node back on the restarted controller")
        await emit(sim, 3, 4, 5)
        await submit(http, sim.node_id, 2)
        await until(lambda: sim.cmd.applied == 2 and sim.evt.acked == sim.evt.last == 8,
                    NET_TIMEOUT_S, "more events and a second command acked")

        # The controller comes back from the backup: behind the node on both streams.
        await asyncio.to_thread(ctl.terminate)
        for path in ctl.data_dir.glob("controller.db*"):
            path.unlink()
        for path in backup.glob("controller.db*"):
            shutil.copy2(path, ctl.data_dir / path.name)
        cmd_epoch, evt_epoch = sim.cmd.epoch, sim.epoch
        await asyncio.to_thread(ctl.start)
        await until(lambda: sim.epoch != evt_epoch and sim.welcomed.is_set(), 60,
                    "a new evt epoch, and the node welcomed in it")
        assert sim.cmd.epoch != cmd_epoch  # the controller's new cmd epoch, cursor from 0

        await emit(sim, 6, 7)
        third = await submit(http, sim.node_id, 3)
        await until(lambda: third in sim.applied_commands and sim.evt.acked == sim.evt.last,
                    30, "a command and events in the new epochs")
        assert await command_state(http, third) == "succeeded"
        assert await command_state(http, first) == "succeeded"
        # What the backup never had (events 3-5) is the restore's loss; everything since
        # is held once, and nothing from before was applied twice.
        assert await held_events(http, sim.node_id) == [0, 1, 2, 6, 7]
        assert sim.duplicate_commands == 0 and sim.stopped is None
        assert sim.evt_epochs == 2


async def test_a_node_disabled_by_the_operator_stops_alone_and_the_fleet_goes_on(
        controller: ControllerProc) -> None:
    http = httpx.AsyncClient(base_url=controller.url, timeout=NET_TIMEOUT_S,
                             headers={"Authorization": f"Bearer {controller.token}"})
    async with http, Fleet(controller.url, controller.token, prefix="dis", seed=3,
                           connect_timeout_s=2) as fleet:
        gone, kept = await fleet.add(2)
        await fleet.wait_online(timeout_s=30)
        resp = await http.post(f"/api/v1/nodes/{gone.node_id}/disable")
        resp.raise_for_status()
        await until(lambda: gone.stopped is not None, NET_TIMEOUT_S, "the disabled node to stop")
        assert gone.stopped is not None and gone.stopped.code == 4403  # final: no redial
        await emit(kept, 0, 1)
        await until(lambda: kept.evt.acked == kept.evt.last == 2, NET_TIMEOUT_S,
                    "the other node's events acked")
        assert kept.welcomed.is_set() and kept.stopped is None
