"""NATS restarted, or down for a while, in the middle of a run (real processes: three
replicas on one PostgreSQL and one nats-server, simulated nodes from tools/fleet.py and one
real node process whose command appends to a file).

Commands are submitted without pause through replicas B and C, so each one reaches its
node's replica (A, or B) over NATS; a ``/ws`` client on B expects their ``command.updated``
events (fanned out over NATS); the simulated nodes send events throughout. Then NATS goes
away and comes back, and:

* every command submitted before, during and after ends ``succeeded``, applied once (the
  real node's file holds each line once; no simulated node applied one twice);
* no session was dropped: each node has one session in its history, still open;
* every event the simulated nodes sent is held exactly once (``Fleet.zero_loss``);
* routing recovers: every replica reconnects, a command submitted on B afterwards is
  nudged over NATS to A (A's ``tether_nats_nudges_received_total`` goes up) and runs
  promptly, and B's ``/ws`` sees it succeed (the fan-out is back).

What an outage costs (documented in docs/operations.md): commands wait, for the periodic
downlink check (``downlink_check_s``) while NATS is down or for the replay of unsent nudges
once it is back; ``/ws`` events of one replica published while NATS is down never reach the
others (their clients heal from a snapshot, by subscribing again).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from tether.protocol.frames import TERMINAL_STATES
from tether.tools.fleet import Fleet
from tether.tools.servers import NatsServer

from ..controller.conftest import eventually
from ..helpers import ControllerProc, NodeProc, tether_cmd

REAL = "n-disk"  # the real node process, held by replica A
PACE_S = 0.05  # between two submissions of the driver: a steady stream, not a flood
PROMPTLY_S = 4.0  # under downlink_check_s (5 s) plus a sweep: a nudge ran it, not the check
SETTLE_S = 60.0  # every command terminal, every event acked, after NATS is back
OUTAGE_S = 8.0  # NATS down for longer than the link's reconnect backoff cap (5 s)


@dataclass(frozen=True)
class Submitted:
    command_id: str
    node_id: str
    via: str  # the replica it was submitted through
    phase: str  # "before", "during" or "after" the outage
    tag: str  # the line the real node appends, unique per command


@dataclass
class Run:
    """What the driver submitted and what B's /ws client saw."""

    b: ControllerProc
    api_b: httpx.AsyncClient
    apis: tuple[httpx.AsyncClient, ...]  # of every replica
    submitted: list[Submitted] = field(default_factory=list)
    seen_on_b: dict[str, list[str]] = field(default_factory=dict)  # command id -> states
    phase: str = "before"
    ran_while_down: str | None = None  # a command of A's node that ran while NATS was down
    going: asyncio.Event = field(default_factory=asyncio.Event)  # clear: the driver pauses

    def __post_init__(self) -> None:
        self.going.set()

    def seen_done(self, command_id: str) -> bool:
        return "succeeded" in self.seen_on_b.get(command_id, ())

    def in_phase(self, phase: str) -> list[Submitted]:
        return [s for s in self.submitted if s.phase == phase]


async def metrics(client: httpx.AsyncClient) -> dict[str, float]:
    resp = await client.get("/metrics")
    resp.raise_for_status()
    return {m[1]: float(m[2]) for m in
            re.finditer(r"^([a-z_]+) ([0-9.e+-]+)$", resp.text, re.MULTILINE)}


async def ws_on(ctl: ControllerProc, topics: list[str]) -> ClientConnection:
    ws = await connect(ctl.url.replace("http", "ws", 1) + "/ws",
                       subprotocols=["tether.v1.json"])  # type: ignore[list-item]
    await ws.send(json.dumps({"t": "hello", "b": {"token": ctl.token}}))
    assert json.loads(await ws.recv())["t"] == "welcome"
    await ws.send(json.dumps({"t": "subscribe", "b": {"topics": topics}}))
    while (frame := json.loads(await ws.recv()))["t"] != "subscribed":
        assert frame["t"] == "snapshot", frame
    return ws


async def collect(ws: ClientConnection, run: Run) -> None:
    """Every ``command.updated`` B's client receives, until the connection ends."""
    async for raw in ws:
        frame = json.loads(raw)
        body = frame.get("b") or {}
        if frame["t"] == "event" and body.get("kind") == "command.updated":
            data = body["data"]
            run.seen_on_b.setdefault(data["command_id"], []).append(data["state"])


