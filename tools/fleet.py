"""``tether sim``: a fleet of simulated nodes in one process, on the real protocol.

Each node has a real Ed25519 key (enrolled through the API) and a real
:class:`~tether.sidecar.transport.ControllerLink`; its stream state is in memory. Nodes emit
class A ``node.event`` frames at a rate, answer commands (``diag.ping`` and anything else:
``succeeded``), and can churn or storm (all drop and come back at once). The report always
carries the zero-loss check: every frame a node produced was acked by the controller (acks
follow the commit), and for sampled nodes the controller holds each event exactly once.
"""

from __future__ import annotations

import asyncio
import base64
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from tether.protocol.classes import CMD_STREAM, EVT_STREAM
from tether.protocol.frames import Ack, CmdDeliver, CmdStatus, Frame, Heartbeat, Welcome
from tether.protocol.signing import generate_private_key, public_key_raw
from tether.protocol.streams import StreamReceiver, StreamSender, Verdict
from tether.sidecar.transport import ControllerLink, HelloState


@dataclass
class SimNode:
    node_id: str
    epoch: int
    evt: StreamSender = field(default_factory=lambda: StreamSender(window=256))
    cmd: StreamReceiver = field(default_factory=StreamReceiver)
    outbox: dict[int, Frame] = field(default_factory=dict)
    session_id: str | None = None
    welcomes: int = 0
    welcomed: asyncio.Event = field(default_factory=asyncio.Event)
    link: ControllerLink | None = None
    produced: int = 0
    applied_commands: set[str] = field(default_factory=set)
    duplicate_commands: int = 0

    # -- LinkHandler --
    async def hello_state(self) -> HelloState:
        return HelloState(epoch=self.epoch, cmd_applied=self.cmd.applied,
                          session_id=self.session_id,
                          runtime={"state": "attached", "version": "sim"},
                          capabilities=("exec", "diag.ping"))

    def heartbeat_body(self) -> Heartbeat:
        return Heartbeat(uptime_s=0.0, runtime={"state": "attached"},
                         outbox={"depth": self.evt.unacked}, acks={CMD_STREAM: self.cmd.applied})

    async def on_welcome(self, welcome: Welcome) -> None:
        self.session_id = welcome.session_id
        if self.cmd.epoch != welcome.epoch:
            self.cmd = StreamReceiver(epoch=welcome.epoch, applied=0)
        self.evt.connected(int(welcome.acks.get(EVT_STREAM, 0)))
        self._trim()
        self.welcomes += 1
        self.welcomed.set()
        await self.pump()

    async def on_frame(self, frame: Frame) -> None:
        if frame.t in ("edge.ack", "edge.heartbeat_ack"):
            n = (frame.b.get("acks") or {}).get(EVT_STREAM)
            if isinstance(n, int) and self.evt.on_ack(n) is not None:
                self._trim()
                await self.pump()
        elif frame.t == "cmd.deliver" and frame.q is not None:
            if self.cmd.classify(frame.q) is Verdict.APPLY:
                cmd = CmdDeliver.parse(frame)
                if cmd.command_id in self.applied_commands:
                    self.duplicate_commands += 1
                self.applied_commands.add(cmd.command_id)
                now = int(time.time() * 1000)
                self._queue(CmdStatus(command_id=cmd.command_id, state="succeeded",
                                      result={"received_ms": now, "sent_ms": now}).frame())
                self.cmd.committed(frame.q)
            assert self.link is not None
            await self.link.send(Ack(acks={CMD_STREAM: self.cmd.applied}).frame())
            await self.pump()

    async def on_disconnected(self) -> None:
        self.evt.disconnected()
        self.welcomed.clear()

    # -- the in-memory outbox --
    def _queue(self, frame: Frame) -> None:
        q = self.evt.assign()
        self.outbox[q] = Frame(t=frame.t, b=frame.b, s=EVT_STREAM, q=q)

    def emit(self, i: int) -> None:
        self.produced += 1
        self._queue(Frame(t="node.event", b={"kind": "sim", "data": {"i": i}}))

    def _trim(self) -> None:
        for q in [q for q in self.outbox if q <= self.evt.acked]:
            del self.outbox[q]

    async def pump(self) -> None:
        assert self.link is not None
        for q in self.evt.next_to_send():
            if not await self.link.send(self.outbox[q]):
                return
            self.evt.mark_sent(q)


