"""Reconnect delays (PROTOCOL.md §7): full-jitter exponential, 0.5 s base, 30 s cap.

Pure: the caller passes the random source, so tests need no clock and no seed games.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator


def backoff_delays(uniform: Callable[[float, float], float], *, base_s: float = 0.5,
                   cap_s: float = 30.0) -> Iterator[float]:
    """Delay before attempt n+1 is ``uniform(0, min(cap_s, base_s * 2**n))``; endless."""
    attempt = 0
    while True:
        ceiling = min(cap_s, base_s * (2 ** min(attempt, 32)))
        yield uniform(0.0, ceiling)
        attempt += 1
