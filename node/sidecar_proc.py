"""Starting the sidecar process for a state dir, detached, so it outlives the runtime.

The runtime does not import the sidecar package: it starts ``tether sidecar run`` as its own
process, through a short-lived intermediate so the sidecar is re-parented (no zombie is left
behind when it exits before the runtime does).
"""

from __future__ import annotations

import subprocess
import sys

from tether.common.procfile import read_pid

from .config import NodeConfig

_SPAWN = (
    "import subprocess, sys\n"
    "log = open(sys.argv[1], 'ab')\n"
    "subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log, stderr=log,\n"
    "                 start_new_session=True, close_fds=True)\n"
)


def sidecar_pid(config: NodeConfig) -> int | None:
    return read_pid(config.sidecar_pid_path)


def ensure_sidecar(config: NodeConfig) -> bool:
    """Start a sidecar for ``config.state_dir`` unless one is alive; True when it started
    one. Two racing starts are safe: the sidecar holds a lock and the second one exits."""
    if sidecar_pid(config) is not None:
        return False
    argv = [sys.executable, "-m", "tether.cli.main", "sidecar", "run",
            "--state-dir", str(config.state_dir)]
    if config.controller_url:
        argv += ["--controller-url", config.controller_url]
    subprocess.run([sys.executable, "-c", _SPAWN, str(config.state_dir / "sidecar.log"),
                    *argv], check=True, timeout=30)
    return True
