"""The sweeper: once per ``sweep_interval_s``, the housekeeping no frame triggers.

Each tick: queued commands past their deadline expire (pushed); live sessions silent past
``stale_after_s`` are closed (4408, by their own read loop); nodes closed ``offline_after_s``
ago turn offline (pushed); every ``touch_interval_s`` the last-seen times of sessions that
heard something are written; every ``downlink_check_s`` the sessions with downlink frames
they were not woken for are woken (a lost nudge: a cluster's nudge travels over NATS and can
be lost while everything stays connected); hourly, old idempotency keys and audit records
past their retention (``audit_max_age_s``, ``max_audit_records``) are pruned. A tick
that fails is logged and the next one tries again. It also measures the event loop's lag:
how late its sleep ended.

The downlink check costs one store query per check for all sessions (``downlink_pending``,
whose cost follows the outbox of unacked frames: nothing when idle) and no store call, task
or timer per session: a session whose frames are pending is woken, and its own downlink pass
reads them. A nudge lost is thus healed within ``downlink_check_s`` plus a sweep.

In a cluster every replica runs a sweeper, split in two. The fleet-wide duties (command
expiry, idempotency-key and audit pruning) run only while ``is_leader()`` (services/leader.py: one
replica at a time, handed over when it dies; they are idempotent, so a handover that
overlaps does no harm). The duties about this replica's own sessions (idle expiry, touch,
its nodes turning offline, the downlink check of its sessions) run on every replica.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from ..store.records import Touch
from .bus import EventBus
from .failures import RoundFailures
from .topics import command_expired

logger = logging.getLogger(__name__)


class SweptSession(Protocol):
    """A session of this process, as the sweeper sees it (gateway ``EdgeConnection``):
    read, never changed, but for :meth:`expire_if_idle`."""

    @property
    def node_id(self) -> str: ...

    @property
    def session_id(self) -> str | None: ...

    @property
    def last_frame_mono(self) -> float: ...

    @property
    def runtime(self) -> dict[str, Any]: ...

    def expire_if_idle(self, now_mono: float) -> bool: ...

    def check_downlink(self, epoch: int, last_q: int) -> bool: ...


# node_id -> (last_frame_mono, runtime state) as last written by a touch
Touched = dict[str, tuple[float, str | None]]


class SweepStore(Protocol):
    async def expire_due(self) -> list[str]: ...

    async def prune_idempotency_keys(self, *, older_than_s: float = ...) -> int: ...

    async def prune_audit(self, *, older_than_s: float | None,
                          keep_max: int | None) -> int: ...

    async def touch_nodes(self, seen: dict[str, Touch]) -> None: ...

    async def downlink_pending(self) -> dict[str, tuple[int, int]]: ...


def changed_since_touch(sessions: Iterable[SweptSession], touched: Touched,
                        now_mono: float, *, now: float | None = None
                        ) -> tuple[dict[str, Touch], Touched]:
    """Last-seen time (wall clock) and runtime state of each live session that heard a
    frame or changed state since ``touched`` (what the last touch wrote), and what this
    touch writes, for the next: an idle fleet costs no writes, and a busy one at most one
    row per node per touch interval. Nodes without a live session are forgotten."""
    now = time.time() if now is None else now
    seen: dict[str, Touch] = {}
    marks: Touched = {}
    for c in sessions:
        if c.session_id is None:
            continue
        mark = marks[c.node_id] = (c.last_frame_mono, c.runtime.get("state"))
        if touched.get(c.node_id) != mark:
            seen[c.node_id] = Touch(now - (now_mono - mark[0]), mark[1], c.session_id)
    return seen, marks


class Sweeper:
    """``sessions`` is the live collection of this process's edge sessions (read each
    tick); ``expire_closed`` turns nodes closed long enough offline (services/liveness.py
    ``NodeLiveness.expire``)."""

    def __init__(self, store: SweepStore, bus: EventBus, sessions: Iterable[SweptSession],
                 *, expire_closed: Callable[[], object], sweep_interval_s: float,
                 touch_interval_s: float, downlink_check_s: float = 5.0,
                 is_leader: Callable[[], bool] = lambda: True,
                 audit_max_age_s: float | None = None, max_audit_records: int | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._bus = bus
        self._sessions = sessions
        self._expire_closed = expire_closed
        self._is_leader = is_leader
        self.audit_max_age_s = audit_max_age_s  # None: audit records are kept whatever
        self.max_audit_records = max_audit_records  # their age / however many there are
        self.sweep_interval_s = sweep_interval_s
        self.touch_interval_s = touch_interval_s
        self.downlink_check_s = downlink_check_s
        self.downlink_wakes_total = 0  # sessions woken by the check: nudges lost (or raced)
        self._monotonic = monotonic
        self.loop_lag_ms = 0.0
        self.loop_lag_max_ms = 0.0
        self._tick = 0
        self._touched: Touched = {}
        self._failures = RoundFailures(
            logger, failed="sweep failed; will retry",
            store_down="sweep skipped: the store is unavailable; will retry")

    async def run(self) -> None:
        """Tick until cancelled (its owner, app.py's lifespan, cancels and awaits it)."""
        while True:
            slept_from = self._monotonic()
            await asyncio.sleep(self.sweep_interval_s)
            # How late the loop woke us: the event loop's lag, as the sweeper sees it.
            lag_ms = max(0.0, (self._monotonic() - slept_from - self.sweep_interval_s) * 1000)
            self.loop_lag_ms = round(lag_ms, 3)
            self.loop_lag_max_ms = max(self.loop_lag_max_ms, self.loop_lag_ms)
            try:
                await self.tick()
            except Exception as exc:
                self._failures.failed(exc)
            else:
                self._failures.succeeded()

    async def tick(self) -> None:
        """One sweep (the module docstring)."""
        self._tick += 1
        touch_every = max(1, round(self.touch_interval_s / self.sweep_interval_s))
        hourly = max(1, round(3600 / self.sweep_interval_s))
        downlink_every = max(1, round(self.downlink_check_s / self.sweep_interval_s))
        leader = self._is_leader()  # once per tick: its duties run whole or not at all
        if leader:
            for command_id in await self._store.expire_due():
                command_expired(self._bus, command_id)
        now_mono = self._monotonic()
        for conn in self._sessions:
            conn.expire_if_idle(now_mono)
        self._expire_closed()
        if leader and self._tick % hourly == 0:
            await self._store.prune_idempotency_keys()
            await self.prune_audit()
        if self._tick % touch_every == 0:
            seen, marks = changed_since_touch(self._sessions, self._touched, now_mono)
            await self._store.touch_nodes(seen)
            self._touched = marks  # only once written: a failed touch is tried again
        if self._tick % downlink_every == 0:
            await self.check_downlinks()

    async def prune_audit(self) -> int:
        """Apply the audit log's retention (nothing when neither bound is set); returns
        how many records went."""
        if self.audit_max_age_s is None and self.max_audit_records is None:
            return 0
        pruned = await self._store.prune_audit(older_than_s=self.audit_max_age_s,
                                               keep_max=self.max_audit_records)
        if pruned:
            logger.info("audit records past their retention pruned", extra={"count": pruned})
        return pruned

    async def check_downlinks(self) -> int:
        """Wake each session the store holds downlink frames for that it has not sent (one
        store query for all); returns how many were woken."""
        pending = await self._store.downlink_pending()
        if not pending:
            return 0
        woken = 0
        for conn in self._sessions:
            mark = pending.get(conn.node_id)
            if mark is not None and conn.check_downlink(*mark):
                woken += 1
        if woken:
            self.downlink_wakes_total += woken
            logger.info("downlink woken by the periodic check (a nudge was lost or raced)",
                        extra={"count": woken})
        return woken