async def _enroll(http: httpx.AsyncClient, url: str, count: int, prefix: str
                  ) -> list[tuple[str, Any]]:
    token = (await http.post("/api/v1/join-tokens", json={"uses": count})).json()["token"]
    sem = asyncio.Semaphore(32)

    async def one(i: int) -> tuple[str, Any]:
        key = generate_private_key()
        node_id = f"{prefix}-{i}"
        async with sem:
            resp = await http.post(f"{url}/v1/edge/enroll", json={
                "join_token": token, "node_id": node_id, "public_key":
                base64.urlsafe_b64encode(public_key_raw(key)).rstrip(b"=").decode()})
        resp.raise_for_status()
        return node_id, key

    return list(await asyncio.gather(*(one(i) for i in range(count))))


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))], 3)


async def simulate(url: str, token: str, *, nodes: int, events_per_node: int = 10,
                   duration_s: float = 5.0, storm: bool = False, prefix: str = "sim",
                   sample: int = 5,
                   seed: int | None = None) -> dict[str, Any]:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=30,
                                 headers={"Authorization": f"Bearer {token}"}) as http:
        identities = await _enroll(http, url, nodes, prefix)
        sims = [SimNode(node_id=nid, epoch=rng.randrange(1, 1 << 62)) for nid, _ in identities]
        for sim, (_, key) in zip(sims, identities, strict=True):
            sim.link = ControllerLink(controller_url=url, node_id=sim.node_id, key=key,
                                      handler=sim, rng=random.Random(rng.random()))
        report: dict[str, Any] = {"nodes": nodes}
        async def run_link(sim: SimNode) -> None:
            assert sim.link is not None
            await sim.link.run()

        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(run_link(s)) for s in sims]
            try:
                t0 = time.monotonic()
                async with asyncio.timeout(120):
                    await asyncio.gather(*(s.welcomed.wait() for s in sims))
                report["seconds_to_all_online"] = round(time.monotonic() - t0, 3)
                t1 = time.monotonic()
                for i in range(events_per_node):
                    for sim in sims:
                        sim.emit(i)
                        await sim.pump()
                    await asyncio.sleep(duration_s / max(events_per_node, 1))
                if storm:
                    t2 = time.monotonic()
                    await asyncio.gather(*(s.link.reconnect_now("storm")
                                           for s in sims if s.link is not None))
                    async with asyncio.timeout(120):
                        while not all(s.welcomed.is_set() and s.welcomes >= 2 for s in sims):
                            await asyncio.sleep(0.02)
                    report["storm_seconds_to_all_online"] = round(time.monotonic() - t2, 3)
                async with asyncio.timeout(120):
                    while any(s.evt.acked < s.evt.last for s in sims):
                        await asyncio.sleep(0.02)
                elapsed = time.monotonic() - t1
                produced = sum(s.produced for s in sims)
                report.update(frames=produced, frames_per_s=round(produced / elapsed, 1),
                              sessions_held=sum(1 for s in sims if s.welcomed.is_set()))
                rtts = [s.link.status.rtt_ms for s in sims
                        if s.link is not None and s.link.status.rtt_ms is not None]
                report["heartbeat_rtt_p50_ms"] = _pct(rtts, 50)
                report["heartbeat_rtt_p99_ms"] = _pct(rtts, 99)
                # Zero loss: all acked (acks follow the controller's commit) and, sampled,
                # each event held exactly once by the controller.
                lost = sum(s.evt.last - s.evt.acked for s in sims)
                sampled = rng.sample(sims, min(sample, len(sims)))
                mismatches = {}
                for sim in sampled:
                    items = (await http.get(f"/api/v1/nodes/{sim.node_id}/events",
                                            params={"limit": 10_000})).json()
                    held = [e["data"]["i"] for e in items["items"] if e["kind"] == "sim"]
                    if sorted(held) != list(range(sim.produced)):
                        mismatches[sim.node_id] = {"produced": sim.produced,
                                                   "held": len(held)}
                report["zero_loss"] = {"ok": lost == 0 and not mismatches, "unacked": lost,
                                       "sampled_nodes": len(sampled),
                                       "sample_mismatches": mismatches,
                                       "duplicate_commands": sum(s.duplicate_commands
                                                                 for s in sims)}
                report["reconnects"] = statistics.fmean(
                    s.link.status.reconnects for s in sims if s.link is not None)
            finally:
                for sim in sims:
                    if sim.link is not None:
                        await sim.link.goodbye("sim done")
                for task in tasks:
                    task.cancel()
    return report
