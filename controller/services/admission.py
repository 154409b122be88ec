"""Admission control for edge handshakes: a bounded number run, a bounded number wait.

A reconnect storm (every node of a fleet dialling at once after a partition or a controller
restart) must neither melt the controller nor turn into a retry storm. Refusing with 4429 is
barely cheaper than serving (the TCP accept and the HTTP upgrade are most of a handshake's
cost), so a connection past the running limit first waits, briefly, for a slot; only past the
waiting limit, or after waiting too long, is it refused, with a ``retry_after`` sized to the
backlog at the rate handshakes are actually completing.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time

RATE_WINDOW_S = 2.0
PRIOR_RATE_PER_S = 500.0  # until a rate is measured: one 2-core machine's handshake rate
MIN_RATE_PER_S = 20.0
MIN_SAMPLES = 20
MAX_RETRY_AFTER_S = 30.0


class Admission:
    """Invariants: at most ``slots`` holders at a time; at most ``max_waiting`` callers wait,
    each for at most ``max_wait_s``; a refused caller never holds or waits."""

    def __init__(self, *, slots: int, max_waiting: int, max_wait_s: float,
                 rng: random.Random | None = None) -> None:
        self.slots = slots
        self.max_waiting = max_waiting
        self.max_wait_s = max_wait_s
        self.running = 0
        self.waiting = 0
        self.refused_total = 0
        self._sem = asyncio.Semaphore(max(0, slots))  # FIFO, cancellation-safe
        self._done: collections.deque[float] = collections.deque()
        self._rng = rng or random.Random()

    async def acquire(self) -> bool:
        """Take a slot (True) or be refused (False): the caller must then close with 4429
        and :meth:`retry_after`. Every True must be paired with one :meth:`release`."""
        if self.slots <= 0 or (self._sem.locked() and self.waiting >= self.max_waiting):
            self.refused_total += 1
            return False
        self.waiting += 1
        try:
            async with asyncio.timeout(self.max_wait_s):
                await self._sem.acquire()
        except TimeoutError:
            self.refused_total += 1
            return False
        finally:
            self.waiting -= 1
        self.running += 1
        return True

    def release(self, *, completed: bool = True) -> None:
        """Give the slot back; ``completed`` handshakes count toward the measured rate."""
        self.running -= 1
        self._sem.release()
        if completed:
            now = time.monotonic()
            self._done.append(now)
            while self._done and self._done[0] < now - RATE_WINDOW_S:
                self._done.popleft()

    def rate_per_s(self) -> float:
        """Handshakes completed per second over the last couple of seconds."""
        now = time.monotonic()
        recent = sum(1 for t in self._done if t >= now - RATE_WINDOW_S)
        if recent < MIN_SAMPLES:
            return PRIOR_RATE_PER_S
        return max(MIN_RATE_PER_S, recent / RATE_WINDOW_S)

    def retry_after(self) -> float:
        """Seconds a refused node should wait: about the time to drain the current backlog
        at the measured rate, spread by jitter over half to one and a half of it (at least
        1 s, at most 30 s), so refused nodes come back spread out as the queue empties."""
        backlog = self.running + self.waiting
        drain_s = max(1.0, backlog / self.rate_per_s())
        return round(min(MAX_RETRY_AFTER_S, max(1.0, drain_s * (0.5 + self._rng.random()))), 1)
