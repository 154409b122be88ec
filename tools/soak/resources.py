"""Resource curves of a soak's processes, and the "resources stay flat" check (issue 16).

Sampled from outside (psutil): each process's RSS and open file descriptors, and the size of
each SQLite store (the ``*.db``, ``*.db-wal`` and ``*.db-shm`` files of a data or state dir).
Asyncio task counts (``tasks``) are what each process says of itself: ``event_loop.tasks``
(``len(asyncio.all_tasks())`` on its loop) in the controller's ``GET /api/v1/diag`` and in the
runtime's and the sidecar's loopback ``GET /status``; the driver reads them and files each
under the incarnation (pid) that answered (:meth:`Sampler.tasks`).

The check (:func:`flat_violations`, pure): for each series (one process *incarnation* — a
restart starts a new series, since a kill resets its memory — or one store), past its first
:data:`WARMUP_S` seconds (a process starting up), a least-squares slope over the samples
in the second half of the run, when that half holds at least
:data:`MIN_SAMPLES` samples spanning :data:`MIN_SPAN_S` seconds. A slope past the bound of
:data:`BOUNDS` (per minute) whose growth over that half also passes :data:`MIN_GROWTH`, and
whose last value is above every earlier level (its own first half's peak, and the peak of
every earlier incarnation of the same process), is a violation with the figure. (A leak keeps
climbing past every earlier level; a process that reconnects after a kill of PostgreSQL or
NATS dips and comes back to a level it had held before, and a replica restarted late in the
run climbs back to its predecessor's level as its nodes return, which a slope over a short
window alone would call growth: a cluster soak's replica, restarted at 795 s of 900, went
from 21 to 37 fds and 15 to 35 tasks in 75 s; its predecessor had held 46.) The bounds are
generous on purpose: a soak of minutes sees warm-up (imports, caches, SQLite page cache)
and data kept by design (commands and events in the store, within the retention caps); what
they catch is a leak that grows for as long as the soak runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

MIN_SAMPLES = 8
WARMUP_S = 10.0  # each series' first seconds (a process starting up) are not judged
MIN_SPAN_S = 20.0
# per minute, over the run's second half
BOUNDS: dict[str, float] = {
    "rss_bytes": 4 * 1024 * 1024,   # 4 MiB/min: 120 MiB over a 30-minute soak
    "fds": 2.0,                     # a descriptor leaked every 30 s
    "sqlite_bytes": 8 * 1024 * 1024,  # 8 MiB/min: a WAL never checkpointed, a table never trimmed
    "tasks": 6.0,                   # a task leaked every 10 s (a leak per request, per reconnect)
}
# and the growth that slope predicts over the second half must pass this too: on a short run
# the rate alone is noise (one fd opened in 20 s reads as 3/min); a leak passes both.
MIN_GROWTH: dict[str, float] = {
    "rss_bytes": 32 * 1024 * 1024,
    "fds": 8.0,
    "sqlite_bytes": 64 * 1024 * 1024,
    # a controller's tasks follow its sessions and requests (a few per node connected), so a
    # reconnect storm moves them by tens; a task a second leaks 30 in half a 1-minute run
    "tasks": 20.0,
}
SQLITE_SUFFIXES = (".db", ".db-wal", ".db-shm")


@dataclass
class Series:
    """One curve: ``name`` (process or store), ``pid`` (None for a store), samples of
    (seconds since the soak started, value) per metric."""

    name: str
    pid: int | None
    points: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def add(self, metric: str, t: float, value: float) -> None:
        self.points.setdefault(metric, []).append((round(t, 3), value))

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "pid": self.pid,
                **{metric: [[t, v] for t, v in pts] for metric, pts in self.points.items()}}


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, in value per minute (0 if flat in t)."""
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * 60.0


def flat_violations(series: Iterable[Series], run_s: float) -> tuple[list[dict[str, object]],
                                                                     list[dict[str, object]]]:
    """(violations, slopes checked): each a dict naming the series, metric, slope per minute
    and bound. Series too short in the second half are not judged (listed with ``skipped``)."""
    half = run_s / 2
    violations: list[dict[str, object]] = []
    checked: list[dict[str, object]] = []
    series = list(series)
    for s in series:
        for metric, points in s.points.items():
            bound = BOUNDS.get(metric)
            if bound is None:
                continue
            born = points[0][0] if points else 0.0
            points = [(t, v) for t, v in points if t >= born + WARMUP_S]  # start-up is no leak
            late = [(t, v) for t, v in points if t >= half]
            entry: dict[str, object] = {"name": s.name, "pid": s.pid, "metric": metric,
                                        "bound_per_min": bound, "samples": len(late)}
            if len(late) < MIN_SAMPLES or late[-1][0] - late[0][0] < MIN_SPAN_S:
                checked.append({**entry, "skipped": "too few samples in the second half"})
                continue
            slope = slope_per_min(late)
            entry["slope_per_min"] = round(slope, 3)
            checked.append(entry)
            growth = slope * (late[-1][0] - late[0][0]) / 60.0
            entry["growth"] = round(growth, 1)
            # the levels held before: this incarnation's first half, and every point of the
            # earlier incarnations of the same process (a replica restarted late climbs back
            # to what its predecessor held as its nodes and pool connections return)
            earlier = [v for t, v in points if t < half] + [
                v for other in series if other is not s and other.name == s.name
                and other.points.get(metric) and other.points[metric][0][0] < born
                for _, v in other.points[metric]]
            early_peak = max(earlier, default=late[0][1])
            entry["above_first_half_peak"] = late[-1][1] > early_peak
            if slope > bound and growth > MIN_GROWTH[metric] and late[-1][1] > early_peak:
                violations.append({"kind": "resource_growth", **entry,
                                   "detail": f"{s.name} {metric} grows {slope:,.0f}/min over "
                                             f"the second half, past {bound:,.0f}/min"})
    return violations, checked


def sqlite_bytes(directory: Path) -> int:
    total = 0
    for path in directory.rglob("*"):
        if path.name.endswith(SQLITE_SUFFIXES):
            try:
                total += path.stat().st_size
            except OSError:
                pass  # removed between the listing and the stat
    return total


class Sampler:
    """Keeps one :class:`Series` per (process name, pid) and per store directory."""

    def __init__(self, t0: float | None = None) -> None:
        self.t0 = time.monotonic() if t0 is None else t0
        self.series: dict[tuple[str, int | None], Series] = {}

    def now(self) -> float:
        return time.monotonic() - self.t0

    def process(self, name: str, pid: int | None) -> None:
        if pid is None:
            return
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                rss, fds = proc.memory_info().rss, proc.num_fds()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return
        s = self.series.setdefault((name, pid), Series(name, pid))
        t = self.now()
        s.add("rss_bytes", t, float(rss))
        s.add("fds", t, float(fds))

    def tasks(self, name: str, pid: int, count: int) -> None:
        """A task count that the process ``pid`` reported (into the series that holds its
        RSS: one curve per incarnation)."""
        s = self.series.setdefault((name, pid), Series(name, pid))
        s.add("tasks", self.now(), float(count))

    def store(self, name: str, directory: Path) -> None:
        s = self.series.setdefault((name, None), Series(name, None))
        s.add("sqlite_bytes", self.now(), float(sqlite_bytes(directory)))
