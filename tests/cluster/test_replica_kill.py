"""Replica kill, end to end (issue 12): three replicas on one PostgreSQL and one nats-server
behind HAProxy, 50 simulated nodes dialling the load balancer, a continuous stream of
side-effecting commands round-robin through every replica's REST API and of node events;
then ``kill -9`` of a replica that holds nodes. Everything is judged from what the surviving
replicas and the nodes say:

* the dead replica's nodes are ``online`` on the others within 30 s;
* every command ends exactly once: ``succeeded``, applied once by its node, with a timeline
  that went queued -> delivered -> succeeded and nothing else;
* no event is lost: every frame every node produced is acked and held exactly once;
* no node ever had two live sessions: in each node's history, each session closed no later
  than the next one opened, and the dead replica's sessions are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from tether.tools.cluster import (
    Cluster,
    CommandDriver,
    Replica,
    emit_events,
    held_by,
    wait_commands_done,
    wait_taken_over,
)
from tether.tools.fleet import Fleet
from tether.tools.servers import ServerUnavailable

from ..conftest import server_unavailable

NODES = 50
TAKEOVER_S = 30.0


@contextlib.asynccontextmanager
async def cluster_of_three(root: Path) -> AsyncIterator[Cluster]:
    cluster = Cluster(root, 3)
    try:
        await cluster.__aenter__()
    except ServerUnavailable as exc:
        server_unavailable(exc)
    try:
        yield cluster
    finally:
        await cluster.__aexit__(None, None, None)


async def until(predicate: Any, *, timeout_s: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            while not predicate():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout_s}s waiting for {what}") from None


async def get(http: httpx.AsyncClient, url: str) -> Any:
    resp = await http.get(url)
    assert resp.status_code == 200, resp.text
    return resp.json()


async def test_a_replica_killed_mid_stream_loses_no_command_no_event_and_never_doubles_a_session(
        tmp_path: Path) -> None:
    async with cluster_of_three(tmp_path) as cluster, \
            Fleet(cluster.lb_url, cluster.token, prefix="k", seed=12) as fleet, \
            httpx.AsyncClient(timeout=15, headers={
                "Authorization": f"Bearer {cluster.token}"}) as http:
        await fleet.add(NODES)  # enrolled through the load balancer too
        await fleet.wait_online(timeout_s=60)
        judge = cluster.replicas[-1]
        held = await _all_held(http, judge)
        by_replica = Counter(rid for rid, _sid in held.values())
        assert len(by_replica) == 3, by_replica  # round robin, no stickiness
        # the busiest of the others (r-1 is also the sweeper's leader, most likely)
        victim = max(cluster.replicas[:-1], key=lambda r: by_replica[r.replica_id])
        victims = sorted(n for n, (rid, _sid) in held.items() if rid == victim.replica_id)
        assert victims, by_replica

        driver = CommandDriver([r.url for r in cluster.replicas], cluster.token,
                               [s.node_id for s in fleet.nodes], rate_per_s=25.0)
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(driver.run(stop))
            tg.create_task(emit_events(fleet, stop, per_node_per_s=4.0))
            try:
                await until(lambda: len(driver.accepted) >= 40, timeout_s=30,
                            what="40 commands accepted before the kill")
                await victim.kill9()
                seconds = await wait_taken_over(http, judge, victim.replica_id, victims,
                                                timeout_s=TAKEOVER_S)
                after = len(driver.accepted)
                await until(lambda: len(driver.accepted) >= after + 40, timeout_s=30,
                            what="40 more commands through the two survivors")
            finally:
                stop.set()
        assert seconds <= TAKEOVER_S
        assert driver.failovers > 0  # the dead replica's turn went to the next one

        await _commands_ran_exactly_once(http, judge, fleet, driver, victims)
        await fleet.drain(timeout_s=60)
        zero = await fleet.zero_loss(sample=len(fleet.nodes))  # every node, not a sample
        assert zero["ok"] and zero["sampled_nodes"] == NODES, zero
        await _never_two_live_sessions(http, judge, fleet, victim, victims)


async def _all_held(http: httpx.AsyncClient, judge: Replica
                    ) -> dict[str, tuple[str, str]]:
    """Every node online as ``judge`` sees it, with its holder (waits for all of them)."""
    held: dict[str, tuple[str, str]] = {}
    async with asyncio.timeout(20):
        while len(held) < NODES:
            held = await held_by(http, judge)
            await asyncio.sleep(0.05)
    return held


async def _commands_ran_exactly_once(http: httpx.AsyncClient, judge: Replica, fleet: Fleet,
                                     driver: CommandDriver, victims: list[str]) -> None:
    counts = await wait_commands_done(http, judge, len(driver.accepted), timeout_s=60)
    # nothing written twice (a retried key names one command) and nothing else ended
    assert counts == {"succeeded": len(driver.accepted)}, counts
    # never sequenced twice in one epoch; a resend under a new epoch (the dead replica wrote
    # a frame but not its sent mark: the node's hello looks ahead) only on its nodes, and
    # skipped by id as a real node does
    assert sum(s.duplicate_commands for s in fleet.nodes) == 0
    assert not [s.node_id for s in fleet.nodes if s.redelivered_commands
                and s.node_id not in victims]
    for sim in fleet.nodes:
        mine = {cid for cid, node_id in driver.accepted.items() if node_id == sim.node_id}
        assert sim.applied_commands == mine, sim.node_id
    for command_id in driver.accepted:
        cmd = await get(http, f"{judge.url}/api/v1/commands/{command_id}")
        timeline = cmd["timeline"]
        assert cmd["state"] == "succeeded", cmd
        # no gap, no repeat, no ignored status: each state once, in order
        assert [e["state"] for e in timeline] == ["queued", "delivered", "succeeded"], cmd
        # (a status may come before the ack it follows: "delivered" is then implied by it)
        assert [e["detail"] for e in timeline][::2] == [None, None], timeline
        assert timeline[1]["detail"] in (None, "implied by status"), timeline
        stamps = [e["at"] for e in timeline]
        assert stamps == sorted(stamps), cmd


async def _never_two_live_sessions(http: httpx.AsyncClient, judge: Replica, fleet: Fleet,
                                   victim: Replica, victims: list[str]) -> None:
    for sim in fleet.nodes:
        rows = (await get(http, f"{judge.url}/api/v1/nodes/{sim.node_id}/sessions"))["items"]
        by_open = sorted(rows, key=lambda r: (r["opened_at"], r["closed_at"] is None))
        for older, newer in itertools.pairwise(by_open):
            assert older["closed_at"] is not None, (sim.node_id, by_open)
            assert older["closed_at"] <= newer["opened_at"], (sim.node_id, older, newer)
        assert by_open[-1]["closed_at"] is None, (sim.node_id, by_open)  # online now
        assert by_open[-1]["replica_id"] != victim.replica_id, (sim.node_id, by_open)
        on_victim = [r for r in rows if r["replica_id"] == victim.replica_id]
        assert all(r["closed_at"] is not None for r in on_victim), (sim.node_id, on_victim)
        if sim.node_id in victims:
            assert on_victim, (sim.node_id, rows)

