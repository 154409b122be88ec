"""`tether rollout start|status|list|pause|resume|abort` against a real controller (its node
offline: the offer waits queued), and the ``--ring`` flag's forms."""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest

from tether.cli.client import CliError
from tether.cli.rollout import parse_ring

from ..helpers import ControllerProc, tether_cmd
from .bundlefiles import make_bundle


def tether(ctl: ControllerProc, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tether_cmd(*args, "--url", ctl.url, "--token", ctl.token),
                          capture_output=True, text=True, timeout=60)


def test_a_ring_is_a_cumulative_percent_or_a_list_of_nodes() -> None:
    assert parse_ring("canary:10") == {"name": "canary", "percent": 10.0}
    assert parse_ring("half:50%") == {"name": "half", "percent": 50.0}
    assert parse_ring("pick:n1,n2") == {"name": "pick", "nodes": ["n1", "n2"]}
    assert parse_ring("one:n1") == {"name": "one", "nodes": ["n1"]}
    assert parse_ring("digits:42,") == {"name": "digits", "nodes": ["42"]}
    for bad in ("canary", ":10", "canary:"):
        with pytest.raises(CliError):
            parse_ring(bad)


def test_start_status_pause_resume_abort_and_list(controller: ControllerProc) -> None:
    with httpx.Client(base_url=controller.url, timeout=10, headers={
            "Authorization": f"Bearer {controller.token}"}) as http:
        token = http.post("/api/v1/join-tokens", json={"uses": 1, "labels": {"app": "web"}})
        resp = http.post("/v1/edge/enroll", json={
            "join_token": token.json()["token"], "node_id": "n1",
            "public_key": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"})
        assert resp.status_code == 201, resp.text
        resp = http.post("/api/v1/bundles", content=make_bundle("web", 1),
                         headers={"Content-Type": "application/octet-stream"})
        assert resp.status_code == 201, resp.text
    started = tether(controller, "rollout", "start", "--bundle", "web", "--version", "1",
                     "--selector", "app=web", "--ring", "all:100", "--on-failure",
                     "rollback", "--json")
    assert started.returncode == 0, started.stderr
    view = json.loads(started.stdout)
    rid = view["rollout_id"]
    assert view["state"] == "running" and view["rings"][0]["percent"] == 100
    assert view["on_failure"] == "rollback" and set(view["nodes"]) == {"n1"}
    status = tether(controller, "rollout", "status", rid)
    assert status.returncode == 0, status.stderr
    assert rid in status.stdout and "running" in status.stdout and "n1" in status.stdout
    paused = tether(controller, "rollout", "pause", rid)
    assert paused.returncode == 0 and "paused" in paused.stdout
    assert '"check": "operator"' in paused.stdout  # the why, machine-readable
    resumed = tether(controller, "rollout", "resume", rid, "--json")
    assert json.loads(resumed.stdout)["state"] == "running"
    aborted = tether(controller, "rollout", "abort", rid, "--json")
    assert json.loads(aborted.stdout)["state"] == "aborted"
    again = tether(controller, "rollout", "abort", rid)
    assert again.returncode != 0 and "aborted" in again.stderr
    listed = tether(controller, "rollout", "list", "--json")
    assert [r["rollout_id"] for r in json.loads(listed.stdout)] == [rid]
    table = tether(controller, "rollout", "list")
    assert rid in table.stdout and "web 1" in table.stdout
    refused = tether(controller, "rollout", "start", "--bundle", "web", "--version", "1",
                     "--ring", "all:250")
    assert refused.returncode != 0 and "percent" in refused.stderr
    missing = tether(controller, "rollout", "start", "--bundle", "web", "--version", "9",
                     "--ring", "all:100")
    assert missing.returncode != 0 and "not published" in missing.stderr
