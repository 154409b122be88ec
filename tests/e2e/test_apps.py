"""Managed apps: restart policies with backoff, counted restarts, app output, the app.*
kinds, and the restart rule across runtime restarts (restarted, never adopted)."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tether.protocol.frames import TERMINAL_STATES

from ..helpers import ControllerProc, NodeProc, tether_cmd, wait_until

APPS = [
    {"name": "crasher", "argv": ["sh", "-c", "echo boot; sleep 0.2; exit 3"],
     "restart": "on-failure", "backoff_s": 0.2, "max_backoff_s": 1.0},
    {"name": "steady", "argv": ["sh", "-c", "while true; do echo tick; sleep 0.2; done"],
     "restart": "always"},
    {"name": "oneshot", "argv": ["true"], "restart": "on-failure"},
    {"name": "manual", "argv": ["sleep", "60"], "restart": "never", "autostart": False},
]


@pytest.fixture
def node(controller: ControllerProc, tmp_path: Path) -> Iterator[NodeProc]:
    n = NodeProc(tmp_path / "n-apps", "n-apps")
    n.enroll(controller)
    (n.state_dir / "apps.json").write_text(json.dumps(APPS))
    n.start()
    api = controller.api()
    wait_until(lambda: api.liveness("n-apps") == "online", what="online")
    yield n
    n.cleanup()


def run(controller: ControllerProc, kind: str, **args: object) -> dict[str, object]:
    api = controller.api()
    cmd = api.submit("n-apps", kind, args)
    return wait_until(lambda: (c := api.command(cmd["command_id"]))["state"]
                      in TERMINAL_STATES and c, what=kind)


def test_a_crashing_app_is_restarted_with_backoff_and_its_restarts_are_counted(
        controller: ControllerProc, node: NodeProc) -> None:
    api = controller.api()
    apps = wait_until(lambda: (a := api.node("n-apps")["apps"]) and
                      a["crasher"]["restarts"] >= 4 and a, timeout_s=60,
                      what="four restarts of the crashing app")
    assert apps["crasher"]["exit_code"] == 3
    assert apps["steady"]["state"] == "running" and apps["steady"]["restarts"] == 0
    assert (apps["oneshot"]["state"], apps["oneshot"]["exit_code"]) == ("exited", 0)
    assert apps["manual"]["state"] == "stopped"
    # Jittered exponential backoff: restart k waits within [0.5, 1] x min(0.2 * 2^k, 1.0).
    delays = [float(d) for d in re.findall(r"app exited; restarting \[app=crasher code=3 "
                                           r"delay_s=([\d.]+)\]", node.log())]
    assert len(delays) >= 4
    for k, delay in enumerate(delays[:4]):
        ceiling = min(0.2 * 2 ** k, 1.0)
        assert 0.5 * ceiling <= delay <= ceiling, (k, delays)
    out = api.get("/api/v1/nodes/n-apps/logs", params={"source": "steady"}).json()["items"]
    assert out and all(i["source"] == "steady" for i in out)
    assert "tick\n" in "".join(i["data"] for i in out)


def test_app_kinds_start_stop_restart_and_report_status(
        controller: ControllerProc, node: NodeProc) -> None:
    started = run(controller, "app.start", name="manual")
    assert (started["state"], started["result"]) == ("succeeded", {"started": True})
    status = run(controller, "app.status", name="manual")
    assert status["result"]["apps"]["manual"]["state"] == "running"
    restarted = run(controller, "app.restart", name="steady")
    assert restarted["state"] == "succeeded"
    stopped = run(controller, "app.stop", name="manual")
    assert stopped["result"] == {"stopped": True}
    api = controller.api()
    wait_until(lambda: api.node("n-apps")["apps"]["manual"]["state"] == "stopped",
               what="the stop reported")
    unknown = run(controller, "app.start", name="nope")
    assert unknown["state"] == "failed" and "no app named 'nope'" in unknown["error"]
    show = subprocess.run(tether_cmd("nodes", "show", "--url", controller.url, "--token",
                                     controller.token, "n-apps"),
                          capture_output=True, text=True, timeout=30)
    assert "steady running (restarts 1)" in show.stdout


def test_a_runtime_restart_restarts_the_apps_and_leaves_no_old_process(
        controller: ControllerProc, node: NodeProc) -> None:
    api = controller.api()
    old = wait_until(lambda: api.node("n-apps")["apps"]["steady"]["pid"], what="steady pid")
    out = subprocess.run(tether_cmd("node", "restart", "--state-dir", str(node.state_dir)),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    new = wait_until(lambda: (p := api.node("n-apps")["apps"]["steady"]["pid"]) and p != old
                     and p, timeout_s=30, what="steady started again")
    assert new != old
    assert not Path(f"/proc/{old}").exists() or \
        "State:\tZ" in Path(f"/proc/{old}/status").read_text()
