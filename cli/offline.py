"""What ``tether exec`` says when its node is offline: the command is queued, not lost,
and the operator is not left staring at a silent terminal.

Exec calls :func:`say_if_offline` right after the command is accepted (before following
its output), and :func:`detached_line` when Ctrl-C detaches; both write one line to
stderr. Kept apart from the exec loop so that reworks of exec's Ctrl-C handling (a first
Ctrl-C interrupting the remote process, a second one detaching) can call them as they are.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from tether.common.terminal import terminal_safe

from .client import Api, CliError


def offline_line(node_id: str, command_id: str) -> str:
    return (f"{terminal_safe(node_id)} is offline; the command is queued and will run when "
            f"it reconnects; Ctrl-C detaches (then: tether logs -f {command_id})")


def detached_line(command_id: str) -> str:
    return f"detached; the command goes on: tether logs -f {command_id}"


def say_if_offline(api: Api, node_id: str, cmd: dict[str, Any],
                   err: IO[str] | None = None) -> bool:
    """When the node of a just-queued command is offline, say so on ``err`` (stderr) and
    return True. A command already past ``queued`` or a node view that cannot be read says
    nothing: the message is a courtesy, never a reason to fail the exec."""
    if cmd.get("state") != "queued":
        return False
    try:
        node = api.get(f"/api/v1/nodes/{node_id}")
    except CliError:
        return False
    if not isinstance(node, dict) or node.get("liveness") != "offline":
        return False
    print(offline_line(node_id, str(cmd.get("command_id"))), file=err or sys.stderr,
          flush=True)
    return True
