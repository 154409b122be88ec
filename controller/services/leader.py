"""Leadership: which replica runs the fleet's singletons (the sweeper's fleet-wide duties,
later the rollout driver).

A replica is leader while it holds a lock no other replica can hold at the same time: on
PostgreSQL, a session-level advisory lock on a connection of its own
(``store/pg.py`` :class:`~tether.controller.store.pg.AdvisoryLock`), which the server
releases when that connection ends, so a leader that dies (even by SIGKILL) hands over. A
replica that is not leader tries again every ``retry_s``; a leader checks every ``retry_s``
that its lock's connection still answers, and is no longer leader from the moment it does
not (until it takes the lock again). On SQLite there is no lock (``lock=None``): one process
holds the store, and it is always leader.

Contract for the duties gated by :attr:`Leadership.is_leader`: leadership is how the fleet
avoids doing the same work N times, not what makes it correct. A leader cut off from the
server may still believe it leads for up to ``retry_s`` plus the lock's round-trip timeout
while another replica already does, so every singleton duty must be safe to run twice
(``expire_due`` is a compare-and-set: a command expires once, whoever runs it).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from tether.common.tasks import cancel_and_wait

logger = logging.getLogger(__name__)


class LeaderLock(Protocol):
    """A lock one process at a time holds (``store/pg.py`` ``AdvisoryLock``). Its methods
    never raise for an unreachable server (the lock is then not held) and bound their
    waits."""

    async def try_acquire(self) -> bool: ...

    async def held(self) -> bool: ...

    async def release(self) -> None: ...


class Leadership:
    """Holds ``lock`` when it can (see the module). :meth:`start` starts the task that
    takes and checks it; :meth:`stop` cancels and awaits that task and releases the lock.
    ``lock=None``: always leader (one process per store)."""

    def __init__(self, lock: LeaderLock | None, *, retry_s: float = 2.0,
                 replica_id: str = "") -> None:
        self._lock = lock
        self.retry_s = retry_s
        self.replica_id = replica_id
        self._leader = lock is None
        self._task: asyncio.Task[None] | None = None
        self.acquired_total = 0  # times this replica became leader
        self.lost_total = 0  # times it found its lock lost

    @property
    def is_leader(self) -> bool:
        return self._leader

    async def start(self) -> None:
        """Start taking the lock (its first attempt runs now, in the task)."""
        if self._lock is not None and self._task is None:
            self._task = asyncio.create_task(self._run(), name="leadership")

    async def stop(self) -> None:
        """No longer leader: the task is cancelled and awaited, the lock released (bounded
        by the lock's own timeouts)."""
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        if self._lock is not None:
            self._leader = False
            await self._lock.release()

    async def step(self) -> bool:
        """One attempt: a leader checks its lock, anyone else tries to take it. Returns
        :attr:`is_leader` after it."""
        assert self._lock is not None
        if self._leader:
            if not await self._lock.held():
                self._leader = False
                self.lost_total += 1
                logger.warning("leadership lost (the lock's connection ended); will try to "
                               "take it again", extra={"replica_id": self.replica_id})
        elif await self._lock.try_acquire():
            self._leader = True
            self.acquired_total += 1
            logger.info("leader: this replica runs the fleet's singletons",
                        extra={"replica_id": self.replica_id})
        return self._leader

    async def _run(self) -> None:
        while True:
            try:
                await self.step()
            except Exception:  # a bug, not the server: keep trying, not leader meanwhile
                self._leader = False
                logger.exception("leadership step failed; will retry")
            await asyncio.sleep(self.retry_s)
