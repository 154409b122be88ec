"""The ownership-claim failpoints crashed through on a cluster (issue 16, docs/reliability.md):
two replicas on one PostgreSQL and one nats-server, a real node owned by replica A, the node
moved to replica B while A still holds it, and B dying in the middle of its claim.

Each case: the recorder armed in every process; the node dials a fault proxy in front of A
(``node run --controller-url``); commands run on A. Then A is frozen (SIGSTOP: its session
stays open and owned, so B's hello is a takeover of a live owner, not a first claim), a
command is queued through B (the crashing claim's dispatch sequences it), the proxy is
pointed at B and its connections reset, and the node's redial reaches B, armed to
crash at the point: ``gateway.mid_claim`` (the claim's compare-and-set written, not
committed) or ``gateway.after_claim`` (committed, A not yet told). B is restarted unarmed on
its port, the node's next hello claims it on B, A is woken (a stalled old owner after a
takeover), two more commands go through A's API, the drain, and the checker over every file:
no violation, a ``claimed`` by A before B's crash and a later one after it, ``fenced``
present, and A's session closed 4409 by a newer claim.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest

from tether.common import failpoints
from tether.common.failpoints import CRASH_EXIT_CODE
from tether.tools.faultproxy import FaultProxy
from tether.tools.soak.history import Claimed, Fenced

from ..helpers import FAST, Api, ControllerProc, wait_until
from .crashkit import NODE_ID, Rig, summary

pytestmark = pytest.mark.timeout(180)
T = TypeVar("T")

POINTS = ["gateway.mid_claim", "gateway.after_claim"]


class ProxyThread:
    """A :class:`FaultProxy` on an event loop in a thread of its own: this test waits by
    blocking, and the proxy must go on forwarding meanwhile. Every call to the proxy is
    made on that loop (FaultProxy's methods are for its loop's thread)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="faultproxy",
                                       daemon=True)
        self.thread.start()
        self.proxy = self._call(self._make())
        self.port = self._call(self.proxy.serve())

    @staticmethod
    async def _make() -> FaultProxy:
        return FaultProxy("127.0.0.1", 9)  # pointed at a replica before any node dials

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=15)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def point_at(self, port: int) -> int:
        """New connections go to ``port``; every live one is reset (RST both ways), so the
        node redials at once. Returns how many were reset."""
        async def go() -> int:
            self.proxy.upstream = ("127.0.0.1", port)
            return self.proxy.reset("both")
        return self._call(go())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the proxy's loop (the test's own PostgreSQL queries too)."""
        return self._call(coro)

    def close(self) -> None:
        try:
            self._call(self.proxy.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=15)
            self.loop.close()


async def _locked_before(dsn: str, frozen_at: datetime) -> bool:
    """Some other backend holds a lock on ``nodes`` in a transaction begun before
    ``frozen_at`` (wall clock: PostgreSQL runs on this host)."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return bool(await conn.fetchval(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() "
            "AND l.relation = 'nodes'::regclass AND l.granted AND a.xact_start <= $1",
            frozen_at, timeout=10))
    finally:
        await conn.close()


def _stopped(pid: int) -> bool:
    return "State:\tT" in Path(f"/proc/{pid}/status").read_text()


def _freeze_outside_a_transaction(proxy: ProxyThread, pid: int, dsn: str) -> None:
    """SIGSTOP ``pid`` (replica A) while it holds no lock on ``nodes``. Frozen inside such a
    transaction (a touch batch: a few ms every 1.5 s) it would keep the node's row locked,
    and B's claim would wait for that lock forever instead of reaching its failpoint. A lock
    held by a transaction begun before the freeze may also be B's, about to end: either way
    A is woken and frozen again."""
    for _ in range(20):
        os.kill(pid, signal.SIGSTOP)
        wait_until(lambda: _stopped(pid), timeout_s=10, what="replica A stopped")
        if not proxy.run(_locked_before(dsn, datetime.now(UTC))):
            return
        os.kill(pid, signal.SIGCONT)
    raise AssertionError("replica A was inside a transaction on nodes at every freeze")


def _replica_flags(replica_id: str, pg_dsn: str, nats_url: str) -> list[str]:
    # --durability process: PostgreSQL itself is never killed here, only a replica
    return ["--durability", "process", "--store", pg_dsn, "--bus", nats_url,
            "--replica-id", replica_id]


