"""``tether sim``: a fleet of simulated nodes in one process, on the real protocol.

Each node has a real Ed25519 key (enrolled through the API) and a real
:class:`~tether.sidecar.transport.ControllerLink`; its stream state is in memory. Nodes emit
class A ``node.event`` frames, answer commands (``diag.ping`` and anything else:
``succeeded``), and can storm (all drop and come back at once). :class:`Fleet` is the
building block (the benchmark grows one to 10,000 sessions); :func:`simulate` is the
``tether sim`` run. The report always carries the zero-loss check: every frame a node
produced was acked by the controller (acks follow the commit), and for sampled nodes the
controller holds each event exactly once.

A simulated node keeps the wire contract where a real one does (the soak runs them under
faults beside real nodes, tools/soak/driver.py):

* **Ack timeout.** A connection on which class A frames were sent and no ack moved for
  ``ack_timeout_s`` (default: the welcome's ``stale_after_s``) is stalled, even if other
  frames still arrive (a path that swallows one direction): :class:`Fleet`'s one watchdog
  task aborts it, and the link redials after its jittered backoff. Every unacked frame is
  sent again after the next welcome with the same sequence (Sender rule 2), from memory.
* **Epochs.** A new ``cmd`` epoch in the welcome resets the cursor to 0 (PROTOCOL.md §3);
  an ``evt`` cursor in the welcome that does not fit (the controller lost or restored its
  store) starts a new ``evt`` epoch, re-sequences the unacked frames from 1 in their order
  and reconnects, as the real runtime does (node/runtime.py ``on_welcome``).
* **Redial.** Every redial after a failure waits the link's full-jitter backoff (only
  :meth:`Fleet.storm` and the benchmarks' ``drop_now`` dial at once, on purpose); a final
  close code stops that one node (``stopped``), never the fleet.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import statistics
import time
from dataclasses import dataclass, field, replace
from typing import Any

import httpx

from tether.protocol.classes import CMD_STREAM, EVT_STREAM
from tether.protocol.errors import RemoteProtocolError
from tether.protocol.frames import Ack, CmdDeliver, CmdStatus, Frame, Heartbeat, Welcome
from tether.protocol.signing import generate_private_key, public_key_raw
from tether.protocol.streams import (
    MAX_EPOCH,
    StreamReceiver,
    StreamRegressed,
    StreamSender,
    Verdict,
)
from tether.sidecar.transport import ControllerLink, HelloState, LinkStopped, ReconnectNeeded

from .bench_util import percentile

logger = logging.getLogger(__name__)

ENROLL_CONCURRENCY = 32
GOODBYE_CONCURRENCY = 256
WATCH_PERIOD_S = 1.0  # the ack watchdog's scan, at most (shorter for a short timeout)


class SimLink(ControllerLink):
    """The simulated node's link: a :class:`ControllerLink` that can also abort a stalled
    connection and redial after its backoff (``drop_now`` dials again at once)."""

    def abort(self) -> None:
        """Abort the connection as a dead network would (no close handshake: the path is
        known to be dead); the run loop redials after its next full-jitter delay."""
        ws = self._ws
        if ws is not None:
            ws.transport.abort()


@dataclass
class SimNode:
    """One simulated node: in-memory streams behind a real ControllerLink.

    Invariant: ``outbox`` holds exactly the produced frames with ``q > evt.acked``, under
    ``epoch`` (the node's ``evt`` epoch; a new one re-sequences them from 1).
    ``owed_since`` is set (monotonic) while frames were sent on the live connection and not
    acked, from the first such send or the last ack that moved; None otherwise."""

    node_id: str
    epoch: int
    ack_timeout_s: float | None = None  # None: the welcome's stale_after_s
    rng: random.Random = field(default_factory=random.Random)
    evt: StreamSender = field(default_factory=lambda: StreamSender(window=256))
    cmd: StreamReceiver = field(default_factory=StreamReceiver)
    outbox: dict[int, Frame] = field(default_factory=dict)
    session_id: str | None = None
    welcomes: int = 0
    resumed_welcomes: int = 0
    welcome_times: list[float] = field(default_factory=list)  # monotonic
    welcomed: asyncio.Event = field(default_factory=asyncio.Event)
    link: ControllerLink | None = None
    produced: int = 0
    applied_commands: set[str] = field(default_factory=set)
    # A command delivered again under the epoch it was applied in: the controller sequenced
    # it twice (a bug). Under a later epoch it is a resend after a crash (docs/protocol.md:
    # an epoch reset re-sends what was unacked) that the node skips by id, as the real node
    # does (node/store.py): ``redelivered_commands``.
    duplicate_commands: int = 0
    redelivered_commands: int = 0
    applied_epochs: dict[str, int] = field(default_factory=dict)
    heartbeat_rtts: list[tuple[float, float]] = field(default_factory=list)  # (mono, ms)
    stale_after_s: float = 60.0
    owed_since: float | None = None
    ack_timeouts: int = 0
    evt_epochs: int = 1  # evt epochs this node has had (a rotation adds one)
    stopped: LinkStopped | None = None  # the final close code that ended this node

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
        self.stale_after_s = welcome.stale_after_s
        if self.cmd.epoch != welcome.epoch:  # a new cmd epoch: this cursor starts at 0
            self.cmd = StreamReceiver(epoch=welcome.epoch, applied=0)
        self.owed_since = None
        try:
            self.evt.connected(int(welcome.acks.get(EVT_STREAM, 0)))
        except StreamRegressed:
            self.rotate_evt_epoch()
            raise ReconnectNeeded("controller's evt cursor did not fit: new epoch") from None
        self._trim()
        self.welcomes += 1
        self.resumed_welcomes += welcome.resumed
        self.welcome_times.append(time.monotonic())
        self.welcomed.set()
        await self.pump()

    async def on_frame(self, frame: Frame) -> None:
        if frame.t == "edge.heartbeat_ack" and self.link is not None:
            rtt = self.link.status.rtt_ms
            if rtt is not None and len(self.heartbeat_rtts) < 1000:
                self.heartbeat_rtts.append((time.monotonic(), rtt))
        if frame.t in ("edge.ack", "edge.heartbeat_ack"):
            n = (frame.b.get("acks") or {}).get(EVT_STREAM)
            if isinstance(n, int) and not isinstance(n, bool) and self._on_evt_ack(n):
                self._trim()
                await self.pump()
        elif frame.t == "cmd.deliver" and frame.q is not None:
            if self.cmd.classify(frame.q) is Verdict.APPLY:
                cmd = CmdDeliver.parse(frame)
                applied_in = self.applied_epochs.get(cmd.command_id)
                if applied_in is None:
                    self.applied_commands.add(cmd.command_id)
                    self.applied_epochs[cmd.command_id] = self.cmd.epoch
                    now = int(time.time() * 1000)
                    self._queue(CmdStatus(command_id=cmd.command_id, state="succeeded",
                                          result={"received_ms": now, "sent_ms": now}).frame())
                elif applied_in == self.cmd.epoch:
                    self.duplicate_commands += 1
                else:
                    self.redelivered_commands += 1
                self.cmd.committed(frame.q)
            assert self.link is not None
            await self.link.send(Ack(acks={CMD_STREAM: self.cmd.applied}).frame())
            await self.pump()

    async def on_disconnected(self) -> None:
        self.evt.disconnected()
        self.owed_since = None
        self.welcomed.clear()

    def _on_evt_ack(self, n: int) -> bool:
        """True when the ack moved the cursor; it restarts the ack timeout (or ends it)."""
        try:
            moved = self.evt.on_ack(n) is not None
        except RemoteProtocolError as exc:  # the real runtime logs and ignores it too
            logger.warning("ignoring an ack beyond what was sent",
                           extra={"node_id": self.node_id, "detail": exc.message})
            return False
        if moved:
            self.owed_since = time.monotonic() if self.evt.sent > self.evt.acked else None
        return moved

    def ack_overdue(self, now: float) -> bool:
        """Frames are owed an ack on the live connection, and none moved for the timeout."""
        since = self.owed_since
        timeout = self.ack_timeout_s if self.ack_timeout_s is not None else self.stale_after_s
        return since is not None and now - since >= timeout and self.welcomed.is_set()

    def abort_stalled(self) -> None:
        """The ack timeout passed: abort the connection (the link redials after its backoff;
        the unacked frames go again after the next welcome, with the same sequence)."""
        self.ack_timeouts += 1
        self.owed_since = None
        logger.info("no ack within the timeout; aborting the connection",
                    extra={"node_id": self.node_id, "detail": f"acked {self.evt.acked}, "
                           f"sent {self.evt.sent}"})
        if isinstance(self.link, SimLink):
            self.link.abort()

    def rotate_evt_epoch(self) -> None:
        """The controller's ``evt`` cursor does not fit this epoch (it lost or restored its
        store): a new epoch, every unacked frame re-sequenced from 1 in its order (the
        frames are otherwise unchanged)."""
        frames = [self.outbox[q] for q in sorted(self.outbox) if q > self.evt.acked]
        self.epoch = self.rng.randrange(1, MAX_EPOCH)
        self.evt_epochs += 1
        self.outbox = {q: replace(f, q=q) for q, f in enumerate(frames, start=1)}
        self.evt = StreamSender(last=len(frames), window=self.evt.window)
        self.owed_since = None

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
        """Send what the window allows, in order, on this connection only: a pump that
        outlived its connection stops (the next welcome's pump sends from the new cursor)."""
        assert self.link is not None
        welcomes = self.welcomes
        for q in self.evt.next_to_send():
            if self.welcomes != welcomes or not self.welcomed.is_set() or q not in self.outbox:
                return
            before = self.evt.sent
            self.evt.mark_sent(q)  # first: its ack may come back before the send returns
            if self.owed_since is None:
                self.owed_since = time.monotonic()
            if not await self.link.send(self.outbox[q]):
                # the link is gone: sent again next session (``rewind_to`` never moves the
                # cursor forward past one a reconnect rewound meanwhile)
                self.evt.rewind_to(before)
                return


async def _until_welcomed(sims: list[SimNode], targets: dict[int, int],
                          timeout_s: float) -> None:
    """Until each node has been seen connected with at least ``targets[id(node)]``
    welcomes. A node that passed is not re-checked, so waiting on 10,000 stays cheap."""
    pending = sims
    async with asyncio.timeout(timeout_s):
        while True:
            pending = [s for s in pending
                       if not (s.welcomed.is_set() and s.welcomes >= targets[id(s)])]
            if not pending:
                return
            await asyncio.sleep(0.02)


class Fleet:
    """Simulated nodes against one controller. Use as ``async with Fleet(...) as fleet``.

    Invariant: every link task, and the one ack watchdog, belongs to the fleet's TaskGroup;
    leaving the context says goodbye on every live session (so the controller marks them
    offline at once) and then cancels and awaits every task. A node whose link ends for good
    (a final close code) stops alone: its ``stopped`` says why.

    ``ack_timeout_s``: how long a connection may owe acks without one moving before it is
    aborted and redialled (None: each node's welcome ``stale_after_s``)."""

    def __init__(self, url: str, token: str, *, prefix: str = "sim",
                 seed: int | None = None, connect_timeout_s: float = 30.0,
                 ack_timeout_s: float | None = None) -> None:
        if ack_timeout_s is not None and ack_timeout_s <= 0:
            raise ValueError("ack_timeout_s must be > 0 (or None: the welcome's stale_after_s)")
        self.url = url
        self.rng = random.Random(seed)
        self.prefix = prefix
        self.connect_timeout_s = connect_timeout_s
        self.ack_timeout_s = ack_timeout_s
        self.nodes: list[SimNode] = []
        # idle connections kept less than uvicorn's 5 s keep-alive: at equal values a reused
        # one may be closed by the server as the request goes out (RemoteProtocolError)
        self.http = httpx.AsyncClient(base_url=url, timeout=30,
                                      limits=httpx.Limits(keepalive_expiry=2.0),
                                      headers={"Authorization": f"Bearer {token}"})
        self._stack = contextlib.AsyncExitStack()
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Fleet:
        await self._stack.enter_async_context(self.http)
        self._tg = await self._stack.enter_async_context(asyncio.TaskGroup())
        self._tasks.append(self._tg.create_task(self._watch_acks(), name="sim-ack-watchdog"))
        return self

    async def _watch_acks(self) -> None:
        """The ack timeout of every node, from one task (a timer per node would cost the
        10,000-node benchmark a task each): a scan at most every :data:`WATCH_PERIOD_S`,
        cheap (a node owing nothing is one attribute test)."""
        period = WATCH_PERIOD_S
        if self.ack_timeout_s is not None:
            period = max(0.05, min(period, self.ack_timeout_s / 4))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for sim in self.nodes:
                if sim.owed_since is not None and sim.ack_overdue(now):
                    sim.abort_stalled()

    async def _run_link(self, sim: SimNode) -> None:
        """One node's link until it stops; a final close code stops this node only (a real
        sidecar exits on one; the fleet's other nodes go on)."""
        assert sim.link is not None
        try:
            await sim.link.run()
        except LinkStopped as exc:
            sim.stopped = exc
            logger.warning("simulated node stopped by a final close code",
                           extra={"node_id": sim.node_id, "code": exc.code,
                                  "reason": exc.reason})

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.goodbye_all()
        finally:
            for task in self._tasks:
                task.cancel()
            await self._stack.aclose()

    async def goodbye_all(self) -> None:
        sem = asyncio.Semaphore(GOODBYE_CONCURRENCY)

        async def one(sim: SimNode) -> None:
            if sim.link is not None:
                async with sem:
                    await sim.link.goodbye("sim done")

        await asyncio.gather(*(one(s) for s in self.nodes))

    async def _enroll(self, count: int) -> list[tuple[str, Any]]:
        resp = await self.http.post("/api/v1/join-tokens", json={"uses": count})
        resp.raise_for_status()
        token = resp.json()["token"]
        sem = asyncio.Semaphore(ENROLL_CONCURRENCY)
        first = len(self.nodes)

        async def one(i: int) -> tuple[str, Any]:
            key = generate_private_key()
            node_id = f"{self.prefix}-{i}"
            async with sem:
                resp = await self.http.post("/v1/edge/enroll", json={
                    "join_token": token, "node_id": node_id, "public_key":
                    base64.urlsafe_b64encode(public_key_raw(key)).rstrip(b"=").decode()})
            resp.raise_for_status()
            return node_id, key

        return list(await asyncio.gather(*(one(i) for i in range(first, first + count))))

    async def add(self, count: int) -> list[SimNode]:
        """Enroll ``count`` more nodes through the API and start dialling; returns them."""
        assert self._tg is not None, "use the fleet as an async context manager"
        added = []
        for node_id, key in await self._enroll(count):
            sim = SimNode(node_id=node_id, epoch=self.rng.randrange(1, 1 << 62),
                          ack_timeout_s=self.ack_timeout_s,
                          rng=random.Random(self.rng.random()))
            sim.link = SimLink(controller_url=self.url, node_id=node_id, key=key,
                               handler=sim, rng=random.Random(self.rng.random()),
                               connect_timeout_s=self.connect_timeout_s)
            self._tasks.append(self._tg.create_task(self._run_link(sim), name=f"sim-{node_id}"))
            added.append(sim)
        self.nodes += added
        return added

    async def wait_online(self, sims: list[SimNode] | None = None, *,
                          min_welcomes: int = 1, timeout_s: float = 300) -> None:
        await _until_welcomed(self.nodes if sims is None else sims,
                              {id(s): min_welcomes for s in sims or self.nodes}, timeout_s)

    async def emit_all(self, i: int) -> None:
        for sim in self.nodes:
            sim.emit(i)
            await sim.pump()

    async def storm(self, *, timeout_s: float = 300) -> dict[str, Any]:
        """Every connection is cut at once (aborted, no close handshake, as in a network
        failure) and dials straight back: seconds until all are welcomed again, how many
        resumed their session, the peak welcome rate per second, and the dials it took."""
        targets = {id(s): s.welcomes + 1 for s in self.nodes}
        resumed_before = sum(s.resumed_welcomes for s in self.nodes)
        reconnects_before = sum(s.link.status.reconnects for s in self.nodes if s.link)
        t0 = time.monotonic()
        for sim in self.nodes:
            if sim.link is not None:
                sim.link.drop_now()
        await _until_welcomed(self.nodes, targets, timeout_s)
        seconds = time.monotonic() - t0
        buckets: dict[int, int] = {}
        for sim in self.nodes:
            for t in sim.welcome_times:
                if t >= t0:
                    buckets[int(t - t0)] = buckets.get(int(t - t0), 0) + 1
        return {"nodes": len(self.nodes), "seconds_to_all_online": round(seconds, 3),
                "peak_accepts_per_s": max(buckets.values(), default=0),
                "resumed": sum(s.resumed_welcomes for s in self.nodes) - resumed_before,
                "dials": sum(s.link.status.reconnects for s in self.nodes if s.link)
                - reconnects_before}

    async def drain(self, *, timeout_s: float = 120) -> None:
        async with asyncio.timeout(timeout_s):
            while any(s.evt.acked < s.evt.last for s in self.nodes):
                await asyncio.sleep(0.02)

    def heartbeat_rtts(self, since: float) -> list[float]:
        return [ms for s in self.nodes for t, ms in s.heartbeat_rtts if t >= since]

    async def zero_loss(self, sample: int = 5) -> dict[str, Any]:
        """All produced frames acked (acks follow the controller's commit) and, for a
        sample, each event held exactly once by the controller; no command applied twice."""
        lost = sum(s.evt.last - s.evt.acked for s in self.nodes)
        sampled = self.rng.sample(self.nodes, min(sample, len(self.nodes)))
        mismatches = {}
        for sim in sampled:
            resp = await self.http.get(f"/api/v1/nodes/{sim.node_id}/events",
                                       params={"limit": 10_000})
            resp.raise_for_status()
            held = [e["data"]["i"] for e in resp.json()["items"] if e["kind"] == "sim"]
            if sorted(held) != list(range(sim.produced)):
                mismatches[sim.node_id] = {"produced": sim.produced, "held": len(held)}
        return {"ok": lost == 0 and not mismatches, "unacked": lost,
                "sampled_nodes": len(sampled), "sample_mismatches": mismatches,
                "duplicate_commands": sum(s.duplicate_commands for s in self.nodes)}


async def simulate(url: str, token: str, *, nodes: int, events_per_node: int = 10,
                   duration_s: float = 5.0, storm: bool = False, prefix: str = "sim",
                   sample: int = 5, seed: int | None = None) -> dict[str, Any]:
    report: dict[str, Any] = {"nodes": nodes}
    async with Fleet(url, token, prefix=prefix, seed=seed) as fleet:
        t0 = time.monotonic()
        await fleet.add(nodes)
        report["seconds_to_enroll"] = round(time.monotonic() - t0, 3)
        t0 = time.monotonic()
        await fleet.wait_online(timeout_s=120)
        report["seconds_to_all_online"] = round(time.monotonic() - t0, 3)
        t1 = time.monotonic()
        for i in range(events_per_node):
            await fleet.emit_all(i)
            await asyncio.sleep(duration_s / max(events_per_node, 1))
        if storm:
            result = await fleet.storm(timeout_s=120)
            report["storm_seconds_to_all_online"] = result["seconds_to_all_online"]
            report["storm_peak_accepts_per_s"] = result["peak_accepts_per_s"]
        await fleet.drain()
        elapsed = time.monotonic() - t1
        produced = sum(s.produced for s in fleet.nodes)
        report.update(frames=produced, frames_per_s=round(produced / elapsed, 1),
                      sessions_held=sum(1 for s in fleet.nodes if s.welcomed.is_set()))
        rtts = fleet.heartbeat_rtts(0.0)
        report["heartbeat_rtt_p50_ms"] = percentile(rtts, 50)
        report["heartbeat_rtt_p99_ms"] = percentile(rtts, 99)
        report["zero_loss"] = await fleet.zero_loss(sample)
        report["reconnects"] = statistics.fmean(
            s.link.status.reconnects for s in fleet.nodes if s.link is not None)
    return report
