"""Migration end to end (issue 15 "Done when": ``app deploy --from A --to B`` stops A's copy
only after B's is healthy): a real controller and three real nodes; the CLI run as an
operator would; the order read back from the controller's commands and node events."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from tether.cli.bundle import load_public_key, trust
from tether.protocol.frames import TERMINAL_STATES

from ..helpers import Api, ControllerProc, NodeProc, tether_cmd, wait_until
from .test_bundle_updates import STEADY, bundle, bundles, make_key, offer, publish


def at(value: str) -> datetime:
    return datetime.fromisoformat(value)


def deploy(controller: ControllerProc, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        tether_cmd("app", "deploy", *argv, "--probation-s", "1", "--timeout-s", "60",
                   "--url", controller.url, "--token", controller.token),
        capture_output=True, text=True, timeout=120)


def events(api: Api, node_id: str, kind: str) -> list[dict[str, Any]]:
    """The node's stored events of ``kind``, oldest first."""
    items = api.get(f"/api/v1/nodes/{node_id}/events", params={"limit": 1000}).json()["items"]
    return sorted((e for e in items if e["kind"] == kind), key=lambda e: e["id"])


def run_and_wait(api: Api, node_id: str, kind: str, args: dict[str, Any]) -> dict[str, Any]:
    cmd = api.submit(node_id, kind, args)
    return wait_until(lambda: (c := api.command(cmd["command_id"]))["state"]
                      in TERMINAL_STATES and c, timeout_s=30, what=f"{kind} to end")


def test_deploy_from_a_to_b_stops_a_only_after_b_is_healthy_and_never_when_b_fails(
        controller: ControllerProc, make_node: Callable[..., NodeProc],
        tmp_path: Path) -> None:
    api = controller.api()
    a, b = make_node("n-a"), make_node("n-b")
    make_node("n-c")
    key, pub = make_key(tmp_path, "pub")
    for node in (a, b):  # n-c trusts no publisher: it rejects every bundle
        trust(node.state_dir, load_public_key(pub), None)
    v1 = publish(api, bundle(tmp_path, key, "web", 1, STEADY))
    assert offer(api, "n-a", v1, probation_s=0.5)["state"] == "succeeded"
    wait_until(lambda: api.node("n-a")["apps"].get("web", {}).get("state") == "running",
               what="web running on n-a")

    # A target that rejects the bundle: A's copy is left running, exit 1 with the reason.
    refused = deploy(controller, "web", "--from", "n-a", "--to", "n-c")
    assert refused.returncode == 1, refused
    assert "did not turn healthy on n-c: failed: rejected: untrusted_key:" in refused.stderr
    assert "n-a's copy is left running" in refused.stderr
    assert not [x for x in api.get("/api/v1/commands", params={"node_id": "n-a"}).json()[
        "items"] if x["kind"] == "bundle.stop"]
    assert api.node("n-a")["apps"]["web"]["state"] == "running"

    # The migration: B healthy and connected first, then A stopped.
    moved = deploy(controller, "web", "--from", "n-a", "--to", "n-b", "--json")
    assert moved.returncode == 0, moved
    report = json.loads(moved.stdout)
    assert (report["ok"], report["version"], report["update"]["state"],
            report["stop"]["state"]) == (True, 1, "succeeded", "succeeded")
    assert report["stop"]["result"] == {"name": "web", "version": 1, "state": "stopped",
                                        "was_running": True}
    assert f"update.now {report['update']['command_id']}" in moved.stderr
    assert f"bundle.stop {report['stop']['command_id']}" in moved.stderr
    update = api.command(report["update"]["command_id"])
    stop = api.command(report["stop"]["command_id"])
    assert (update["node_id"], stop["node_id"]) == ("n-b", "n-a")
    audited = {(x["action"], x["target"]) for x in api.get(
        "/api/v1/audit", params={"limit": 1000}).json()["items"]}
    assert {("command.submit", update["command_id"]),
            ("command.submit", stop["command_id"])} <= audited
    b_done = at(update["timeline"][-1]["at"])
    assert update["timeline"][-1]["state"] == "succeeded"
    assert at(stop["created_at"]) >= b_done  # the stop was created after B's success
    healthy = [e for e in events(api, "n-b", "bundle.status")
               if e["data"]["state"] == "healthy" and e["data"]["name"] == "web"]
    b_healthy = at(healthy[-1]["at"])
    a_apps = events(api, "n-a", "apps")
    before = [e for e in a_apps if at(e["at"]) <= b_healthy]
    assert before and before[-1]["data"]["web"]["state"] == "running"  # A ran meanwhile
    wait_until(lambda: api.node("n-a")["apps"]["web"]["state"] == "stopped",
               what="web stopped on n-a")
    stopped_at = [at(e["at"]) for e in events(api, "n-a", "apps")
                  if e["data"].get("web", {}).get("state") == "stopped"]
    assert stopped_at and min(stopped_at) >= b_healthy
    assert api.node("n-b")["apps"]["web"]["state"] == "running"
    assert bundles(a)["web"]["state"] == "stopped"

    # A's runtime restarts: the app is not started again.
    a.terminate()
    a.start()
    wait_until(lambda: api.liveness("n-a") == "online", timeout_s=30, what="n-a back")
    table = run_and_wait(api, "n-a", "app.status", {"name": "web"})
    assert table["state"] == "succeeded", table
    assert table["result"]["apps"]["web"]["state"] == "stopped"
    assert table["result"]["apps"]["web"]["pid"] is None
    assert bundles(a)["web"] == {**bundles(a)["web"], "active": 1, "state": "stopped"}

    # Hostile bundle.stop args are rejected naming the field; a new offer runs it again.
    bad = run_and_wait(api, "n-a", "bundle.stop", {"name": "../web"})
    assert bad["state"] == "rejected" and "'name'" in bad["error"], bad
    unknown = run_and_wait(api, "n-a", "bundle.stop", {"name": "nope"})
    assert unknown["state"] == "failed"
    assert unknown["error"] == "no version of bundle 'nope' is active on this node"
    assert offer(api, "n-a", v1, probation_s=0.5)["state"] == "succeeded"
    wait_until(lambda: api.node("n-a")["apps"]["web"]["state"] == "running",
               what="web running on n-a again")
