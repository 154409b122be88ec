"""The loop shared by the controller's leader-only drivers (jobs, rollouts; leader.py
says which replica leads).

Rules: :meth:`LeaderDriver.tick` runs every ``tick_s``, or at once when woken, and only
while ``is_leader()``; a replica that is not the leader runs nothing and forgets what it
published (:meth:`LeaderDriver.forget`), since another replica publishes meanwhile. A
failing tick is logged by :class:`RoundFailures` and the next one retries. The task is
owned: :meth:`LeaderDriver.start` creates it, :meth:`LeaderDriver.stop` cancels and awaits
it.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import Callable

from tether.common.tasks import cancel_and_wait

from .failures import RoundFailures


class LeaderDriver(abc.ABC):
    """Subclasses implement :meth:`tick` (one whole pass) and :meth:`forget`."""

    def __init__(self, *, name: str, is_leader: Callable[[], bool], tick_s: float,
                 logger: logging.Logger) -> None:
        self._name = name
        self._is_leader = is_leader
        self.tick_s = tick_s
        self._wake = asyncio.Event()
        self._failures = RoundFailures(
            logger, failed=f"{name} tick failed; the next one retries",
            store_down=f"{name} waits: the store is unavailable")
        self.ticks_total = 0
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """Run the next tick now rather than at the end of ``tick_s``."""
        self._wake.set()

    def start(self) -> None:
        """Start :meth:`run` in a task this driver owns (:meth:`stop` ends it)."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=self._name.replace(" ", "-"))

    async def stop(self) -> None:
        """Cancel and await the task started by :meth:`start`."""
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    async def run(self) -> None:
        """Until cancelled (module docstring)."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.tick_s):
                    await self._wake.wait()
            self._wake.clear()
            if not self._is_leader():
                self.forget()
                continue
            try:
                self.ticks_total += 1
                await self.tick()
            except Exception as exc:
                self._failures.failed(exc)
            else:
                self._failures.succeeded()

    @abc.abstractmethod
    async def tick(self) -> None:
        """One pass over everything the driver looks after."""

    @abc.abstractmethod
    def forget(self) -> None:
        """Drop what was remembered of past ticks (another replica leads meanwhile)."""