async def drive(clients: dict[str, httpx.AsyncClient], targets: list[str], marker: Path,
                run: Run, stop: asyncio.Event) -> None:
    """Submit commands until ``stop``: node by node in turn, through each replica in
    ``clients`` in turn; the real node's command appends its tag to ``marker``."""
    vias = list(clients)
    for i in itertools.count():
        await run.going.wait()
        if stop.is_set():
            return
        node_id = targets[i % len(targets)]
        via = vias[(i // len(targets)) % len(vias)]
        tag = f"c{i}"
        argv = (["sh", "-c", f"echo {tag} >> {marker}"] if node_id == REAL else ["echo", tag])
        resp = await clients[via].post(f"/api/v1/nodes/{node_id}/commands",
                                       json={"kind": "exec", "args": {"argv": argv}})
        assert resp.status_code == 202, resp.text
        run.submitted.append(Submitted(resp.json()["command_id"], node_id, via, run.phase, tag))
        with contextlib.suppress(TimeoutError):  # pacing: the stop ends it early
            await asyncio.wait_for(stop.wait(), PACE_S)


async def emit(fleets: list[Fleet], stop: asyncio.Event) -> None:
    """Every simulated node sends one event per round until ``stop``."""
    for i in itertools.count():
        if stop.is_set():
            return
        for fleet in fleets:
            await fleet.emit_all(i)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)


@contextlib.asynccontextmanager
async def clients(*ctls: ControllerProc) -> AsyncIterator[list[httpx.AsyncClient]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(httpx.AsyncClient(
            base_url=ctl.url, timeout=15, limits=httpx.Limits(keepalive_expiry=2.0),
            headers={"Authorization": f"Bearer {ctl.token}"}))  # (tools/fleet.py on why 2 s)
            for ctl in ctls]


async def real_node(a: ControllerProc, api: httpx.AsyncClient, tmp_path: Path) -> NodeProc:
    join = await api.post("/api/v1/join-tokens", json={"uses": 1})
    assert join.status_code == 201, join.text
    node = NodeProc(tmp_path / REAL, REAL)
    await asyncio.to_thread(subprocess.run, tether_cmd(
        "node", "enroll", "--controller", a.url, "--token", join.json()["token"],
        "--node-id", REAL, "--state-dir", str(node.state_dir)),
        check=True, capture_output=True, timeout=30)
    return node


async def all_terminal(api: httpx.AsyncClient, run: Run) -> dict[str, str]:
    """command id -> state, once every submitted command is terminal (else {})."""
    states: dict[str, str] = {}
    for s in run.submitted:
        resp = await api.get(f"/api/v1/commands/{s.command_id}")
        resp.raise_for_status()
        state = resp.json()["state"]
        if state not in TERMINAL_STATES:
            return {}
        states[s.command_id] = state
    return states


async def run_through_outage(
        make_replica: Callable[..., ControllerProc], tmp_path: Path,
        outage: Callable[[Run], Awaitable[None]], *, downlink_check_s: float,
        healed_promptly: bool) -> Run:
    """The whole scenario (module docstring), with ``outage`` in the middle; returns the
    run for the scenario's own checks. ``healed_promptly``: the commands submitted during
    the outage all succeed within PROMPTLY_S of the replicas' reconnection (with a periodic
    downlink check far slower than that, only the replay of nudges can do it)."""
    a, b, c = (make_replica(r, "--downlink-check-s", str(downlink_check_s))
               for r in ("r-a", "r-b", "r-c"))
    marker = tmp_path / "marker"
    async with clients(a, b, c) as (api_a, api_b, api_c), \
            Fleet(a.url, a.token, prefix="sa", seed=1) as fleet_a, \
            Fleet(b.url, b.token, prefix="sb", seed=2) as fleet_b:
        run = Run(b, api_b, (api_a, api_b, api_c))
        node = await real_node(a, api_a, tmp_path)
        node.start()
        try:
            sims = [*await fleet_a.add(4), *await fleet_b.add(2)]
            await fleet_a.wait_online(timeout_s=60)
            await fleet_b.wait_online(timeout_s=60)
            await eventually(lambda: _online(api_a, REAL), what=f"{REAL} online on A")
            targets = [REAL, *(s.node_id for s in sims)]
            ws = await ws_on(b, [f"commands:{n}" for n in targets])
            stop = asyncio.Event()
            async with asyncio.TaskGroup() as tg:
                reader = tg.create_task(collect(ws, run))
                tg.create_task(drive({"r-b": api_b, "r-c": api_c}, targets, marker, run, stop))
                tg.create_task(emit([fleet_a, fleet_b], stop))
                # before: routing and fan-out work (one command of each node seen done on B)
                await eventually(lambda: _async(all(
                    any(run.seen_done(s.command_id) for s in run.submitted if s.node_id == n)
                    for n in targets) and len(run.submitted) >= 3 * len(targets)),
                    timeout_s=30, what="a command of each node done")
                before = await asyncio.gather(*(metrics(x) for x in (api_a, api_b, api_c)))
                run.phase = "during"  # from the outage until every replica is back
                await outage(run)
                # every replica is back on NATS (each saw the outage and reconnected)
                for api, was in zip((api_a, api_b, api_c), before, strict=True):
                    await eventually(lambda api=api, was=was: _reconnected(api, was),
                                     timeout_s=30, what="replica reconnected to NATS")
                if healed_promptly:
                    await eventually(lambda: _all_succeeded(api_b, run.in_phase("during")),
                                     timeout_s=PROMPTLY_S,
                                     what="commands submitted during the outage to run")
                run.going.set()
                run.phase = "after"
                await _probe(api_a, api_b, run, marker)
                await eventually(lambda: _async(len(run.in_phase("after")) >= 3 * len(targets)),
                                 timeout_s=30, what="commands submitted after the outage")
                stop.set()
                states = await eventually(lambda: all_terminal(api_b, run),
                                          timeout_s=SETTLE_S, what="every command terminal")
                # after the outage, B's client sees every command end (no outage to lose it)
                await eventually(lambda: _async(all(
                    run.seen_done(s.command_id) for s in run.in_phase("after"))),
                    timeout_s=SETTLE_S, what="B's /ws sees every later command succeed")
                await ws.close()
                reader.cancel()
            await fleet_a.drain(timeout_s=SETTLE_S)
            await fleet_b.drain(timeout_s=SETTLE_S)

            assert set(states.values()) == {"succeeded"}, \
                {cid: st for cid, st in states.items() if st != "succeeded"}
            # applied once: the real node's file holds each of its commands' tags once
            tags = [s.tag for s in run.submitted if s.node_id == REAL]
            assert sorted(marker.read_text().split()) == sorted(tags)
            by_node = {sim.node_id: sim for sim in sims}
            for s in run.submitted:
                if s.node_id != REAL:
                    assert s.command_id in by_node[s.node_id].applied_commands, s
            for fleet in (fleet_a, fleet_b):
                loss = await fleet.zero_loss(sample=len(fleet.nodes))
                assert loss["ok"] and loss["duplicate_commands"] == 0, loss
            # no session dropped because NATS went away: one session per node, still open
            for node_id, replica in [(REAL, "r-a"), *((s.node_id, "r-a") for s in sims[:4]),
                                     *((s.node_id, "r-b") for s in sims[4:])]:
                resp = await api_c.get(f"/api/v1/nodes/{node_id}/sessions")
                sessions = resp.json()["items"]
                assert [(x["replica_id"], x["closed_at"]) for x in sessions] == [
                    (replica, None)], (node_id, sessions)
            assert all(s.welcomes == 1 for s in sims), [s.welcomes for s in sims]
        finally:
            await asyncio.to_thread(node.cleanup)
    return run


async def _ran_while_down(run: Run) -> bool:
    """Whether a command for A's real node submitted during the outage has succeeded
    (noted in ``run.ran_while_down``)."""
    for s in run.in_phase("during"):
        if s.node_id == REAL:
            resp = await run.api_b.get(f"/api/v1/commands/{s.command_id}")
            if resp.json()["state"] == "succeeded":
                run.ran_while_down = s.command_id
                return True
    return False


async def _all_disconnected(run: Run) -> bool:
    for api in run.apis:
        if (await metrics(api))["tether_nats_connected"] != 0:
            return False
    return True


async def _all_succeeded(api: httpx.AsyncClient, commands: list[Submitted]) -> bool:
    for s in commands:
        resp = await api.get(f"/api/v1/commands/{s.command_id}")
        if resp.json()["state"] != "succeeded":
            return False
    return True


async def snapshot_on(ctl: ControllerProc, topic: str) -> Any:
    """The data of ``topic``'s snapshot, as a new /ws client on ``ctl`` receives it."""
    ws = await connect(ctl.url.replace("http", "ws", 1) + "/ws",
                       subprotocols=["tether.v1.json"])  # type: ignore[list-item]
    try:
        await ws.send(json.dumps({"t": "hello", "b": {"token": ctl.token}}))
        assert json.loads(await ws.recv())["t"] == "welcome"
        await ws.send(json.dumps({"t": "subscribe", "b": {"topics": [topic]}}))
        frame = json.loads(await ws.recv())
        assert frame["t"] == "snapshot", frame
        return frame["b"]["data"]
    finally:
        await ws.close()


async def _async(value: Any) -> Any:
    return value


async def _online(api: httpx.AsyncClient, node_id: str) -> bool:
    resp = await api.get(f"/api/v1/nodes/{node_id}")
    return resp.status_code == 200 and resp.json()["liveness"] == "online"


async def _reconnected(api: httpx.AsyncClient, before: dict[str, float]) -> bool:
    now = await metrics(api)
    return (now["tether_nats_connected"] == 1
            and now["tether_nats_reconnects_total"] > before["tether_nats_reconnects_total"])


async def _probe(api_a: httpx.AsyncClient, api_b: httpx.AsyncClient, run: Run,
                 marker: Path) -> None:
    """Routing is back: a command submitted on B for A's real node is nudged over NATS to
    A (its nudge counter goes up), runs promptly, and B's /ws sees it succeed."""
    received = (await metrics(api_a))["tether_nats_nudges_received_total"]
    t0 = time.monotonic()
    resp = await api_b.post(f"/api/v1/nodes/{REAL}/commands", json={
        "kind": "exec", "args": {"argv": ["sh", "-c", f"echo probe >> {marker}"]}})
    assert resp.status_code == 202, resp.text
    probe = Submitted(resp.json()["command_id"], REAL, "r-b", "after", "probe")
    run.submitted.append(probe)
    await eventually(lambda: _async(run.seen_done(probe.command_id)), timeout_s=PROMPTLY_S,
                     what="B's /ws to see the probe command succeed")
    assert time.monotonic() - t0 < PROMPTLY_S
    assert (await metrics(api_a))["tether_nats_nudges_received_total"] > received


async def test_nats_restarted_mid_run_loses_no_command_and_no_event_and_routing_recovers(
        make_replica: Callable[..., ControllerProc], nats_server: NatsServer,
        tmp_path: Path) -> None:
    async def restart(run: Run) -> None:
        # nats_server.restart(), held open until the replicas have noticed: a bare restart
        # is over before they do, and the commands "during" it would never see NATS down
        await nats_server.stop()
        await eventually(lambda: _all_disconnected(run), timeout_s=30,
                         what="every replica to see NATS gone")
        submitted = len(run.submitted)
        await eventually(lambda: _async(len(run.submitted) >= submitted + 7), timeout_s=30,
                         what="commands submitted while NATS is down")
        # Then no more until they have run: under a steady stream, each command's ack wakes
        # its node's downlink, which would carry the earlier ones along without any nudge.
        run.going.clear()
        await nats_server.start()

    # the periodic downlink check is slowed far past PROMPTLY_S: the commands submitted
    # during the restart run promptly only because their nudges are replayed, and A wakes
    # its sessions, once the replicas are reconnected
    run = await run_through_outage(make_replica, tmp_path, restart, downlink_check_s=120,
                                   healed_promptly=True)
    assert run.in_phase("before") and run.in_phase("after")


async def test_nats_down_past_the_reconnect_backoff_delays_commands_and_loses_none(
        make_replica: Callable[..., ControllerProc], nats_server: NatsServer,
        tmp_path: Path) -> None:
    async def down_a_while(run: Run) -> None:
        await nats_server.stop()
        t0 = time.monotonic()
        # Commands keep coming through B and C while NATS is down (the driver runs on), and
        # they still run: no nudge reaches A, but A's periodic downlink check finds them.
        await eventually(lambda: _ran_while_down(run), timeout_s=OUTAGE_S + 10,
                         what="a command submitted while NATS is down to run on A's node")
        # the outage lasts past the reconnect backoff's cap: its duration, not a wait
        await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - t0)))
        await nats_server.start()

    run = await run_through_outage(make_replica, tmp_path, down_a_while, downlink_check_s=2,
                                   healed_promptly=False)
    assert len(run.in_phase("during")) >= 10, len(run.in_phase("during"))
    # /ws events are at most once across replicas: A published that command's end while
    # NATS was down, so B's client never saw it; a new subscription's snapshot shows it
    assert run.ran_while_down is not None
    assert not run.seen_done(run.ran_while_down), run.seen_on_b[run.ran_while_down]
    healed = await snapshot_on(run.b, f"command:{run.ran_while_down}")
    assert healed["state"] == "succeeded", healed
