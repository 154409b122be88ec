"""``tether diag node`` exits non-zero when the runtime is down, wedged or not ready
(issue 11 item 10), and 0 when it is ready."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from ..helpers import ControllerProc, NodeProc, tether_cmd, wait_until


def diag_node(node: NodeProc, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tether_cmd("diag", "node", "--state-dir", str(node.state_dir),
                                     *flags), capture_output=True, text=True, timeout=60)


def test_diag_node_exits_non_zero_when_the_runtime_is_down_wedged_or_not_ready(
        tmp_path: Path) -> None:
    ctl = ControllerProc(tmp_path / "ctl")
    ctl.start()
    node = NodeProc(tmp_path / "n-probe", "n-probe")
    try:
        empty = subprocess.run(tether_cmd("diag", "node", "--state-dir", str(tmp_path / "x")),
                               capture_output=True, text=True, timeout=60)
        assert empty.returncode == 20
        node.enroll(ctl)
        down = diag_node(node)
        assert down.returncode == 21
        assert "the runtime is not running" in down.stderr
        assert json.loads(diag_node(node, "--json").stdout)["exit_code"] == 21

        node.start()
        wait_until(lambda: ctl.api().liveness("n-probe") == "online", what="online")
        wait_until(lambda: diag_node(node).returncode == 0, what="diag node to say ready")

        node.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
        try:
            wedged = diag_node(node)
        finally:
            node.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
        assert wedged.returncode == 22 and "does not answer" in wedged.stderr

        ctl.terminate()  # the transport goes down: the node is no longer ready
        unready = wait_until(lambda: (out := diag_node(node)).returncode == 23 and out,
                             timeout_s=30, what="diag node to say not ready")
        assert "not ready: " in unready.stderr and "transport" in unready.stdout
    finally:
        node.cleanup()
        ctl.terminate()
