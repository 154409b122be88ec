"""Pid files and process liveness, shared by the node runtime and the sidecar, and the
event-loop runner both use (uvloop where available)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path


def pid_running(pid: int) -> bool:
    """True while ``pid`` runs. An exited process its parent has not reaped yet (a zombie)
    has stopped; a process of another user counts as running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:  # no /proc (macOS): signal 0 is all there is
        return True


def read_pid(path: os.PathLike[str] | str) -> int | None:
    """The pid in ``path`` if that process runs, else None."""
    try:
        pid = int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_running(pid) else None


def new_runner() -> asyncio.Runner:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)
