"""Three controller replicas on PostgreSQL and NATS behind HAProxy, a simulated fleet dialling
the load balancer, and a command driver: the cluster as the replica-kill test and ``tether
bench`` run it.

* :class:`Cluster` (``async with``): a PostgreSQL of its own with a database for the store, a
  nats-server, ``replicas`` processes of ``tether controller serve --store .. --bus ..
  --replica-id r-1..`` and an HAProxy in front (:func:`~tether.tools.servers.haproxy_config`).
  Raises :class:`~tether.tools.servers.ServerUnavailable` when one of the servers cannot
  start. Leaving it stops everything it started, in reverse order.
* :class:`CommandDriver`: a continuous stream of side-effecting commands (each sim node
  applies a command once; a second application of the same id is counted as a duplicate),
  issued round-robin straight to each replica's REST API with an ``Idempotency-Key``. When a
  replica does not answer, the same request with the same key goes to the next one: every
  command it records as accepted exists once in the store, whoever wrote it.
* :func:`held_by`, :func:`wait_taken_over`: which replica holds which node, judged from one
  replica's API, and the wait for a dead replica's nodes to be online elsewhere.
* :func:`run_cluster`: the ``cluster`` rows of ``tether bench``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .bench_util import ControllerProcess, row
from .fleet import Fleet
from .servers import HaproxyServer, NatsServer, PostgresServer, ServerUnavailable

POLL_S = 0.1  # condition polling interval (a condition with a deadline, not a sleep-as-sync)
COMMAND_KIND = "sim.apply"  # no shape the controller knows: the sim node applies it


@dataclass
class Replica:
    """One replica process; :meth:`kill9` ends it without a word to anyone."""

    replica_id: str
    proc: ControllerProcess

    @property
    def url(self) -> str:
        return self.proc.url

    @property
    def alive(self) -> bool:
        return self.proc.proc is not None and self.proc.proc.poll() is None

    async def kill9(self) -> None:
        """SIGKILL, and wait until the process is gone (its sockets are closed by then)."""
        popen = self.proc.proc
        assert popen is not None
        popen.kill()
        await asyncio.to_thread(popen.wait, 10)

    def log(self) -> str:
        path = self.proc.dir / "controller.log"
        return path.read_text(errors="replace") if path.exists() else ""


class Cluster:
    """PostgreSQL + NATS + ``replicas`` controller processes + HAProxy, on loopback under
    ``root``. ``heartbeat_s``/``stale_after_s``/``offline_after_s`` are the replicas'
    liveness settings (fast by default, as the tests use them); ``fsync`` is PostgreSQL's
    (the bench measures durable commits, the test need not)."""

    def __init__(self, root: Path, replicas: int = 3, *, heartbeat_s: float = 0.5,
                 stale_after_s: float = 3.0, offline_after_s: float = 6.0,
                 fsync: bool = False, check_inter_ms: int = 500,
                 max_connections: int = 200) -> None:
        self.root = root
        self.count = replicas
        self.liveness = ["--heartbeat-s", str(heartbeat_s), "--stale-after-s",
                         str(stale_after_s), "--offline-after-s", str(offline_after_s)]
        self.check_inter_ms = check_inter_ms
        # in the system's temp dir: when root, PostgreSQL runs as another user, who may not
        # enter ``root``
        self.postgres = PostgresServer(fsync=fsync, max_connections=max_connections)
        self.nats = NatsServer(base_dir=root)
        self.haproxy: HaproxyServer | None = None
        self.replicas: list[Replica] = []
        self.dsn = ""
        self._stack = contextlib.AsyncExitStack()

    # -- addresses ---------------------------------------------------------------------------

    @property
    def lb_url(self) -> str:
        """The load balancer's address: what nodes dial (and enroll through)."""
        assert self.haproxy is not None
        return self.haproxy.url

    @property
    def token(self) -> str:
        """An operator token (the first replica's; tokens live in the shared store, so it
        works on every replica)."""
        return self.replicas[0].proc.token

    def alive(self) -> list[Replica]:
        return [r for r in self.replicas if r.alive]

    def replica(self, replica_id: str) -> Replica:
        return next(r for r in self.replicas if r.replica_id == replica_id)

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Cluster:
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            await self._stack.enter_async_context(self.postgres)
            self.dsn = await self.postgres.create_database("tether")
            await self._stack.enter_async_context(self.nats)
            for i in range(1, self.count + 1):
                # One at a time: the first one migrates the fresh database.
                proc = ControllerProcess(self.root, f"r-{i}", "process", extra=[
                    *self.liveness, "--store", self.dsn, "--bus", self.nats.url,
                    "--replica-id", f"r-{i}"])
                await self._stack.enter_async_context(proc)
                self.replicas.append(Replica(f"r-{i}", proc))
            self.haproxy = HaproxyServer(
                [(r.replica_id, r.url.removeprefix("http://")) for r in self.replicas],
                check_inter_ms=self.check_inter_ms, base_dir=self.root)
            await self._stack.enter_async_context(self.haproxy)
            await self._until_every_replica_behind_the_lb()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def _until_every_replica_behind_the_lb(self, timeout_s: float = 30) -> None:
        """Until the round robin has answered from every replica (each passed its first
        health check): before that, the first nodes would all land on one replica."""
        want = {r.replica_id for r in self.replicas}
        seen: set[str] = set()
        async with httpx.AsyncClient(timeout=5) as http, asyncio.timeout(timeout_s):
            while seen != want:
                with contextlib.suppress(httpx.HTTPError):
                    resp = await http.get(f"{self.lb_url}/api/v1/health")
                    if resp.status_code == 200:
                        seen.add(resp.json()["replica_id"])
                await asyncio.sleep(POLL_S / 5)


