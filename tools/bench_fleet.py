"""The fleet benchmarks: sessions held, the reconnect storm and ``/ws`` fan-out.

One controller process (default ``fsync`` durability, the given heartbeat period); one
:class:`~tether.tools.fleet.Fleet` in this process grows through the session sizes, so each
size is measured with the smaller ones still connected:

* ``sessions``: time to bring the new nodes online; then, after ``settle_s`` and over a
  steady window of at least one heartbeat period, the controller's CPU (% of one core, from
  its process times), its RSS growth per session (KiB, against the RSS with one session),
  and the heartbeat round trip p99 as the nodes see it (an upper bound of the controller's
  apply latency); beside it, the same RSS figure for a bare WebSocket endpoint on uvicorn
  and on ``websockets`` (the floor under a session);
* ``reconnect_storm`` (at one size): every connection is cut at once and dials straight
  back; seconds until all are welcomed again, peak accepts per second, resumed sessions,
  lost frames (events emitted just before the cut must all be acked exactly once) and
  duplicate sessions (open sessions on the controller beyond the fleet);
* ``ws_fanout`` (at the first size): ``clients`` browsers on ``/ws`` subscribed to
  ``nodes``; one node drops and reconnects ``rounds`` times; each event's delivery latency
  is the client's receive time minus the event's ``at_ms`` (same machine clock);
* ``job_fanout`` (at the first size): one job, ``diag.ping`` on every node of that size,
  through the REST API (``POST /api/v1/jobs``) until ``GET /api/v1/jobs/{id}`` says every
  node's result is back: seconds from the POST to the last result, and the command path's
  sustained rate (results per second over that time). The generator offers the whole load
  at once (one request), so the rate is the controller's, not the client's.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from websockets.asyncio.client import ClientConnection, connect

from .bench_util import ControllerProcess, peer_port, percentile, row, spawn_peer
from .bench_wsclient import LeanWsClient, connect_subscribed, session_sampler
from .fleet import Fleet


@dataclass(frozen=True)
class FleetPlan:
    sizes: tuple[int, ...]
    storm_at: int
    window_s: float
    heartbeat_s: float
    fanout_clients: int
    fanout_rounds: int
    # After a size is online and before its steady window: long enough for the sweeper's
    # first touch of the new sessions (every 5 s), a one-off cost, not a steady one.
    settle_s: float = 6.0


def _cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


async def _fanout(fleet: Fleet, url: str, token: str, clients: int,
                  rounds: int) -> dict[str, Any]:
    """Latency (ms) from publish to each client's receipt of ``session.*`` events for one
    node that drops and reconnects ``rounds`` times: 2 events x rounds x clients samples.
    The clients are :class:`~tether.tools.bench_wsclient.LeanWsClient` (see there why)."""
    (trigger,) = await fleet.add(1)
    await fleet.wait_online([trigger])
    gate = asyncio.Semaphore(16)

    async def dial() -> LeanWsClient:
        async with gate:
            return await connect_subscribed(url, token)

    conns = list(await asyncio.gather(*(dial() for _ in range(clients))))
    expected = 2 * rounds
    samples: list[float] = []
    remaining = [clients]
    all_seen = asyncio.get_running_loop().create_future()

    def one_done() -> None:
        remaining[0] -= 1
        if remaining[0] == 0 and not all_seen.done():
            all_seen.set_result(None)

    make = session_sampler(trigger.node_id, samples, expected, one_done)
    for conn in conns:
        conn.on_text = make()
    try:
        async with asyncio.timeout(120):
            assert trigger.link is not None
            for n in range(rounds):
                trigger.link.drop_now()
                await fleet.wait_online([trigger], min_welcomes=n + 2)
                await asyncio.sleep(0.05)  # one change at a time: latency, not throughput
            await all_seen
    finally:
        for conn in conns:
            conn.close()
    return {"clients": clients, "events": expected, "deliveries": len(samples),
            "p50_ms": percentile(samples, 50), "p99_ms": percentile(samples, 99)}


async def _job_fanout(fleet: Fleet, nodes: list[str], *, timeout_s: float = 300
                      ) -> dict[str, Any]:
    """One ``diag.ping`` job over ``nodes`` (all online), timed from its POST until every
    node's command has succeeded, read back through the REST API."""
    t0 = time.monotonic()
    resp = await fleet.http.post("/api/v1/jobs", json={
        "nodes": nodes, "kind": "diag.ping", "args": {}, "offline": "fail"})
    resp.raise_for_status()
    job_id = resp.json()["job_id"]
    async with asyncio.timeout(timeout_s):
        while True:
            job = (await fleet.http.get(f"/api/v1/jobs/{job_id}")).json()
            if job["state"] != "running":
                break
            await asyncio.sleep(0.05)
    seconds = time.monotonic() - t0
    succeeded = int(job["summary"].get("succeeded", 0))
    return {"nodes": len(nodes), "succeeded": succeeded, "state": job["state"],
            "seconds_to_all_results": round(seconds, 3),
            "commands_per_s": round(succeeded / seconds, 1)}


