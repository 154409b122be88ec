"""``tether node supervise``: run the node runtime under its supervisor (node/supervisor.py),
which owns runtime self-updates (docs/operations.md "Upgrading")."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_supervise_parser(node_verbs: Any, default_state_dir: Path) -> None:
    p = node_verbs.add_parser(
        "supervise", help="run the runtime under a supervisor (runtime self-updates)",
        epilog="Arguments after -- go to 'tether node run' (e.g. -- --controller-url URL).")
    p.add_argument("--state-dir", type=Path, default=default_state_dir,
                   help="the node's state dir (env TETHER_STATE_DIR; default .tether/node)")
    p.add_argument("--stop-timeout-s", type=float, default=20.0,
                   help="how long the old runtime may take to stop (default 20)")
    p.add_argument("--stage-deadline-s", type=float, default=60.0,
                   help="how long a candidate may take to attach, to be ready and to "
                        "replay the outbox, each (default 60)")
    p.add_argument("runtime_args", nargs=argparse.REMAINDER,
                   help="-- then the arguments of 'tether node run'")


def supervise_command(args: argparse.Namespace) -> int:
    from tether.node.supervisor import SupervisorConfig, run_supervisor

    from .client import CliError

    extra = list(args.runtime_args)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    if "--state-dir" in extra:
        raise CliError("give --state-dir to 'node supervise', not after --", 2)
    if not (0 < args.stop_timeout_s <= 3600 and 0 < args.stage_deadline_s <= 86400):
        raise CliError("--stop-timeout-s must be in (0, 3600] and --stage-deadline-s in "
                       "(0, 86400]", 2)
    return run_supervisor(SupervisorConfig(
        state_dir=args.state_dir, runtime_args=tuple(extra),
        stop_timeout_s=args.stop_timeout_s, stage_deadline_s=args.stage_deadline_s))