# -- who holds which node ---------------------------------------------------------------------


async def held_by(http: httpx.AsyncClient, replica: Replica) -> dict[str, tuple[str, str]]:
    """Every node that ``replica`` shows ``online`` -> (the replica holding its session, the
    session id), judged from ``replica``'s API: a session it holds itself, or one the store
    says another replica holds (``session.replica``)."""
    resp = await http.get(f"{replica.url}/api/v1/nodes")
    resp.raise_for_status()
    out = {}
    for node in resp.json()["items"]:
        session = node.get("session")
        if node["liveness"] == "online" and session:
            out[node["node_id"]] = (session.get("replica", replica.replica_id),
                                    session["session_id"])
    return out


async def wait_taken_over(http: httpx.AsyncClient, judge: Replica, dead: str,
                          nodes: Iterable[str], *, timeout_s: float) -> float:
    """Until every node of ``nodes`` is ``online`` on a replica other than ``dead``, as
    ``judge`` sees it; returns the seconds it took. Raises TimeoutError naming the nodes
    still missing."""
    t0 = time.monotonic()
    pending = set(nodes)
    try:
        async with asyncio.timeout(timeout_s):
            while pending:
                with contextlib.suppress(httpx.HTTPError):
                    held = await held_by(http, judge)
                    pending = {n for n in pending if n not in held or held[n][0] == dead}
                if pending:
                    await asyncio.sleep(POLL_S)
    except TimeoutError:
        raise TimeoutError(f"{len(pending)} node(s) of {dead} not online elsewhere within "
                           f"{timeout_s}s: {sorted(pending)[:10]}") from None
    return time.monotonic() - t0


# -- commands -------------------------------------------------------------------------------


