"""``tether node stop`` and ``tether node restart``: signals to the processes of a state dir.

stop: SIGTERM to the runtime (it drains, the sidecar says goodbye, both exit); with no
runtime, SIGTERM to the sidecar (it says goodbye). restart: SIGHUP to the runtime, which
re-executes itself while the sidecar keeps the session.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tether.common.procfile import pid_running, read_pid
from tether.protocol.errors import TetherError

from .config import NodeConfig
from .sidecar_proc import sidecar_pid

STOP_TIMEOUT_S = 30.0


def _wait_gone(pids: list[int], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(pid_running(pid) for pid in pids):
            return True
        time.sleep(0.05)
    return False


def stop_node(state_dir: Path) -> str:
    config = NodeConfig(state_dir=state_dir)
    runtime, sidecar = read_pid(config.pid_path), sidecar_pid(config)
    if runtime is None and sidecar is None:
        return f"nothing runs for {state_dir}"
    target = runtime if runtime is not None else sidecar
    assert target is not None
    os.kill(target, signal.SIGTERM)
    pids = [p for p in (runtime, sidecar) if p is not None]
    if not _wait_gone(pids, STOP_TIMEOUT_S):
        raise TetherError(f"processes {pids} did not stop within {STOP_TIMEOUT_S:g} s; "
                          "check them, or kill them")
    return "stopped"


def restart_node(state_dir: Path) -> str:
    config = NodeConfig(state_dir=state_dir)
    runtime = read_pid(config.pid_path)
    if runtime is None:
        raise TetherError(f"no runtime runs for {state_dir}; start it with 'tether node run'")
    os.kill(runtime, signal.SIGHUP)
    return f"runtime {runtime} restarting; the session stays with the sidecar"
