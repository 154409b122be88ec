"""``node.resources`` (class B, latest wins): what the node's machine looks like now."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import psutil


def sample(state_dir: Path) -> dict[str, Any]:
    """One sample. Blocking (psutil reads /proc): call it in a thread. ``cpu_percent`` is
    since the previous sample (the first one after start reads 0.0)."""
    mem = psutil.virtual_memory()
    disk = psutil.disk_usage(str(state_dir))
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "cpus": psutil.cpu_count() or 1,
        "load": [round(x, 2) for x in load],
        "memory": {"total": mem.total, "available": mem.available, "percent": mem.percent},
        "disk": {"path": str(state_dir), "total": disk.total, "free": disk.free,
                 "percent": disk.percent},
        "processes": len(psutil.pids()),
        "uptime_s": round(time.time() - psutil.boot_time(), 1),
        "at_ms": int(time.time() * 1000),
    }
