"""``tether commands list``: recent commands, newest first, filtered by the controller
(``GET /api/v1/commands?node_id=&state=&limit=``)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from tether.protocol.frames import COMMAND_STATES

from .operator import api_from, print_table
from .render import human


def add_commands_list_parser(cmds: Any,
                             operator_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    """``commands list`` (called from cli/main.py's build_parser)."""
    clist = cmds.add_parser("list", help="recent commands, newest first, with counts by state")
    clist.add_argument("--node", help="only this node's commands")
    clist.add_argument("--state", choices=list(COMMAND_STATES),
                       help="only commands in this state")
    clist.add_argument("--limit", type=int, default=50,
                       help="at most this many (1-10000, default 50)")
    operator_flags(clist)


def commands_list(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit}
    if args.node:
        params["node_id"] = args.node
    if args.state:
        params["state"] = args.state
    page = api_from(args).get("/api/v1/commands", params=params)
    if args.json:
        print(json.dumps(page, indent=2))
        return 0
    rows = [{"command": c.get("command_id"), "node": c.get("node_id"), "kind": c.get("kind"),
             "state": c.get("state"), "exit": c.get("exit_code"),
             "created": c.get("created_at"), "args": _args_text(c)}
            for c in page.get("items") or [] if isinstance(c, dict)]
    print_table(rows, ["command", "node", "kind", "state", "exit", "created", "args"])
    counts = page.get("counts")
    if isinstance(counts, dict) and counts:
        print(f"by state: {human(counts)}")
    return 0


def _args_text(cmd: dict[str, Any]) -> str:
    """An exec's argv as the command line it was; any other kind's args as key=value."""
    args = cmd.get("args")
    argv = args.get("argv") if isinstance(args, dict) else None
    if isinstance(argv, list):
        text = " ".join(human(a) for a in argv)
        return text if len(text) <= 60 else text[:57] + "..."
    return human(args)
