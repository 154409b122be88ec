"""What the benchmarks share: a controller in its own process, percentiles, result rows."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile, rounded to the microsecond; None for no samples."""
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return round(ordered[k], 3)


def row(benchmark: str, system: str, metric: str, value: float | int | None, unit: str,
        **extra: Any) -> dict[str, Any]:
    """One pinned result row: ``benchmark, system, metric, value, unit`` plus context.
    A None value must carry a ``note`` saying why (a figure is never invented)."""
    if value is None and "note" not in extra:
        raise ValueError(f"{benchmark}/{system}/{metric}: no value and no note")
    return {"benchmark": benchmark, "system": system, "metric": metric, "value": value,
            "unit": unit, **extra}


def spawn_peer(peer: str, port_file: Path) -> subprocess.Popen[bytes]:
    """Start a :mod:`tether.tools.bench_peers` server; it writes its port to ``port_file``."""
    return subprocess.Popen([sys.executable, "-m", "tether.tools.bench_peers", peer,
                             "--port-file", str(port_file)])


async def peer_port(port_file: Path, *, timeout_s: float = 30) -> int:
    """The port a :func:`spawn_peer` server wrote, once it has written it (a local stat
    while the benchmark waits for its child: nothing else runs on this loop meanwhile)."""
    async with asyncio.timeout(timeout_s):
        while not port_file.exists():  # noqa: ASYNC240
            await asyncio.sleep(0.02)
    return int(port_file.read_text())  # noqa: ASYNC240


class ControllerProcess:
    """``tether controller serve`` on a free loopback port with its own data dir; stopped
    with SIGTERM (then SIGKILL after 15 s) on exit."""

    def __init__(self, root: Path, name: str, durability: str,
                 extra: list[str] | None = None) -> None:
        self.dir = root / f"controller-{name}"
        self.durability = durability
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.token = ""

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.dir.mkdir(parents=True)
        with open(self.dir / "controller.log", "wb") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "tether.cli.main", "--log-level", "warning",
                 "controller", "serve", "--port", "0", "--data-dir", str(self.dir),
                 "--durability", self.durability, *self.extra],
                stdout=log, stderr=subprocess.STDOUT)

    async def __aenter__(self) -> ControllerProcess:
        self.proc = self._spawn()
        url_file = self.dir / "controller.url"
        try:
            async with asyncio.timeout(30):
                while not url_file.exists():
                    if self.proc.poll() is not None:
                        raise RuntimeError((self.dir / "controller.log").read_text())
                    await asyncio.sleep(0.05)
        except BaseException:
            await self.__aexit__()
            raise
        self.url = url_file.read_text().strip()
        self.token = (self.dir / "admin.token").read_text().strip()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait)
