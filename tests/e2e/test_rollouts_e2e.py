"""Rollouts with real nodes (issue 15 "Done when"): a real controller and three real
``tether node run`` processes on loopback, each trusting one publisher key; bundles built
with cli/bundle.py and published through the operator API (as tests/e2e/test_bundle_updates.py
does); rollouts started with ``tether rollout start`` or ``POST /api/v1/rollouts``. The
order of things is read from what the controller recorded (the commands' timelines, the
rollout's view), never from timing.

The happy path and the automatic rollback run on both backends (``both_backends``: the
engine's compare-and-set moves and the node rows it judges by live in the store); the
vanished node and the rollback offers, the same engine on the same store code, on SQLite
only, for their cost (three node processes each)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tether.cli.bundle import load_public_key, trust
from tether.protocol.frames import TERMINAL_STATES

from ..helpers import Api, ControllerProc, NodeProc, tether_cmd, wait_until
from .test_bundle_updates import CRASH, STEADY, bundle, bundles, make_key, publish

WEB = {"app": "web"}
NODES = ("n-a", "n-b", "n-c")


class Fleet:
    """Three enrolled nodes labelled app=web (plus one that is not: ``n-other``), each
    trusting the publisher key ``key``; ``nodes[id]`` is started unless told otherwise."""

    def __init__(self, controller: ControllerProc, tmp_path: Path) -> None:
        self.controller, self.tmp = controller, tmp_path
        self.api: Api = controller.api()
        self.key, pub = make_key(tmp_path, "pub")
        self.nodes: dict[str, NodeProc] = {}
        for node_id, labels in (*((n, WEB) for n in NODES), ("n-other", {"app": "db"})):
            node = NodeProc(tmp_path / node_id, node_id)
            node.enroll(controller, labels=labels)
            trust(node.state_dir, load_public_key(pub), None)
            self.nodes[node_id] = node

    def start(self, *node_ids: str) -> None:
        for node_id in node_ids:
            self.nodes[node_id].start()
        for node_id in node_ids:
            wait_until(lambda n=node_id: self.api.liveness(n) == "online", timeout_s=30,
                       what=f"{node_id} online")

    def publish(self, version: int, script: str = STEADY, restart: str = "always"
                ) -> dict[str, Any]:
        return publish(self.api, bundle(self.tmp, self.key, "web", version, script, restart))

    def rollout(self, **body: Any) -> dict[str, Any]:
        resp = self.api.post("/api/v1/rollouts", json={"bundle": "web", "selector": WEB,
                                                        **body})
        assert resp.status_code == 202, resp.text
        return resp.json()  # type: ignore[no-any-return]

    def view(self, rollout_id: str) -> dict[str, Any]:
        resp = self.api.get(f"/api/v1/rollouts/{rollout_id}")
        assert resp.status_code == 200, resp.text
        return resp.json()  # type: ignore[no-any-return]

    def until(self, rollout_id: str, what: str, cond: Any, timeout_s: float = 90
              ) -> dict[str, Any]:
        try:
            return wait_until(lambda: (v := self.view(rollout_id)) and cond(v) and v,
                              timeout_s=timeout_s, what=what)
        except AssertionError as exc:  # say where the rollout stood
            raise AssertionError(f"{exc}; the rollout: {self.view(rollout_id)}") from None

    def updates(self, node_id: str, version: int | None = None) -> list[dict[str, Any]]:
        """The ``update.now`` commands ``node_id`` was given (of ``version``), oldest first."""
        items = self.api.get("/api/v1/commands", params={"node_id": node_id,
                                                          "limit": 100}).json()["items"]
        full = [self.api.command(c["command_id"]) for c in items
                if c["kind"] == "update.now"]
        mine = [c for c in full if version is None or c["args"]["version"] == version]
        return sorted(mine, key=lambda c: c["created_at"])

    def app_running(self, node_id: str) -> bool:
        return self.api.node(node_id)["apps"].get("web", {}).get("state") == "running"


@pytest.fixture
def fleet(controller: ControllerProc, tmp_path: Path) -> Iterator[Fleet]:
    made = Fleet(controller, tmp_path)
    try:
        yield made
    finally:
        for node in made.nodes.values():
            node.cleanup()


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def ended_at(command: dict[str, Any]) -> datetime:
    (end,) = [e["at"] for e in command["timeline"] if e["state"] == "succeeded"]
    return at(end)


def healthy_reported_at(fleet: Fleet, node_id: str, rollout_id: str) -> datetime:
    """When the controller applied ``node_id``'s ``healthy`` bundle.status for the
    rollout (the node's event, stored in the same transaction the engine then reads)."""
    events = fleet.api.get(f"/api/v1/nodes/{node_id}/events",
                           params={"limit": 1000}).json()["items"]
    (when,) = [e["at"] for e in events if e["kind"] == "bundle.status"
               and e["data"].get("rollout_id") == rollout_id
               and e["data"].get("state") == "healthy"]
    return at(when)


def roll_v1_everywhere(fleet: Fleet) -> None:
    """Version 1 on every app=web node, through a one-ring rollout."""
    fleet.publish(1)
    rid = fleet.rollout(version=1, rings=[{"name": "all", "percent": 100}],
                        max_unavailable=3, probation_s=0.5)["rollout_id"]
    fleet.until(rid, "v1 everywhere", lambda v: v["state"] == "completed"
                and v["finished_at"] is not None)


@pytest.mark.both_backends
def test_three_nodes_in_two_rings_all_end_healthy_and_ring_two_waits_for_ring_one(
        controller: ControllerProc, fleet: Fleet) -> None:
    fleet.start(*fleet.nodes)
    fleet.publish(1)
    out = subprocess.run(tether_cmd(
        "rollout", "start", "--bundle", "web", "--version", "1", "--selector", "app=web",
        "--ring", "canary:n-a", "--ring", "rest:100", "--max-unavailable", "2",
        "--probation-s", "1", "--json"), capture_output=True, text=True, timeout=30,
        env={**os.environ, "TETHER_URL": controller.url, "TETHER_TOKEN": controller.token})
    assert out.returncode == 0, out.stderr
    started = json.loads(out.stdout)
    rid = started["rollout_id"]
    assert [(r["name"], r["size"]) for r in started["rings"]] == [("canary", 1), ("rest", 2)]
    assert set(started["nodes"]) == set(NODES)  # n-other is not selected

    done = fleet.until(rid, "completed", lambda v: v["state"] == "completed"
                       and v["finished_at"] is not None)
    assert done["why"] is None and done["counts"] == {"healthy": 3}
    for node_id in NODES:
        n = done["nodes"][node_id]
        assert (n["state"], n["version"], n["active"], n["connected"]) == (
            "healthy", 1, 1, True), (node_id, n)
        assert bundles(fleet.nodes[node_id])["web"]["active"] == 1
        wait_until(lambda n=node_id: fleet.app_running(n), what=f"the app on {node_id}")
    assert fleet.updates("n-other") == []

    # each command ends with a cmd.status queued just after its healthy bundle.status
    (canary,) = wait_until(lambda: (u := fleet.updates("n-a")) and all(
        c["state"] in TERMINAL_STATES for c in u) and u, what="n-a's offer to end")
    assert canary["state"] == "succeeded" and canary["args"]["rollout_id"] == rid
    healthy_at = healthy_reported_at(fleet, "n-a", rid)  # what the engine acts on
    for node_id in ("n-b", "n-c"):
        (later,) = wait_until(lambda n=node_id: (u := fleet.updates(n)) and all(
            c["state"] in TERMINAL_STATES for c in u) and u, what=f"{node_id}'s offer")
        assert later["state"] == "succeeded"
        assert at(later["created_at"]) >= healthy_at, (node_id, later, canary)


@pytest.mark.both_backends
def test_a_version_whose_app_exits_at_once_rolls_back_ring_one_and_never_reaches_ring_two(
        fleet: Fleet) -> None:
    fleet.start(*NODES)
    roll_v1_everywhere(fleet)
    fleet.publish(2, CRASH, restart="on-failure")
    rid = fleet.rollout(
        version=2, rings=[{"name": "canary", "nodes": ["n-a", "n-b"]},
                          {"name": "rest", "nodes": ["n-c"]}],
        max_unavailable=2, probation_s=5, failure_threshold=1,
        on_failure="rollback")["rollout_id"]

    halted = fleet.until(rid, "halted", lambda v: v["state"] == "halted"
                         and v["finished_at"] is not None)
    why = halted["why"]
    assert why["check"] == "failure_threshold", why
    assert sorted(why["nodes"]) == ["n-a", "n-b"]
    assert why["figures"] == {"failed": 2, "threshold": 1, "accepted": 0}
    for node_id in ("n-a", "n-b"):
        assert why["reasons"][node_id].startswith("rolled_back: start_failed: "), why
        n = halted["nodes"][node_id]
        assert (n["state"], n["code"], n["active"]) == ("rolled_back", "start_failed", 1)
        assert bundles(fleet.nodes[node_id])["web"]["active"] == 1
        wait_until(lambda n=node_id: fleet.app_running(n), what=f"v1 again on {node_id}")
        (offer,) = fleet.updates(node_id, 2)
        assert offer["error"].startswith("rolled_back: start_failed: "), offer
    assert halted["nodes"]["n-c"]["state"] == "skipped"
    assert fleet.updates("n-c", 2) == []  # ring 2 never received it
    assert bundles(fleet.nodes["n-c"])["web"]["active"] == 1


def test_a_ring_one_node_that_turned_healthy_and_vanished_holds_the_ring_until_it_returns(
        fleet: Fleet) -> None:
    fleet.start("n-a", "n-c")  # n-b is offline: its offer waits, so ring 1 cannot finish
    fleet.publish(1)
    rid = fleet.rollout(version=1, rings=[{"name": "canary", "nodes": ["n-a", "n-b"]},
                                          {"name": "rest", "nodes": ["n-c"]}],
                        max_unavailable=2, probation_s=0.5)["rollout_id"]
    fleet.until(rid, "n-a healthy", lambda v: v["nodes"]["n-a"]["state"] == "healthy")
    assert fleet.view(rid)["nodes"]["n-b"]["state"] == "offered"
    fleet.nodes["n-a"].kill_all9()  # gone without a goodbye, after reporting healthy
    wait_until(lambda: fleet.view(rid)["nodes"]["n-a"]["connected"] is False, timeout_s=30,
               what="the controller to see n-a gone")

    fleet.start("n-b")  # its queued offer arrives; it turns healthy
    held = fleet.until(rid, "n-b healthy, n-a still gone",
                       lambda v: v["nodes"]["n-b"]["state"] == "healthy"
                       and v["nodes"]["n-b"]["connected"])
    assert held["state"] == "running" and held["ring"]["index"] == 0, held
    assert held["waiting"]["nodes"] == ["n-a"] and held["waiting"]["not_connected"] == ["n-a"]
    assert held["nodes"]["n-a"]["state"] == "healthy"  # it said so; that is not enough
    n_b_offer = wait_until(lambda: (c := fleet.updates("n-b")[0])["state"] == "succeeded"
                           and c, what="n-b's offer to end")  # it ends after its report
    assert fleet.updates("n-c") == [], "ring 2 was offered while n-a was away"

    fleet.start("n-a")  # back: its bundle restored, healthy, connected on a new session
    done = fleet.until(rid, "completed", lambda v: v["state"] == "completed")
    (late,) = fleet.updates("n-c")
    sessions = fleet.api.get("/api/v1/nodes/n-a/sessions").json()["items"]
    back_at = max(at(s["opened_at"]) for s in sessions)
    # ring 2 was offered only once n-a was connected again, whenever we looked above
    assert at(late["created_at"]) > back_at > ended_at(n_b_offer), (late, sessions)
    assert done["nodes"]["n-c"]["state"] == "healthy"


# healthy on every node but n-b, where it exits at once (its cwd is inside the node's
# state dir, tmp_path/<node id>/bundles/...)
CRASH_ON_N_B = ('#!/bin/sh\ncase "$PWD" in */n-b/*) echo dying-on-n-b; exit 7;; esac\n'
                'echo hello-from-{name}-{version}\nexec sleep 120\n')


def test_on_failure_rollback_returns_the_rings_healthy_nodes_to_their_last_known_good(
        fleet: Fleet) -> None:
    fleet.start(*NODES)
    roll_v1_everywhere(fleet)
    fleet.publish(2, CRASH_ON_N_B, restart="on-failure")
    rid = fleet.rollout(  # one at a time, in list order: n-a turns healthy, then n-b fails
        version=2, rings=[{"name": "canary", "nodes": ["n-a", "n-b"]},
                          {"name": "rest", "nodes": ["n-c"]}],
        max_unavailable=1, probation_s=1, on_failure="rollback")["rollout_id"]

    halted = fleet.until(rid, "halted and rolled back", lambda v: v["state"] == "halted"
                         and v["finished_at"] is not None)
    assert halted["why"]["nodes"] == ["n-b"], halted["why"]
    assert halted["why"]["reasons"]["n-b"].startswith("rolled_back: start_failed: ")
    a, b = halted["nodes"]["n-a"], halted["nodes"]["n-b"]
    assert a["state"] == "healthy" and a["rollback"]["version"] == 1, a
    assert a["rollback"]["state"] == "healthy" and a["active"] == 1, a
    assert "rollback" not in b and b["active"] == 1, b  # it rolled back by itself
    # the command ends with the cmd.status queued after the healthy bundle.status
    back = wait_until(lambda: (c := fleet.api.command(a["rollback"]["command_id"]))[
        "state"] in TERMINAL_STATES and c, what="the rollback offer to end")
    assert back["state"] == "succeeded" and back["args"]["rollback"] is True, back
    for node_id in ("n-a", "n-b"):
        assert bundles(fleet.nodes[node_id])["web"]["active"] == 1
        wait_until(lambda n=node_id: fleet.app_running(n), what=f"v1 again on {node_id}")
    assert fleet.updates("n-c", 2) == [] and halted["nodes"]["n-c"]["state"] == "skipped"
