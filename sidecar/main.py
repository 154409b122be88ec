"""Process entry for ``tether sidecar run``: pid file, signals, the relay's lifetime.

Normally started (detached) by ``tether node run``; it outlives the runtime so that a
runtime restart or crash keeps the controller session.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal

from tether.common.identity import load_identity
from tether.common.procfile import new_runner, read_pid
from tether.tools.soak import recorder

from .config import SidecarConfig
from .relay import Sidecar, write_status_file

logger = logging.getLogger(__name__)


async def _main(config: SidecarConfig) -> int:
    identity = load_identity(config.state_dir)
    sidecar = Sidecar(config, identity, on_status=write_status_file(config.status_path))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, sidecar.stop.set)
    logger.info("sidecar starting", extra={"node_id": identity.node_id,
                                           "socket": str(config.socket_path)})
    await sidecar.run()
    if sidecar.final_close is not None:
        return 1
    logger.info("sidecar stopped", extra={"node_id": identity.node_id})
    return 0


def run_sidecar(config: SidecarConfig) -> int:
    recorder.set_role("sidecar")  # names this process's history file (soak)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(config.state_dir / "sidecar.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock_fd)
        other = read_pid(config.pid_path)
        raise SystemExit(f"error: a sidecar (pid {other}) already runs for "
                         f"{config.state_dir}; stop it first ('tether node stop')") from None
    config.pid_path.write_text(f"{os.getpid()}\n")
    try:
        with new_runner() as runner:
            return runner.run(_main(config))
    finally:
        with contextlib.suppress(OSError):
            if read_pid(config.pid_path) in (os.getpid(), None):
                config.pid_path.unlink()
        os.close(lock_fd)