@dataclass
class CommandDriver:
    """Side-effecting commands round-robin through ``replica_urls``, ``rate_per_s`` in all,
    each to the next node of ``node_ids`` in turn; :meth:`run` until ``stop`` is set.

    Invariant: ``accepted`` maps each command id a replica answered 202/200 for to its node;
    a request a replica did not answer (refused, reset, timed out, 5xx) is sent again with
    the same ``Idempotency-Key`` to the next replica, up to ``max_tries`` times in all, so a
    command accepted by a replica that died before answering is found, not written twice
    (``replays`` counts the 200s that said so)."""

    replica_urls: list[str]
    token: str
    node_ids: list[str]
    rate_per_s: float = 20.0
    workers: int = 4
    request_timeout_s: float = 5.0
    max_tries: int = 12
    accepted: dict[str, str] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)  # Idempotency-Key -> command id
    failovers: int = 0
    replays: int = 0
    _counter: itertools.count[int] = field(default_factory=itertools.count)

    async def run(self, stop: asyncio.Event) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with httpx.AsyncClient(timeout=self.request_timeout_s, headers=headers) as http, \
                asyncio.TaskGroup() as tg:
            for _ in range(self.workers):
                tg.create_task(self._worker(http, stop))

    async def _worker(self, http: httpx.AsyncClient, stop: asyncio.Event) -> None:
        period = self.workers / self.rate_per_s
        while not stop.is_set():
            await self.submit(http, next(self._counter))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(period):
                    await stop.wait()

    async def submit(self, http: httpx.AsyncClient, n: int) -> str:
        """Command ``n``: to replica ``n mod R`` first, then the next ones with the same key.
        Returns its command id; raises RuntimeError when no replica took it."""
        node_id = self.node_ids[n % len(self.node_ids)]
        key = f"drv-{n}"
        body = {"kind": COMMAND_KIND, "args": {"n": n}}
        last: str = ""
        for attempt in range(self.max_tries):
            url = self.replica_urls[(n + attempt) % len(self.replica_urls)]
            try:
                resp = await http.post(f"{url}/api/v1/nodes/{node_id}/commands", json=body,
                                       headers={"Idempotency-Key": key})
            except httpx.TransportError as exc:
                last = f"{url}: {exc!r}"
            else:
                if resp.status_code in (200, 202):
                    command_id = str(resp.json()["command_id"])
                    if key in self.keys and self.keys[key] != command_id:
                        raise RuntimeError(f"key {key} named two commands: "
                                           f"{self.keys[key]} and {command_id}")
                    self.keys[key] = command_id
                    self.accepted[command_id] = node_id
                    self.replays += resp.status_code == 200
                    self.failovers += attempt > 0
                    return command_id
                if resp.status_code < 500:
                    raise RuntimeError(f"{url} refused command {n}: {resp.status_code} "
                                       f"{resp.text[:300]}")
                last = f"{url}: {resp.status_code} {resp.text[:200]}"
            if attempt + 1 >= len(self.replica_urls):  # every replica tried once: pause
                await asyncio.sleep(POLL_S)
        raise RuntimeError(f"no replica took command {n} in {self.max_tries} tries: {last}")


async def emit_events(fleet: Fleet, stop: asyncio.Event, *, per_node_per_s: float) -> None:
    """One ``node.event`` per node every ``1 / per_node_per_s`` s until ``stop`` is set;
    each queued in the node's outbox and sent when its session allows."""
    i = 0
    while not stop.is_set():
        await fleet.emit_all(i)
        i += 1
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1 / per_node_per_s):
                await stop.wait()


async def wait_commands_done(http: httpx.AsyncClient, judge: Replica, count: int, *,
                             timeout_s: float) -> dict[str, int]:
    """Until the store holds ``count`` commands, every one in a terminal state, as
    ``judge`` sees it; returns the counts by state."""
    terminal = {"succeeded", "failed", "cancelled", "expired", "rejected"}
    counts: dict[str, int] = {}
    async with asyncio.timeout(timeout_s):
        while True:
            resp = await http.get(f"{judge.url}/api/v1/commands", params={"limit": 1})
            resp.raise_for_status()
            counts = resp.json()["counts"]
            if sum(counts.values()) >= count and set(counts) <= terminal:
                return counts
            await asyncio.sleep(POLL_S)


