"""A node id enrolled with another key is refused with advice that can be followed
(issue 11 item 10): the commands and files it names exist, and following it works."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ..helpers import ControllerProc, tether_cmd

pytestmark = pytest.mark.both_backends  # tests/e2e/conftest.py: SQLite, PostgreSQL + NATS


def enroll(ctl: ControllerProc, state: Path, node_id: str) -> subprocess.CompletedProcess[str]:
    token = ctl.api().post("/api/v1/join-tokens", json={"uses": 1}).json()["token"]
    return subprocess.run(tether_cmd("node", "enroll", "--controller", ctl.url, "--token",
                                     token, "--node-id", node_id, "--state-dir", str(state)),
                          capture_output=True, text=True, timeout=30)


def test_a_taken_node_id_is_refused_with_advice_that_works(
        controller: ControllerProc, tmp_path: Path) -> None:
    assert enroll(controller, tmp_path / "old", "n-twin").returncode == 0
    taken = enroll(controller, tmp_path / "new", "n-twin")
    assert taken.returncode == 1
    assert "enrollment refused (409): node id 'n-twin' is enrolled with another key; " \
           "enroll with another --node-id, or from the state dir that holds that node's " \
           "key (node.key)" in taken.stderr
    assert "--node-id" in subprocess.run(tether_cmd("node", "enroll", "--help"),
                                         capture_output=True, text=True).stdout
    assert (tmp_path / "old" / "node.key").exists()
    assert enroll(controller, tmp_path / "new", "n-twin-2").returncode == 0
    assert enroll(controller, tmp_path / "old", "n-twin").returncode == 0
