"""``nodes list`` does not claim a runtime is attached on a node that has no session
(issue 11 item 10)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import pytest

from ..helpers import ControllerProc, NodeProc, tether_cmd, wait_until

pytestmark = pytest.mark.both_backends  # tests/e2e/conftest.py: SQLite, PostgreSQL + NATS


def test_an_offline_node_shows_its_runtime_as_unknown(
        controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    node = make_node("n-gone")
    api = controller.api()
    assert api.node("n-gone")["runtime"]["state"] == "attached"
    node.kill_all9()  # no goodbye, no edge.runtime detached: the stored state is stale
    wait_until(lambda: api.liveness("n-gone") == "offline", timeout_s=30, what="offline")
    view = api.node("n-gone")["runtime"]
    assert (view["state"], view["last_state"]) == ("unknown", "attached")
    flags = ["--url", controller.url, "--token", controller.token]
    listed = subprocess.run(tether_cmd("nodes", "list", *flags, "--json"),
                            capture_output=True, text=True, timeout=30)
    (row,) = [n for n in json.loads(listed.stdout) if n["node_id"] == "n-gone"]
    assert row["runtime"]["state"] == "unknown"
    table = subprocess.run(tether_cmd("nodes", "list", *flags), capture_output=True,
                           text=True, timeout=30).stdout
    (line,) = [ln for ln in table.splitlines() if ln.startswith("n-gone")]
    assert "attached" not in line and "unknown" in line
