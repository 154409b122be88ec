"""Roles, tokens, audit and node removal through the real CLI, with a real node process,
on SQLite and on PostgreSQL + NATS."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable

import pytest

from ..helpers import ControllerProc, NodeProc, tether_cmd, wait_until

pytestmark = pytest.mark.both_backends


def cli(controller: ControllerProc, *args: str, token: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TETHER_URL": controller.url,
           "TETHER_TOKEN": token or controller.token}
    return subprocess.run(tether_cmd(*args), capture_output=True, text=True, timeout=60,
                          env=env)


def test_a_viewer_token_reads_but_cannot_exec_and_a_revoked_one_is_refused(
        controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    make_node("n1")
    made = cli(controller, "token", "create", "--role", "viewer", "--name", "ci",
               "--ttl", "1h")
    assert made.returncode == 0, made.stderr
    viewer = made.stdout.strip()
    assert viewer.startswith("tok_") and "viewer" in made.stderr
    listed = cli(controller, "nodes", "list", "--json", token=viewer)
    assert listed.returncode == 0 and json.loads(listed.stdout)[0]["node_id"] == "n1"
    refused = cli(controller, "exec", "n1", "--", "true", token=viewer)
    assert refused.returncode == 1 and "forbidden" in refused.stderr, refused.stderr
    tokens = cli(controller, "token", "list", "--json")
    assert viewer not in tokens.stdout
    (ci,) = [t for t in json.loads(tokens.stdout) if t["name"] == "ci"]
    assert cli(controller, "token", "revoke", ci["token_id"]).returncode == 0
    gone = cli(controller, "nodes", "list", token=viewer)
    assert gone.returncode == 1 and "unauthorized" in gone.stderr
    audit = json.loads(cli(controller, "audit", "--json").stdout)["items"]
    refusal = next(a for a in audit if a["token_id"] == ci["token_id"] and a["status"])
    assert (refusal["action"], refusal["status"], refusal["role"]) == (
        "POST /api/v1/nodes/{node_id}/commands", 403, "viewer")
    assert any(a["action"] == "token.revoke" and a["target"] == ci["token_id"]
               for a in audit)


def test_deleting_a_node_stops_its_session_and_the_same_id_enrolls_and_comes_back(
        controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    node = make_node("n1")
    assert cli(controller, "nodes", "enable", "n1").stdout == "enabled n1\n"
    deleted = cli(controller, "nodes", "delete", "n1")
    assert deleted.returncode == 0, deleted.stderr
    assert "deleted n1 (its session was closed)" in deleted.stdout
    wait_until(lambda: not node.alive(), what="the node to stop on 4403")
    listed = json.loads(cli(controller, "nodes", "list", "--json").stdout)
    assert [n["node_id"] for n in listed] == []
    node.enroll(controller)
    node.start()
    api = controller.api()
    wait_until(lambda: api.liveness("n1") == "online", what="n1 online again")
    ran = cli(controller, "exec", "n1", "--", "echo", "back")
    assert (ran.returncode, ran.stdout) == (0, "back\n"), ran.stderr


def test_join_tokens_are_listed_and_revoked_from_the_cli(controller: ControllerProc) -> None:
    made = cli(controller, "join-token", "create", "--uses", "2", "--json")
    assert made.returncode == 0, made.stderr
    secret, token_id = json.loads(made.stdout)["token"], json.loads(made.stdout)["token_id"]
    listed = cli(controller, "join-token", "list")
    assert token_id in listed.stdout and secret not in listed.stdout
    assert cli(controller, "join-token", "revoke", token_id).returncode == 0
    assert token_id not in cli(controller, "join-token", "list").stdout
