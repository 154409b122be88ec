"""Admission control for edge handshakes: a bounded number run, a bounded number wait.

A reconnect storm (every node of a fleet dialling at once after a partition or a controller
restart) must neither melt the controller nor turn into a retry storm. Refusing with 4429 is
barely cheaper than serving (the TCP accept and the HTTP upgrade are most of a handshake's
cost), so a connection past the running limit first waits, briefly, for a slot; only past the
waiting limit, or after waiting too long, is it refused, with a ``retry_after`` sized to the
backlog at the rate handshakes are actually completing.

A slot is asked for only once a connection has sent its hello: before that it waits in the
:class:`HelloGate`, which costs no slot, so silent sockets cannot crowd out a node that
proves itself (issue 11, item 5).
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from collections.abc import Callable

RATE_WINDOW_S = 2.0
PRIOR_RATE_PER_S = 500.0  # until a rate is measured: one 2-core machine's handshake rate
MIN_RATE_PER_S = 20.0
MIN_SAMPLES = 20
MAX_RETRY_AFTER_S = 30.0


class Admission:
    """Invariants: at most ``slots`` holders at a time; at most ``max_waiting`` callers wait,
    each for at most ``max_wait_s``; a refused caller never holds or waits."""

    def __init__(self, *, slots: int, max_waiting: int, max_wait_s: float,
                 rng: random.Random | None = None, hello: HelloGate | None = None) -> None:
        self.hello = hello or HelloGate()  # before the slot: see HelloGate
        self.slots = slots
        self.max_waiting = max_waiting
        self.max_wait_s = max_wait_s
        self.running = 0
        self.waiting = 0
        self.refused_total = 0
        self._sem = asyncio.Semaphore(max(0, slots))  # FIFO, cancellation-safe
        self._done: collections.deque[float] = collections.deque()
        self._rng = rng or random.Random()

    def saturated(self) -> bool:
        """True when :meth:`acquire` would refuse at once (no slot and nobody may wait): a
        connection can be told 4429 before its hello is even read."""
        return self.slots <= 0 or (self._sem.locked() and self.waiting >= self.max_waiting)

    def refuse(self) -> None:
        """Count a connection refused without calling :meth:`acquire`."""
        self.refused_total += 1

    async def acquire(self) -> bool:
        """Take a slot (True) or be refused (False): the caller must then close with 4429
        and :meth:`retry_after`. Every True must be paired with one :meth:`release`."""
        if self.saturated():
            self.refuse()
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


class HelloGate:
    """Edge connections that took the challenge and have not sent a hello yet: each waits
    briefly, and the crowd of them is bounded. Unauthenticated sockets cost little and live
    briefly; a node that answers at once is never behind them.

    Rule 1 (deadline): a newcomer may wait :meth:`allowance_s`: ``timeout_s`` while at most
    ``pressure_at`` connections wait, then ``timeout_s * pressure_at / waiting`` (never
    under ``min_timeout_s``). The allowance tightens for everyone: when a newcomer enters,
    every waiter older than the current allowance is expired, oldest first.
    Rule 2 (per address): at most ``max_per_address`` wait from one remote address; a
    newcomer past it expires the oldest waiter from that address (drop the oldest: a node
    that answers at once is through before many more arrive behind it).
    Rule 3 (total): at most ``max_waiting`` wait in all; past it, the oldest waiter goes.
    Rule 4 (floor): no waiter is closed before it has waited ``min_timeout_s``, whatever
    the pressure or the caps: a legitimate burst (a fleet redialling at once from behind
    one NAT, answering late because both loops lag) is not turned against itself. The caps
    are therefore soft by what arrives within ``min_timeout_s``; a newcomer is never refused.
    Rule 5: an expired waiter's ``expire`` callback is called exactly once, and it is no
    longer counted; its owner closes it (4408) and calls :meth:`leave`, which is then a
    no-op. Each step costs O(1) amortized: waiters are kept in arrival order.
    """

    def __init__(self, *, timeout_s: float = 10.0, min_timeout_s: float = 3.0,
                 pressure_at: int = 2048, max_per_address: int = 4096,
                 max_waiting: int = 8192,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s = timeout_s
        self.min_timeout_s = min(min_timeout_s, timeout_s)
        self.pressure_at = max(1, pressure_at)
        self.max_per_address = max(1, max_per_address)
        self.max_waiting = max(1, max_waiting)
        self.expired_total = 0  # deadline passed, tightened or not
        self.evicted_total = 0  # pushed out by Rule 2 or Rule 3
        self._clock = clock
        # key -> (entered at, address, expire); dicts keep arrival order
        self._waiters: dict[object, tuple[float, str, Callable[[], None]]] = {}
        self._by_address: dict[str, dict[object, None]] = {}

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def waiting_from(self, address: str) -> int:
        return len(self._by_address.get(address, ()))

    def allowance_s(self, waiting: int | None = None) -> float:
        """Rule 1: seconds a connection may wait for its hello with ``waiting`` others."""
        n = self.waiting + 1 if waiting is None else waiting
        if n <= self.pressure_at:
            return self.timeout_s
        return max(self.min_timeout_s, self.timeout_s * self.pressure_at / n)

    def enter(self, key: object, address: str, expire: Callable[[], None]) -> float:
        """Start waiting for ``key``'s hello; returns its allowance in seconds. May expire
        other waiters first (Rules 1-3). ``key`` must not be waiting already."""
        now = self._clock()
        mine = self._by_address.get(address)
        if mine is not None and len(mine) >= self.max_per_address:
            self._drop_if_waited(next(iter(mine)), now)
        if len(self._waiters) >= self.max_waiting:
            self._drop_if_waited(next(iter(self._waiters)), now)
        allowance = self.allowance_s()
        while self._waiters:
            oldest = next(iter(self._waiters))
            if now - self._waiters[oldest][0] < allowance:
                break
            self._drop(oldest, evicted=False)
        self._waiters[key] = (now, address, expire)
        self._by_address.setdefault(address, {})[key] = None
        return allowance

    def leave(self, key: object, *, timed_out: bool = False) -> None:
        """``key`` sent its hello, closed, was expired by the gate, or (``timed_out``) its
        own allowance ran out: stop counting it."""
        entry = self._waiters.pop(key, None)
        if entry is not None:
            self._forget(key, entry[1])
            if timed_out:
                self.expired_total += 1

    def _drop_if_waited(self, key: object, now: float) -> None:
        if now - self._waiters[key][0] >= self.min_timeout_s:
            self._drop(key, evicted=True)

    def _drop(self, key: object, *, evicted: bool) -> None:
        _, address, expire = self._waiters.pop(key)
        self._forget(key, address)
        if evicted:
            self.evicted_total += 1
        else:
            self.expired_total += 1
        expire()

    def _forget(self, key: object, address: str) -> None:
        mine = self._by_address[address]
        del mine[key]
        if not mine:
            del self._by_address[address]