# -- the bench rows ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterPlan:
    sessions: int  # simulated nodes dialling the load balancer
    events_per_node: int  # the acked-throughput burst, from every node at once
    takeover_timeout_s: float = 120.0


CLUSTER_METRICS = (("sessions", "sessions"), ("msgs_per_s", "msgs/s"),
                   ("seconds_to_all_online_after_kill", "s"), ("lost", "frames"))


async def run_cluster(root: Path, plan: ClusterPlan, replicas: int = 3
                      ) -> list[dict[str, Any]]:
    """The ``cluster`` rows: sessions held across the replicas, acked ``node.event``
    throughput through them, seconds from one replica's kill -9 until every node it held is
    online on another, and frames lost (produced but not held exactly once by the
    controller: must be 0). When PostgreSQL, NATS or HAProxy cannot start, every row has
    ``value: null`` and says why."""
    common = {"replicas": replicas, "nodes": plan.sessions}
    try:
        figures, extra = await _measure(root, plan, replicas)
    except ServerUnavailable as exc:
        return [row("cluster", "tether", metric, None, unit, **common,
                    note=f"unavailable: {exc.reason}") for metric, unit in CLUSTER_METRICS]
    return [row("cluster", "tether", metric, figures[metric], unit, **common, **extra.get(
        metric, {})) for metric, unit in CLUSTER_METRICS]


async def _measure(root: Path, plan: ClusterPlan, replicas: int
                   ) -> tuple[dict[str, float | int], dict[str, dict[str, Any]]]:
    async with Cluster(root / "cluster", replicas, heartbeat_s=5.0, stale_after_s=20.0,
                       offline_after_s=60.0, fsync=True) as cluster, \
            Fleet(cluster.lb_url, cluster.token, prefix="cl", seed=12,
                  connect_timeout_s=60) as fleet, \
            httpx.AsyncClient(timeout=30, headers={
                "Authorization": f"Bearer {cluster.token}"}) as http:
        await fleet.add(plan.sessions)
        await fleet.wait_online(timeout_s=600)
        per_replica = {}
        for r in cluster.replicas:
            resp = await http.get(f"{r.url}/api/v1/diag")
            resp.raise_for_status()
            per_replica[r.replica_id] = resp.json()["sessions"]["open"]
        t0 = time.monotonic()
        for i in range(plan.events_per_node):
            await fleet.emit_all(i)
        await fleet.drain(timeout_s=600)
        elapsed = time.monotonic() - t0
        frames = plan.events_per_node * len(fleet.nodes)
        # kill the replica holding the most nodes, with events in flight
        judge = cluster.replicas[-1]
        held = await held_by(http, judge)
        victim = max(per_replica, key=lambda rid: per_replica[rid])
        if victim == judge.replica_id:
            judge = cluster.replicas[0]
        victims = [n for n, (rid, _sid) in held.items() if rid == victim]
        await fleet.emit_all(plan.events_per_node)
        await cluster.replica(victim).kill9()
        seconds = await wait_taken_over(http, judge, victim, victims,
                                        timeout_s=plan.takeover_timeout_s)
        await fleet.emit_all(plan.events_per_node + 1)
        await fleet.drain(timeout_s=600)
        zero = await fleet.zero_loss(sample=len(fleet.nodes))
        lost = zero["unacked"] + sum(abs(m["produced"] - m["held"])
                                     for m in zero["sample_mismatches"].values())
    figures: dict[str, float | int] = {
        "sessions": sum(per_replica.values()), "msgs_per_s": round(frames / elapsed, 1),
        "seconds_to_all_online_after_kill": round(seconds, 3), "lost": lost}
    extra = {"sessions": {"per_replica": per_replica},
             "msgs_per_s": {"frames": frames, "seconds": round(elapsed, 3)},
             "seconds_to_all_online_after_kill": {"killed": victim,
                                                  "nodes_moved": len(victims)},
             "lost": {"zero_loss_ok": zero["ok"],
                      "duplicate_commands": zero["duplicate_commands"]}}
    return figures, extra
