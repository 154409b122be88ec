"""Process entry for ``tether node run``: pid file, signals, the runtime's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys

from tether.common.procfile import new_runner, read_pid
from tether.tools.soak import recorder

from .config import NodeConfig
from .identity import load_identity
from .runtime import NodeRuntime

logger = logging.getLogger(__name__)


async def _main(config: NodeConfig) -> int:
    identity = load_identity(config.state_dir)
    runtime = NodeRuntime(config, identity)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def restart() -> None:
        runtime.restart_requested = True
        stop.set()

    loop.add_signal_handler(signal.SIGHUP, restart)
    logger.info("node runtime starting", extra={"node_id": identity.node_id,
                                                "controller": identity.controller_url})
    await runtime.run(stop)
    if runtime.refused is not None:
        print(f"error: {runtime.refused}", file=sys.stderr)
        return 1
    if runtime.final_close is not None:
        code, reason = runtime.final_close
        logger.error("stopped: the controller refused this node for good",
                     extra={"code": code, "reason": reason})
        return 1
    if runtime.restart_requested:
        return RESTART
    logger.info("node runtime stopped", extra={"node_id": identity.node_id})
    return 0


RESTART = -1  # run_node re-executes itself: the new code and a fresh runtime, same pid


def run_node(config: NodeConfig) -> int:
    """Run until SIGTERM/SIGINT (goodbye, clean exit 0) or a final close code (exit 1).
    SIGHUP restarts only the runtime (re-exec, same pid): the sidecar keeps the session."""
    recorder.set_role("runtime")  # names this process's history file (soak)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    other = read_pid(config.pid_path)
    if other is not None and other != os.getpid():
        raise SystemExit(f"error: a node runtime (pid {other}) already runs for "
                         f"{config.state_dir}; stop it first")
    config.pid_path.write_text(f"{os.getpid()}\n")
    try:
        with new_runner() as runner:
            code = runner.run(_main(config))
        if config.supervised and code in (RESTART, 1):
            from .supervisor import EXIT_RESTART, EXIT_STOPPED

            # for the supervisor: start the active slot's runtime again, or stop for good
            # (a crash, an uncaught exception, exits 1 and is started again)
            return EXIT_RESTART if code == RESTART else EXIT_STOPPED
        if code == RESTART:
            logger.info("runtime restarting", extra={"pid": os.getpid()})
            os.execv(sys.executable, [sys.executable, "-m", "tether.cli.main", *sys.argv[1:]])
        return code
    finally:
        with contextlib.suppress(OSError):
            if read_pid(config.pid_path) in (os.getpid(), None):
                config.pid_path.unlink()
