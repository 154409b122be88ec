"""A clean stop logs no error (issue 11 item 10): SIGTERM to a node runtime stops it and
its sidecar with nothing at ERROR and no traceback in either log."""

from __future__ import annotations

from collections.abc import Callable

from ..helpers import ControllerProc, NodeProc, wait_until


def test_a_clean_stop_of_a_real_node_logs_no_error_and_no_traceback(
        controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    node = make_node("n-stop")
    sidecar = node.sidecar_pid()
    assert sidecar is not None
    assert node.terminate() == 0
    wait_until(lambda: node.sidecar_pid() is None, what="the sidecar to stop")
    wait_until(lambda: controller.api().liveness("n-stop") == "offline", what="offline")
    logs = {name: (node.state_dir / name).read_text() for name in ("node.log", "sidecar.log")}
    assert "sidecar stopped" in logs["sidecar.log"]  # the log is complete, not cut short
    for name, text in logs.items():
        assert "Traceback" not in text, f"{name}:\n{text}"
        assert " ERROR " not in text, f"{name}:\n{text}"
