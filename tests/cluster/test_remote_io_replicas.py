"""Interactive io across replicas (real processes on one PostgreSQL and one nats-server):
stdin and a shell opened through a replica that does not hold the node (the single
controller cases are tests/e2e/test_remote_io.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..e2e.test_remote_io import PtyCli, cli, run_exec
from ..helpers import ControllerProc, NodeProc, wait_until


def test_stdin_and_a_shell_work_through_a_replica_that_does_not_hold_the_node(
        make_replica: Callable[[str], ControllerProc], tmp_path: Path) -> None:
    """The operator on replica B, the node's session on replica A: input goes down through
    the Router (NATS), output and acks come up through the EventBus."""
    holder, other = make_replica("r-a"), make_replica("r-b")
    node = NodeProc(tmp_path / "n-far", "n-far")
    node.enroll(holder)
    node.start()
    try:
        wait_until(lambda: other.api().liveness("n-far") == "online", what="online")
        out = run_exec(other, "n-far", "cat", input_=b"across replicas\n")
        assert (out.returncode, out.stdout) == (0, b"across replicas\n"), out.stderr
        term = PtyCli(cli(other, "shell", "n-far", "--", "sh", "-i"))
        try:
            term.expect(rb"[#$] ")
            term.type(b"echo far-$((40+2))\r")
            term.expect(rb"far-42")
            term.type(b"exit 5\r")
            assert term.proc.wait(timeout=30) == 5
        finally:
            term.close()
    finally:
        node.cleanup()
