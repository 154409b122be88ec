"""One controller on PostgreSQL and NATS, end to end (real controller and node processes):
the core of what the SQLite controller does, on the cluster's engines. A node enrolls and
comes online, `exec` and `diag.ping` commands run with their statuses and output, the session
history names the replica, and after a restart of the controller the node is back and a
command queued meanwhile runs exactly once."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tether.protocol.frames import TERMINAL_STATES

from ..helpers import Api, ControllerProc, NodeProc, metric, tether_cmd, wait_until


def finished(api: Api, command_id: str) -> dict[str, Any]:
    return wait_until(lambda: (c := api.command(command_id))["state"] in TERMINAL_STATES
                      and c, what=f"{command_id} to finish")


def test_exec_and_diag_ping_run_with_statuses_and_output_on_postgresql_and_nats(
        controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    make_node("n-pg")
    api = controller.api()
    cmd = api.submit("n-pg", "exec", {"argv": ["sh", "-c", "echo hello; echo oops >&2"]})
    done = finished(api, cmd["command_id"])
    assert done["state"] == "succeeded", done
    assert [e["state"] for e in done["timeline"]] == ["queued", "delivered", "running",
                                                      "succeeded"]
    logs = api.get(f"/api/v1/commands/{cmd['command_id']}/logs").json()
    out = {(item["source"], item["data"]) for item in logs["items"]}
    assert ("stdout", "hello\n") in out and ("stderr", "oops\n") in out
    ping = finished(api, api.submit("n-pg", "diag.ping")["command_id"])
    assert ping["state"] == "succeeded"
    assert ping["result"]["received_ms"] <= ping["result"]["sent_ms"]
    cli = subprocess.run(tether_cmd("exec", "--url", controller.url, "--token",
                                    controller.token, "n-pg", "--", "echo", "hi"),
                         capture_output=True, text=True, timeout=60)
    assert (cli.returncode, cli.stdout) == (0, "hi\n"), cli.stderr
    sessions = api.get("/api/v1/nodes/n-pg/sessions").json()["items"]
    assert [s["replica_id"] for s in sessions] == ["r-a"]
    diag = api.get("/api/v1/diag")
    assert diag.status_code == 200, diag.text
    cluster = diag.json()["cluster"]
    assert cluster["leader"] is True and cluster["nats"]["connected"] == 1
    table = subprocess.run(tether_cmd("diag", "controller", "--url", controller.url,
                                      "--token", controller.token),
                           capture_output=True, text=True, timeout=60)
    assert "cluster     leader; NATS connected, 0 reconnects" in table.stdout, table
    metrics = api.get("/metrics")
    assert metrics.status_code == 200
    assert metric(metrics.text, "tether_leader") == 1  # alone: it leads
    assert metric(metrics.text, "tether_nats_connected") == 1
    assert metric(metrics.text, "tether_nats_published_total") > 0  # the events above


def test_after_a_controller_restart_the_node_is_back_and_a_queued_command_runs_once(
        controller: ControllerProc, make_node: Callable[..., NodeProc], tmp_path: Path
        ) -> None:
    make_node("n-back")
    api = controller.api()
    assert controller.terminate() == 0
    marker = tmp_path / "marker"
    controller.start()  # same port, data dir (replica id) and database
    api = controller.api()
    cmd = api.submit("n-back", "exec", {"argv": ["sh", "-c", f"echo once >> {marker}"]})
    wait_until(lambda: api.liveness("n-back") == "online", what="n-back online again")
    done = finished(api, cmd["command_id"])
    assert done["state"] == "succeeded", done
    assert marker.read_text().split() == ["once"]
    sessions = api.get("/api/v1/nodes/n-back/sessions").json()["items"]
    assert len(sessions) == 2 and {s["replica_id"] for s in sessions} == {"r-a"}
    assert sum(s["closed_at"] is None for s in sessions) == 1  # one live session only