async def _idle_floor(root: Path, peer: str, count: int) -> float:
    """KiB of server RSS per idle WebSocket connection to a bench peer (``ws-idle-*``):
    growth from one connection to ``count``, the way ``sessions`` is measured."""
    port_file = root / f"{peer}.port"
    port_file.unlink(missing_ok=True)
    proc = spawn_peer(peer, port_file)
    conns: list[ClientConnection] = []
    try:
        url = f"ws://127.0.0.1:{await peer_port(port_file)}/"
        server = psutil.Process(proc.pid)

        async def dial() -> None:
            conns.append(await connect(url, subprotocols=["tether.v1.msgpack"],  # type: ignore[list-item]
                                       compression=None, ping_interval=None,
                                       open_timeout=60))

        async with asyncio.timeout(60):
            while True:  # uvicorn binds before it serves: retry the first dial
                try:
                    await dial()
                    break
                except OSError:
                    await asyncio.sleep(0.05)
        rss0 = server.memory_info().rss
        gate = asyncio.Semaphore(200)

        async def gated() -> None:
            async with gate:
                await dial()

        async with asyncio.timeout(300):
            await asyncio.gather(*(gated() for _ in range(count - 1)))
        return (server.memory_info().rss - rss0) / 1024 / max(1, count - 1)
    finally:
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
        proc.terminate()
        await asyncio.to_thread(proc.wait, 10)


async def run_fleet(root: Path, plan: FleetPlan) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    floor_at = plan.sizes[0]
    for peer, system in (("ws-idle-uvicorn", "uvicorn-ws-idle"),
                         ("ws-idle-websockets", "websockets-ws-idle")):
        kib = await _idle_floor(root, peer, floor_at)
        results.append(row("sessions", system, "rss_kib_per_session", round(kib, 2), "KiB",
                           sessions=floor_at, note="a bare WebSocket endpoint that only "
                           "reads: the floor under a session, before any Tether state"))
    extra = ["--heartbeat-s", str(plan.heartbeat_s),
             "--stale-after-s", str(max(60.0, plan.heartbeat_s * 4))]
    async with ControllerProcess(root, "fleet", "fsync", extra=extra) as ctl:
        assert ctl.proc is not None
        proc = psutil.Process(ctl.proc.pid)
        async with Fleet(ctl.url, ctl.token, prefix="b", seed=7,
                         connect_timeout_s=60) as fleet:
            await fleet.add(1)
            await fleet.wait_online()
            rss0 = proc.memory_info().rss
            hb = {"heartbeat_s": plan.heartbeat_s}
            for size in plan.sizes:
                t0 = time.monotonic()
                added = await fleet.add(size - len(fleet.nodes))
                await fleet.wait_online(added, timeout_s=600)
                online_s = time.monotonic() - t0
                await asyncio.sleep(plan.settle_s)
                steady_from = time.monotonic()
                cpu0 = _cpu_s(proc)
                await asyncio.sleep(plan.window_s)
                cpu_pct = 100 * (_cpu_s(proc) - cpu0) / (time.monotonic() - steady_from)
                rss = proc.memory_info().rss
                per_session_kib = (rss - rss0) / 1024 / max(1, size - 1)
                rtts = fleet.heartbeat_rtts(steady_from)
                common = {"sessions": size, **hb, "window_s": plan.window_s}
                results += [
                    row("sessions", "tether", "sessions", size, "sessions", **common),
                    row("sessions", "tether", "rss_kib_per_session", round(per_session_kib, 2),
                        "KiB", rss_mib=round(rss / 2**20, 1), **common),
                    row("sessions", "tether", "cpu_percent_one_core", round(cpu_pct, 2), "%",
                        **common),
                    row("sessions", "tether", "heartbeat_rtt_p99_ms",
                        percentile(rtts, 99), "ms", samples=len(rtts), **common),
                    row("sessions", "tether", "seconds_to_online", round(online_s, 3), "s",
                        added=len(added), **common),
                ]
                if size == plan.sizes[0] and plan.fanout_clients:
                    fan = await _fanout(fleet, ctl.url, ctl.token, plan.fanout_clients,
                                        plan.fanout_rounds)
                    for metric in ("p50_ms", "p99_ms"):
                        results.append(row("ws_fanout", "tether", metric, fan[metric], "ms",
                                           clients=fan["clients"], events=fan["events"],
                                           deliveries=fan["deliveries"], sessions=size))
                if size == plan.sizes[0]:
                    job = await _job_fanout(fleet, [s.node_id for s in fleet.nodes][:size])
                    for metric, unit in (("seconds_to_all_results", "s"),
                                         ("commands_per_s", "commands/s")):
                        results.append(row("job_fanout", "tether", metric, job[metric], unit,
                                           nodes=job["nodes"], succeeded=job["succeeded"],
                                           job_state=job["state"], sessions=size))
                if size == plan.storm_at:
                    results += await _storm(fleet, ctl.url, ctl.token)
    return results


async def _storm(fleet: Fleet, url: str, token: str) -> list[dict[str, Any]]:
    await fleet.emit_all(0)  # in flight when the cut comes: must arrive exactly once
    storm = await fleet.storm(timeout_s=600)
    await fleet.emit_all(1)
    await fleet.drain(timeout_s=300)
    zero = await fleet.zero_loss(sample=20)
    resp = await fleet.http.get("/api/v1/diag")
    resp.raise_for_status()
    open_sessions = resp.json()["sessions"]["open"]
    n = storm["nodes"]
    extra = {"peak_accepts_per_s": storm["peak_accepts_per_s"], "resumed": storm["resumed"],
             "dials": storm["dials"], "zero_loss": zero}
    return [
        row("reconnect_storm", "tether", "nodes", n, "nodes", **extra),
        row("reconnect_storm", "tether", "seconds_to_all_online",
            storm["seconds_to_all_online"], "s", nodes=n),
        row("reconnect_storm", "tether", "lost", zero["unacked"] + sum(
            max(0, m["produced"] - m["held"]) for m in zero["sample_mismatches"].values()),
            "frames", nodes=n, ok=zero["ok"]),
        row("reconnect_storm", "tether", "duplicate_sessions", max(0, open_sessions - n),
            "sessions", nodes=n, open_sessions=open_sessions),
    ]