@dataclass
class ClusterRig(Rig):
    """The crash rig's controller is replica A; ``b`` is replica B on the same store and
    bus. ``stop()`` ends B too, so every history file is complete when ``finish()`` reads
    them."""

    b_extra: list[str] = field(default_factory=list)
    b: ControllerProc = field(init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.b = ControllerProc(self.root / "r-b", extra=[*FAST, *self.b_extra])

    def start_b(self, env: dict[str, str]) -> None:
        self.b.env = self._env(env)
        self.b.start()  # on its first port again after a crash: the proxy points there

    def stop(self) -> None:
        super().stop()
        if self.b.alive():
            self.b.terminate()


def _open_on_b(rig: ClusterRig, b_api: Api) -> bool:
    """The node online on B, and B's (restarted) session the only open one."""
    rows = b_api.get(f"/api/v1/nodes/{NODE_ID}/sessions").json()["items"]
    open_rows = [r for r in rows if r["closed_at"] is None]
    return ([r["replica_id"] for r in open_rows] == ["r-b"]
            and b_api.liveness(NODE_ID) == "online")


@pytest.mark.parametrize("point", POINTS, ids=POINTS)
def test_a_replica_crashed_mid_takeover_loses_nothing_and_ownership_moves_on(
        tmp_path: Path, pg_dsn: str, nats_url: str, point: str) -> None:
    proxy = ProxyThread()
    rig = ClusterRig(tmp_path, controller_extra=_replica_flags("r-a", pg_dsn, nats_url),
                     node_extra=["--controller-url", proxy.url],
                     b_extra=_replica_flags("r-b", pg_dsn, nats_url))
    a_frozen = False
    try:
        rig.start_controller()  # A: the recorder armed, no failpoint
        proxy.point_at(rig.controller.port)
        rig.start_b({failpoints.ENV_VAR: f"{point}=crash@1"})  # B's first claim crashes
        rig.enroll()
        rig.submit()  # queued before the node's first hello
        rig.start_node()
        rig.wait_online()
        rig.submit()
        wait_until(rig.all_terminal, timeout_s=30, what="the first commands terminal on A")

        # A frozen with the node's session open: B's hello takes over a live owner
        a_frozen = True
        _freeze_outside_a_transaction(proxy, rig.controller.pid, pg_dsn)
        a_api, rig.api = rig.api, rig.b.api()
        rig.submit()  # queued through B: the hello that crashes sequences it (after_claim)
        rig.api = a_api
        proxy.point_at(rig.b.port)
        wait_until(lambda: not rig.b.alive(), timeout_s=30, what=f"r-b to crash at {point}")
        crash_ns = time.monotonic_ns()
        assert rig.b.proc is not None
        assert rig.b.proc.wait(10) == CRASH_EXIT_CODE, rig.b.log()[-3000:]
        assert f"failpoint {point}: crash" in rig.b.log(), rig.b.log()[-3000:]

        rig.start_b({})  # unarmed
        b_api = rig.b.api()
        wait_until(lambda: _open_on_b(rig, b_api), timeout_s=30,
                   what=f"{NODE_ID} claimed by the restarted r-b")
        os.kill(rig.controller.pid, signal.SIGCONT)  # the old owner wakes after the takeover
        a_frozen = False
        for _ in range(2):
            rig.submit()  # through A's API: the node is B's now
        wait_until(rig.all_terminal, timeout_s=30, what="the commands after the takeover")
        sessions = b_api.get(f"/api/v1/nodes/{NODE_ID}/sessions").json()["items"]
        violations, records, states = rig.finish()
    finally:
        if a_frozen:
            os.kill(rig.controller.pid, signal.SIGCONT)
        rig.stop()
        proxy.close()
    assert violations == [], summary(rig, violations, rig.b.log()[-3000:])
    assert set(states.values()) == {"succeeded"}, states
    assert sorted(rig.markers.read_text().split()) == sorted(rig.commands.values())

    # the takeover, from the history: A claimed, B crashed in its claim, a later claim
    claims = [r for r in records if isinstance(r, Claimed) and r.node == NODE_ID]
    by_a = [c for c in claims if c.replica == "r-a"]
    assert by_a and (by_a[0].t_ns or 0) < crash_ns, claims
    after = [c for c in claims if (c.t_ns or 0) > crash_ns]
    assert [c.replica for c in after][:1] == ["r-b"], claims
    crashed = [c for c in claims if c.replica == "r-b" and (c.t_ns or 0) < crash_ns]
    # mid_claim: rolled back, never recorded; after_claim: committed and recorded, then died
    assert len(crashed) == (1 if point == "gateway.after_claim" else 0), claims
    assert any(isinstance(r, Fenced) and r.node == NODE_ID for r in records)
    # ... and from the store: A's session was still open when a claim on B superseded it
    rows = {r["session_id"]: r for r in sessions}
    a_session = rows[by_a[-1].session]
    assert a_session["replica_id"] == "r-a" and a_session["close_code"] == 4409, sessions
