"""The fault-injecting soak (issue 16): a fleet under random faults and kills, a history of
what was observed, the checker at the end, and ``soak-report.json``.

    python -m tether.tools.soak run --seconds S [--cluster] [--seed N] [--report FILE]

What runs (all on loopback, under ``--root`` or a temporary directory):

* a controller (SQLite, ``--durability fsync``), or with ``--cluster`` two replicas on a
  PostgreSQL and a nats-server of their own (``tools/servers.py``, as tests/cluster does);
* ``--nodes`` real nodes (``tether node run``, each with its sidecar), each dialling through
  its own :class:`~tether.tools.faultproxy.FaultProxy` (in this process; node *i* to replica
  *i mod R*), and ``--sims`` simulated nodes (:class:`~tether.tools.fleet.Fleet`, in this
  process) behind one more proxy;
* a submitter: ``--rate`` commands per second to random nodes: on a real node an ``exec`` of
  ``sh -c 'echo TAG >> MARKERS'`` (its side effect is one marker line per execution, as the
  kill tests count them), on a simulated node ``sim.apply`` (the sim records the apply);
* a fault injector (about every ``--fault-every`` s: one of latency+jitter, bandwidth cap,
  slicer, cut after N bytes, reset, blackhole, slow close, duplicated segment, on a random
  proxy and direction, for 1-4 s) and a killer (about every ``--kill-every`` s: ``kill -9`` of
  a node runtime, a sidecar, both, the controller; in cluster mode a replica, PostgreSQL or
  NATS; each restarted after 0.5-3 s, a sidecar by its runtime);
* a sampler: RSS and fds of every process, SQLite sizes of every store, and the asyncio task
  count each controller, runtime and sidecar reports (``event_loop.tasks`` of its diag or
  status endpoint), every ``--sample-every`` s (:mod:`tether.tools.soak.resources`).

Every random choice comes from one ``random.Random(seed)``; the seed is in the report. The
same seed replays the same *sequence* of decisions (which fault, where, which kill, which
node gets which command); the timing of the processes is not replayed, so a replay re-tries
the same schedule, not the same interleaving.

The history (``<root>/history/``): this driver writes ``driver.jsonl`` (``cmd.submit``, each
``cmd.state`` it reads back, one ``marker`` per marker line; the simulated nodes' ``evt``
frames: ``append``, ``acked``, and a final ``effect`` audit of the controller's event store;
``drained``); processes started with ``TETHER_HISTORY=<root>/history`` add their own files
through :mod:`tether.tools.soak.recorder` once its hooks are placed. At the end the driver
drains (faults off, every process up, every command terminal, every sim frame acked; bounded
by ``--drain-timeout``), runs the checker on all the files, checks that resources stayed flat,
and writes the report. Exit status: 0 when ``violations`` is 0, else 1 (2: it could not run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tether.protocol.frames import TERMINAL_STATES, Frame

from ..faultproxy import FaultProxy
from ..fleet import Fleet, SimNode
from ..servers import NatsServer, PostgresServer, ServerUnavailable
from .checker import check
from .history import (
    Acked,
    Append,
    Applied,
    CmdState,
    CmdSubmit,
    Drained,
    Duplicate,
    Effect,
    EpochStart,
    HistoryError,
    HistoryWriter,
    Marker,
    Record,
    stream,
)
from .procs import Controller, Node
from .recorder import ENV_VAR as HISTORY_ENV
from .resources import BOUNDS, Sampler, flat_violations

POLL_S = 0.2
SUBMIT_RETRY_S = 60.0
FAULT_KINDS = ("latency", "bandwidth", "slice", "cut", "reset", "blackhole", "slow_close",
               "duplicate")
SINGLE_KILLS = ("runtime", "sidecar", "node", "controller")
CLUSTER_KILLS = ("runtime", "sidecar", "node", "replica", "postgres", "nats")
MAX_VIOLATIONS_IN_REPORT = 500
TASKS_TIMEOUT_S = 2.0  # a task count not answered by then is not sampled this round


@dataclass
class SoakConfig:
    seconds: float
    cluster: bool = False
    seed: int | None = None
    nodes: int = 3
    sims: int = 8
    rate: float = 4.0
    fault_every_s: float = 3.0
    kill_every_s: float = 12.0
    sample_every_s: float = 2.0
    drain_timeout_s: float = 180.0
    root: Path | None = None
    report: Path = Path("soak-report.json")
    keep: bool = False


@dataclass
class _Tally:
    kills: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    kill_log: list[dict[str, Any]] = field(default_factory=list)
    fault_log: list[dict[str, Any]] = field(default_factory=list)
    submit_failures: int = 0
    errors: list[str] = field(default_factory=list)


class Soak:
    """One soak run (module docstring). :meth:`run` returns the report (also written)."""

    def __init__(self, config: SoakConfig) -> None:
        self.cfg = config
        self.seed = config.seed if config.seed is not None else random.randrange(1 << 31)
        # One RNG per loop, each seeded from the seed: the loops interleave by timing, so a
        # shared one would hand a replay's draws to different decisions.
        self.rng = random.Random(f"{self.seed}:setup")
        self.rngs = {name: random.Random(f"{self.seed}:{name}")
                     for name in ("submit", "fault", "kill")}
        self.root = config.root or Path(tempfile.mkdtemp(prefix="tether-soak-"))
        self.history_dir = self.root / "history"
        self.markers_dir = self.root / "markers"
        self.controllers: list[Controller] = []
        self.nodes: list[Node] = []
        self.proxies: dict[str, FaultProxy] = {}
        self.postgres: PostgresServer | None = None
        self.nats: NatsServer | None = None
        self.fleet: Fleet | None = None
        self.writer: HistoryWriter | None = None
        self.http: httpx.AsyncClient | None = None
        self.local_http: httpx.AsyncClient | None = None  # the nodes' loopback /status
        self.tally = _Tally()
        self.sampler = Sampler()
        self.submitted: dict[str, str] = {}     # command id -> node
        self.tags: dict[str, str] = {}          # tag -> command id
        self.last_state: dict[str, str] = {}
        self.counter = itertools.count()
        self.stop = asyncio.Event()
        self.drain: dict[str, Any] = {}

    # -- the run ---------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        for d in (self.history_dir, self.markers_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.writer = HistoryWriter(self.history_dir / "driver.jsonl")
        t_start = time.monotonic()
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(self._teardown)
            await self._start_servers()
            self.http = await stack.enter_async_context(httpx.AsyncClient(
                timeout=10, headers={"Authorization": f"Bearer {self.controllers[0].token}"}))
            self.local_http = await stack.enter_async_context(
                httpx.AsyncClient(timeout=TASKS_TIMEOUT_S))
            await self._start_nodes()
            self.fleet = await stack.enter_async_context(Fleet(
                await self._proxy("sims", self.controllers[0]), self.controllers[0].token,
                prefix="soak-sim", seed=self.seed, connect_timeout_s=5))
            for sim in await self.fleet.add(self.cfg.sims):
                self._instrument(sim)
            await self.fleet.wait_online(timeout_s=120)
            self.sampler = Sampler()
            t_load = time.monotonic()
            async with asyncio.TaskGroup() as tg:
                for loop in (self._submitter, self._poller, self._faulter, self._killer,
                             self._sampler_loop, self._emitter):
                    tg.create_task(loop(), name=f"soak-{loop.__name__}")
                await asyncio.sleep(self.cfg.seconds)
                self.stop.set()
            run_s = time.monotonic() - t_load
            await self._drain()
            self._write(Drained())
            await self._final_audit()
        assert self.writer is not None
        self.writer.close()
        report = self._report(run_s, time.monotonic() - t_start)
        self.cfg.report.write_text(json.dumps(report, indent=1) + "\n")
        if not self.cfg.keep and report["violations"] == 0 and self.cfg.root is None:
            shutil.rmtree(self.root, ignore_errors=True)
        return report

    async def _start_servers(self) -> None:
        env = {HISTORY_ENV: str(self.history_dir)}
        if not self.cfg.cluster:
            ctl = Controller("controller", self.root / "controller",
                             extra=["--durability", "fsync"], env=env)
            await ctl.start()
            self.controllers.append(ctl)
            return
        self.postgres = PostgresServer(fsync=True)
        await self.postgres.start()
        dsn = await self.postgres.create_database("tether")
        self.nats = NatsServer(base_dir=self.root)
        await self.nats.start()
        for i in (1, 2):  # one at a time: the first migrates the fresh database
            # fsync: the soak kills PostgreSQL, and with --durability process
            # (synchronous_commit=off) a server crash may lose acked commits by design
            # (docs/operations.md): the promise under test is the fsync one.
            ctl = Controller(f"r-{i}", self.root / f"replica-{i}", env=env, extra=[
                "--store", dsn, "--bus", self.nats.url, "--replica-id", f"r-{i}",
                "--durability", "fsync"])
            await ctl.start()
            self.controllers.append(ctl)

    async def _proxy(self, name: str, upstream: Controller) -> str:
        proxy = FaultProxy("127.0.0.1", upstream.port, rng=random.Random(self.rng.random()))
        port = await proxy.serve()
        self.proxies[name] = proxy
        return f"http://127.0.0.1:{port}"

    async def _start_nodes(self) -> None:
        resp = await self._api("POST", "/api/v1/join-tokens", json={"uses": self.cfg.nodes})
        token = resp.json()["token"]
        env = {HISTORY_ENV: str(self.history_dir)}
        for i in range(self.cfg.nodes):
            node_id = f"soak-n{i}"
            upstream = self.controllers[i % len(self.controllers)]
            url = await self._proxy(node_id, upstream)
            node = Node(node_id, self.root / node_id, url, env=env)
            await node.enroll(self.controllers[0].url, token)
            await node.start()
            self.nodes.append(node)
        await self._until_online(timeout_s=90)

    async def _until_online(self, timeout_s: float) -> None:
        want = {n.node_id for n in self.nodes}
        async with asyncio.timeout(timeout_s):
            while True:
                with contextlib.suppress(httpx.HTTPError, RuntimeError):
                    resp = await self._api("GET", "/api/v1/nodes", tries=1)
                    online = {n["node_id"] for n in resp.json()["items"]
                              if n["liveness"] == "online"}
                    if want <= online:
                        return
                await asyncio.sleep(POLL_S)

    async def _teardown(self) -> None:
        for proxy in self.proxies.values():
            proxy.heal()
        for node in self.nodes:
            await node.stop_all()
        for proxy in self.proxies.values():
            await proxy.close()
        for ctl in self.controllers:
            await ctl.stop()
        for server in (self.nats, self.postgres):
            if server is not None:
                await server.close()

    # -- talking to the controller(s) -------------------------------------------------------

    async def _api(self, method: str, path: str, *, tries: int = 0, **kw: Any
                   ) -> httpx.Response:
        """A request to the first controller that answers (not 5xx); retried across
        controllers for :data:`SUBMIT_RETRY_S` unless ``tries`` bounds it. Raises
        RuntimeError when none answered, httpx.HTTPStatusError on a 4xx."""
        assert self.http is not None
        deadline = time.monotonic() + SUBMIT_RETRY_S
        last = ""
        for attempt in itertools.count():
            ctl = self.controllers[attempt % len(self.controllers)]
            if ctl.alive:
                try:
                    resp = await self.http.request(method, ctl.url + path, **kw)
                except httpx.TransportError as exc:
                    last = repr(exc)
                else:
                    if resp.status_code < 500:
                        resp.raise_for_status()
                        return resp
                    last = f"{resp.status_code} {resp.text[:200]}"
            if (tries and attempt + 1 >= tries) or time.monotonic() > deadline:
                raise RuntimeError(f"{method} {path}: no controller answered: {last}")
            if attempt % len(self.controllers) == len(self.controllers) - 1:
                await asyncio.sleep(POLL_S)
        raise AssertionError("unreachable")

    # -- the history -----------------------------------------------------------------------

    def _write(self, record: Record) -> None:
        assert self.writer is not None
        self.writer.write(record)

    def _instrument(self, sim: SimNode) -> None:
        """Record a simulated node's ``evt`` frames as it appends them and reads acks, and
        each command it applies as a marker (by wrapping its methods on the instance); its
        epochs as a real node's store records them: a new ``cmd`` epoch seen in a welcome
        (the cursor starts at 0), a new ``evt`` epoch with every unacked frame appended
        again under its new number (its frame id kept)."""
        queue, on_frame, on_welcome = sim._queue, sim.on_frame, sim.on_welcome
        rotate = sim.rotate_evt_epoch
        acked = [(sim.epoch, sim.evt.acked)]

        def frame_id(frame: Frame) -> str:
            if frame.t == "node.event":
                return f"ev-{frame.b['data']['i']}"
            return f"st-{frame.b.get('command_id')}"

        def queued(frame: Frame) -> None:
            queue(frame)
            q = sim.evt.last
            self._write(Append(node=sim.node_id, stream="evt", frame_id=frame_id(frame),
                               epoch=sim.epoch, q=q))

        def note_acks() -> None:
            if sim.epoch != acked[0][0] or sim.evt.acked > acked[0][1]:
                acked[0] = (sim.epoch, sim.evt.acked)
                if sim.evt.acked:
                    self._write(Acked(node=sim.node_id, stream="evt", epoch=sim.epoch,
                                      q=sim.evt.acked))

        def rotated() -> None:
            rotate()
            self._write(EpochStart(node=sim.node_id, stream="evt", epoch=sim.epoch))
            for q, frame in sorted(sim.outbox.items()):
                self._write(Append(node=sim.node_id, stream="evt", frame_id=frame_id(frame),
                                   epoch=sim.epoch, q=q))
            acked[0] = (sim.epoch, 0)

        async def framed(frame: Frame) -> None:
            before, dups = set(sim.applied_commands), sim.duplicate_commands
            cursor = (sim.cmd.epoch, sim.cmd.applied)
            await on_frame(frame)
            if (frame.t == "cmd.deliver" and frame.q is not None
                    and (sim.cmd.epoch, sim.cmd.applied) == (cursor[0], frame.q) != cursor):
                # the controller records the cmd stream's append and ack (recorder hooks):
                # the sim, its receiver, records each frame that moved its cursor
                command_id = str(frame.b.get("command_id"))
                self._write((Applied if command_id in sim.applied_commands - before
                             else Duplicate)(node=sim.node_id, stream="cmd",
                                             epoch=sim.cmd.epoch or 0, q=frame.q,
                                             session=sim.session_id or ""))
            for command_id in sim.applied_commands - before:
                self._write(Marker(command_id=command_id))
            if sim.duplicate_commands > dups:
                self._write(Marker(command_id=str(frame.b.get("command_id"))))
            note_acks()

        async def welcomed(welcome: Any) -> None:
            cmd_epoch = sim.cmd.epoch
            try:
                await on_welcome(welcome)  # raises ReconnectNeeded after an evt rotation
            finally:
                if sim.cmd.epoch != cmd_epoch:  # as node/store.py set_session records it
                    self._write(EpochStart(node=sim.node_id, stream="cmd",
                                           epoch=sim.cmd.epoch or 0))
                note_acks()

        setattr(sim, "_queue", queued)  # noqa: B010 - an instance override, on purpose
        setattr(sim, "on_frame", framed)  # noqa: B010
        setattr(sim, "on_welcome", welcomed)  # noqa: B010
        setattr(sim, "rotate_evt_epoch", rotated)  # noqa: B010

    # -- the loops -------------------------------------------------------------------------

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.stop.wait()

    def _targets(self) -> list[str]:
        sims = [s.node_id for s in self.fleet.nodes] if self.fleet else []
        return [n.node_id for n in self.nodes] + sims

    async def _submitter(self) -> None:
        while not self.stop.is_set():
            await self._submit_one()
            await self._pause(self.rngs["submit"].expovariate(self.cfg.rate))

    async def _submit_one(self) -> None:
        n = next(self.counter)
        tag = f"s{n}"
        node_id = self.rngs["submit"].choice(self._targets())
        if node_id.startswith("soak-sim"):
            body: dict[str, Any] = {"kind": "sim.apply", "args": {"n": n}}
        else:
            marker = self.markers_dir / f"{node_id}.txt"
            body = {"kind": "exec", "args": {"argv": ["sh", "-c", f"echo {tag} >> {marker}"]}}
        try:
            resp = await self._api("POST", f"/api/v1/nodes/{node_id}/commands", json=body,
                                   headers={"Idempotency-Key": f"soak-{self.seed}-{n}"})
        except (RuntimeError, httpx.HTTPError) as exc:
            self.tally.submit_failures += 1
            self.tally.errors.append(f"submit {tag}: {exc}")
            return
        command_id = str(resp.json()["command_id"])
        self._note_submitted(command_id, node_id, tag)

    def _note_submitted(self, command_id: str, node_id: str, tag: str) -> None:
        if command_id not in self.submitted:
            self.submitted[command_id] = node_id
            self.tags[tag] = command_id
            self._write(CmdSubmit(command_id=command_id, node=node_id))

    async def _poller(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(RuntimeError, httpx.HTTPError):
                await self._poll_states(limit=500)
            await self._pause(1.0)

    async def _poll_states(self, limit: int) -> list[dict[str, Any]]:
        resp = await self._api("GET", "/api/v1/commands", params={"limit": limit}, tries=4)
        items: list[dict[str, Any]] = resp.json()["items"]
        for item in reversed(items):  # oldest first
            command_id = item["command_id"]
            if command_id in self.submitted and self.last_state.get(command_id) != item["state"]:
                self.last_state[command_id] = item["state"]
                self._write(CmdState(command_id=command_id, state=item["state"],
                                     error=item.get("error") or None))
        return items

    async def _emitter(self) -> None:
        for i in itertools.count():
            if self.stop.is_set():
                return
            assert self.fleet is not None
            await self.fleet.emit_all(i)
            await self._pause(1.0)

    async def _faulter(self) -> None:
        names = sorted(self.proxies)
        rng = self.rngs["fault"]
        kinds = _cycles(rng, FAULT_KINDS)
        while not self.stop.is_set():
            await self._pause(self.cfg.fault_every_s * rng.uniform(0.5, 1.5))
            if self.stop.is_set():
                return
            name = rng.choice(names)
            kind = next(kinds)
            direction = rng.choice(("up", "down", "both"))
            duration = round(rng.uniform(1.0, 4.0), 2)
            params = self._fault_params(kind)
            proxy = self.proxies[name]
            if kind == "reset":
                proxy.reset(direction)
            else:
                proxy.set(direction, **params)
            self.tally.faults[kind] += 1
            self.tally.fault_log.append({"t": round(self.sampler.now(), 2), "proxy": name,
                                         "kind": kind, "direction": direction,
                                         "params": params, "duration_s": duration})
            if kind != "reset":
                await self._pause(duration)
                proxy.clear(direction)

    def _fault_params(self, kind: str) -> dict[str, Any]:
        rng = self.rngs["fault"]
        table: dict[str, Callable[[], dict[str, Any]]] = {
            "latency": lambda: {"latency_s": round(rng.uniform(0.02, 0.3), 3),
                                "jitter_s": round(rng.uniform(0, 0.1), 3)},
            "bandwidth": lambda: {"bandwidth_bps": rng.randint(2_000, 50_000)},
            "slice": lambda: {"slice": True},
            "cut": lambda: {"cut_after": rng.randint(1, 4_000)},
            "reset": lambda: {},
            "blackhole": lambda: {"blackhole": True},
            "slow_close": lambda: {"slow_close_s": round(rng.uniform(0.5, 3.0), 2)},
            "duplicate": lambda: {"duplicate": True},
        }
        return table[kind]()

    async def _killer(self) -> None:
        rng = self.rngs["kill"]
        kinds = _cycles(rng, CLUSTER_KILLS if self.cfg.cluster else SINGLE_KILLS)
        while not self.stop.is_set():
            await self._pause(self.cfg.kill_every_s * rng.uniform(0.5, 1.5))
            if self.stop.is_set():
                return
            kind = next(kinds)
            down_s = round(rng.uniform(0.5, 3.0), 2)
            try:
                target = await self._kill(kind)
                await asyncio.sleep(down_s)
                await self._restart(kind, target)
            except (RuntimeError, OSError, TimeoutError, ServerUnavailable) as exc:
                self.tally.errors.append(f"kill {kind}: {exc!r}")
                continue
            self.tally.kills[kind] += 1
            self.tally.kill_log.append({"t": round(self.sampler.now(), 2), "kind": kind,
                                        "target": target, "down_s": down_s})

    async def _kill(self, kind: str) -> str:
        if kind in ("runtime", "sidecar", "node"):
            node = self.rngs["kill"].choice(self.nodes)
            if kind in ("sidecar", "node") and not await node.kill9_sidecar() \
                    and kind == "sidecar":
                raise RuntimeError(f"{node.node_id} had no sidecar running")
            if kind in ("runtime", "node"):
                await node.kill9()
            return node.node_id
        if kind in ("controller", "replica"):
            ctl = self.rngs["kill"].choice(self.controllers)
            await ctl.kill9()
            return ctl.name
        server = self.postgres if kind == "postgres" else self.nats
        assert server is not None
        server._proc.signal_tree(signal.SIGKILL)
        await server._proc.end(signal.SIGKILL, 10)
        return kind

    async def _restart(self, kind: str, target: str) -> None:
        if kind in ("runtime", "node"):
            node = next(n for n in self.nodes if n.node_id == target)
            await node.start()
        elif kind in ("controller", "replica"):
            ctl = next(c for c in self.controllers if c.name == target)
            await ctl.start()
        elif kind in ("postgres", "nats"):
            server = self.postgres if kind == "postgres" else self.nats
            assert server is not None
            await server.start()

    async def _sampler_loop(self) -> None:
        while not self.stop.is_set():
            self._sample()
            await self._sample_tasks()
            await self._pause(self.cfg.sample_every_s)

    async def _sample_tasks(self) -> None:
        """Every process's asyncio task count, asked of all at once (each bounded by
        :data:`TASKS_TIMEOUT_S`): the controllers' ``/api/v1/diag``, each node's runtime and
        sidecar ``/status`` (their loopback URLs are in the node's state dir)."""
        assert self.http is not None and self.local_http is not None
        probes = [self._tasks_of(ctl.name, self.http, ctl.url + "/api/v1/diag",
                                 lambda ctl=ctl: ctl.pid)
                  for ctl in self.controllers if ctl.alive]
        for node in self.nodes:
            for role, pid in (("runtime", lambda n=node: n.pid),
                              ("sidecar", lambda n=node: n.sidecar_pid())):
                url = node.status_url(role)
                if url is not None:
                    probes.append(self._tasks_of(f"{node.node_id}/{role}", self.local_http,
                                                 url + "/status", pid))
        await asyncio.gather(*probes)

    async def _tasks_of(self, name: str, client: httpx.AsyncClient, url: str,
                        pid_now: Callable[[], int | None]) -> None:
        """One process's ``event_loop.tasks``, filed under the incarnation that answered:
        the pid its answer names (runtime, sidecar) and the one running before and after
        the request (a controller restarted meanwhile is not sampled: its answer could be
        either's). Nothing is filed when it does not answer in time (killed, restarting)."""
        pid = pid_now()
        if pid is None:
            return
        try:
            async with asyncio.timeout(TASKS_TIMEOUT_S):
                resp = await client.get(url)
            body = resp.json()
        except (httpx.HTTPError, TimeoutError, ValueError):
            return
        loop = body.get("event_loop") if resp.status_code == 200 and isinstance(body, dict) \
            else None
        tasks = loop.get("tasks") if isinstance(loop, dict) else None
        if (isinstance(tasks, int) and not isinstance(tasks, bool)
                and body.get("pid", pid) == pid == pid_now()):
            self.sampler.tasks(name, pid, tasks)

    def _sample(self) -> None:
        s = self.sampler
        for ctl in self.controllers:
            s.process(ctl.name, ctl.pid)
            if not self.cfg.cluster:
                s.store(f"{ctl.name}/sqlite", ctl.data_dir)
        for node in self.nodes:
            s.process(f"{node.node_id}/runtime", node.pid)
            s.process(f"{node.node_id}/sidecar", node.sidecar_pid())
            s.store(f"{node.node_id}/sqlite", node.state_dir)
        for name, server in (("postgres", self.postgres), ("nats", self.nats)):
            if server is not None and server._proc.popen is not None:
                s.process(name, server._proc.popen.pid)

    # -- the end ---------------------------------------------------------------------------

    async def _drain(self) -> None:
        """Faults off, every process up, then (bounded) every node online, every command
        terminal and every sim frame acked. What did not finish is in ``self.drain``."""
        t0 = time.monotonic()
        for proxy in self.proxies.values():
            proxy.heal()
        for ctl in self.controllers:
            if not ctl.alive:
                await ctl.start()
        for node in self.nodes:
            if not node.alive:
                await node.start()
        budget = self.cfg.drain_timeout_s
        steps: dict[str, Any] = {}
        try:
            await self._until_online(timeout_s=budget)
            steps["nodes_online"] = True
        except TimeoutError:
            steps["nodes_online"] = False
        pending: list[str] = []
        try:
            async with asyncio.timeout(max(5.0, budget - (time.monotonic() - t0))):
                while True:
                    with contextlib.suppress(RuntimeError, httpx.HTTPError):
                        await self._poll_states(limit=10_000)
                    pending = [c for c in self.submitted
                               if self.last_state.get(c) not in TERMINAL_STATES]
                    if not pending:
                        break
                    await asyncio.sleep(1.0)
        except TimeoutError:
            pass
        steps["commands_pending"] = len(pending)
        assert self.fleet is not None
        try:
            await self.fleet.drain(timeout_s=max(5.0, budget - (time.monotonic() - t0)))
            steps["sim_frames_unacked"] = 0
        except TimeoutError:
            steps["sim_frames_unacked"] = sum(s.evt.last - s.evt.acked for s in self.fleet.nodes)
        steps["seconds"] = round(time.monotonic() - t0, 1)
        self.drain = steps

    async def _final_audit(self) -> None:
        """Every command the store holds (the final state of each; a submit whose answer was
        lost is found here by its tag), every marker line, and the sims' event effects."""
        items = await self._poll_states(limit=10_000)
        targets = set(self._targets())
        for item in reversed(items):
            command_id = item["command_id"]
            if command_id in self.submitted or item.get("node_id") not in targets:
                continue
            args = item.get("args") or {}
            tag = (f"s{args['n']}" if "n" in args
                   else str(args.get("argv", ["", "", "echo ?"])[2]).split()[1])
            self._note_submitted(command_id, item["node_id"], tag)
            self.last_state[command_id] = item["state"]
            self._write(CmdState(command_id=command_id, state=item["state"],
                                 error=item.get("error") or None))
        for node in self.nodes:
            path = self.markers_dir / f"{node.node_id}.txt"
            lines = path.read_text().split() if path.exists() else []
            for tag in lines:
                command_id = self.tags.get(tag)
                if command_id is None:
                    self.tally.errors.append(f"marker {tag} names no known command")
                    continue
                self._write(Marker(command_id=command_id))
        assert self.fleet is not None
        states = {c: self.last_state.get(c) for c in self.submitted}
        for sim in self.fleet.nodes:
            resp = await self._api("GET", f"/api/v1/nodes/{sim.node_id}/events",
                                   params={"limit": 10_000})
            held = Counter(e["data"]["i"] for e in resp.json()["items"] if e["kind"] == "sim")
            for i in sorted(set(range(sim.produced)) | set(held)):
                self._write(Effect(node=sim.node_id, stream="evt", frame_id=f"ev-{i}",
                                   count=held.get(i, 0)))
            for command_id in sim.applied_commands:
                self._write(Effect(node=sim.node_id, stream="evt", frame_id=f"st-{command_id}",
                                   count=int(states.get(command_id) == "succeeded")))

    def _history_files(self) -> list[Path]:
        return sorted(self.history_dir.glob("*.jsonl"))

    def _report(self, run_s: float, total_s: float) -> dict[str, Any]:
        files = self._history_files()
        frames: set[tuple[str, str, str]] = set()
        records = 0

        def counted() -> Iterator[Record]:
            nonlocal records
            for record in stream(*files):
                records += 1
                if isinstance(record, Append):
                    frames.add((record.node, record.stream, record.frame_id))
                yield record

        try:
            found = [asdict(v) for v in check(counted())]
        except HistoryError as exc:
            found = [{"kind": "history_unreadable", "detail": str(exc)}]
        resource_violations, slopes = flat_violations(self.sampler.series.values(), run_s)
        drain_violations = []
        if self.drain.get("nodes_online") is False or self.drain.get("sim_frames_unacked"):
            drain_violations.append({"kind": "drain_incomplete", "detail": json.dumps(
                self.drain)})
        if not self.tally.faults or not self.tally.kills:
            drain_violations.append({"kind": "injected_nothing", "detail": (
                f"{sum(self.tally.faults.values())} faults and "
                f"{sum(self.tally.kills.values())} kills: a soak that breaks nothing proves "
                "nothing (a longer --seconds, or a shorter --fault-every/--kill-every)")})
        violations = found + resource_violations + drain_violations
        return {
            "seed": self.seed, "mode": "cluster" if self.cfg.cluster else "single",
            "seconds": round(run_s, 1), "total_seconds": round(total_s, 1),
            "frames": len(frames), "commands": len(self.submitted),
            "kills": sum(self.tally.kills.values()), "faults": sum(self.tally.faults.values()),
            "violations": len(violations),
            "kills_by_kind": dict(sorted(self.tally.kills.items())),
            "faults_by_kind": dict(sorted(self.tally.faults.items())),
            "violations_by_kind": dict(Counter(str(v["kind"]) for v in violations)),
            "violation_list": violations[:MAX_VIOLATIONS_IN_REPORT],
            "command_states": dict(Counter(self.last_state.get(c, "unseen")
                                           for c in self.submitted)),
            "nodes": {"real": len(self.nodes), "simulated": self.cfg.sims},
            "history": {"records": records, "files": [str(f) for f in files]},
            "drain": self.drain,
            "submit_failures": self.tally.submit_failures,
            "errors": self.tally.errors[:100],
            "kill_log": self.tally.kill_log, "fault_log": self.tally.fault_log,
            "resources": {
                "bounds_per_min": BOUNDS, "slopes": slopes,
                # per incarnation: what its curve (in ``curves``, metric ``tasks``) spans
                "tasks": [{"name": s.name, "pid": s.pid, "samples": len(pts),
                           "first": pts[0][1], "last": pts[-1][1],
                           "max": max(v for _, v in pts)}
                          for s in self.sampler.series.values()
                          if (pts := s.points.get("tasks"))],
                "curves": [s.as_dict() for s in self.sampler.series.values()],
            },
            "root": str(self.root),
            "replay": f"python -m tether.tools.soak run --seconds {self.cfg.seconds:g} "
                      f"--seed {self.seed}" + (" --cluster" if self.cfg.cluster else ""),
        }


def _cycles(rng: random.Random, kinds: tuple[str, ...]) -> Iterator[str]:
    """Every kind once per cycle, each cycle in a random order: a short soak still tries
    every kind, and no kind waits long for its turn."""
    while True:
        order = list(kinds)
        rng.shuffle(order)
        yield from order


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=1800.0,
                        help="how long faults and kills go on (the drain comes after)")
    parser.add_argument("--cluster", action="store_true",
                        help="two replicas on PostgreSQL + NATS instead of one SQLite controller")
    parser.add_argument("--seed", type=int, help="the RNG seed (default: a random one, "
                                                 "written to the report)")
    parser.add_argument("--nodes", type=int, default=3, help="real nodes")
    parser.add_argument("--sims", type=int, default=8, help="simulated nodes")
    parser.add_argument("--rate", type=float, default=4.0, help="commands per second")
    parser.add_argument("--fault-every", type=float, default=3.0, help="seconds, about")
    parser.add_argument("--kill-every", type=float, default=12.0, help="seconds, about")
    parser.add_argument("--sample-every", type=float, default=2.0, help="seconds")
    parser.add_argument("--drain-timeout", type=float, default=180.0, help="seconds")
    parser.add_argument("--root", type=Path, help="work directory (default: a temporary one, "
                                                  "removed after a clean run)")
    parser.add_argument("--report", type=Path, default=Path("soak-report.json"))
    parser.add_argument("--keep", action="store_true", help="keep the work directory")


def run_from_args(args: argparse.Namespace) -> int:
    if args.seconds <= 0 or args.nodes < 1 or args.sims < 1 or args.rate <= 0:
        print("error: --seconds, --rate must be > 0 and --nodes, --sims >= 1", file=sys.stderr)
        return 2
    cfg = SoakConfig(seconds=args.seconds, cluster=args.cluster, seed=args.seed,
                     nodes=args.nodes, sims=args.sims, rate=args.rate,
                     fault_every_s=args.fault_every, kill_every_s=args.kill_every,
                     sample_every_s=args.sample_every, drain_timeout_s=args.drain_timeout,
                     root=args.root, report=args.report, keep=args.keep)
    try:
        report = asyncio.run(Soak(cfg).run())
    except ServerUnavailable as exc:
        print(f"error: the soak cannot run here: {exc.reason}", file=sys.stderr)
        return 2
    summary = {k: report[k] for k in ("seed", "mode", "seconds", "frames", "commands", "kills",
                                      "faults", "violations")}
    print(json.dumps(summary), file=sys.stderr)
    for violation in report["violation_list"][:20]:
        print(json.dumps(violation), file=sys.stderr)
    return 1 if report["violations"] else 0
