"""cli/app_deploy.py against a scripted controller (no sockets): which version is deployed,
usage errors before anything is sent, and Rule 1/Rule 2 of the order of the commands."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest

from tether.cli.app_deploy import DeployFailed, deploy, resolve_version
from tether.cli.client import CliError
from tether.cli.main import build_parser

SHA = "ab" * 32


class FakeApi:
    """A controller whose nodes, bundles and commands a test sets; commands end as
    ``outcomes`` says, in order of submission. Records every POST."""

    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}
        self.published: dict[tuple[str, int], dict[str, Any]] = {}
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.outcomes: list[dict[str, Any]] = []
        self.commands: dict[str, dict[str, Any]] = {}

    def node(self, node_id: str, *, bundles: dict[str, Any] | None = None,
             liveness: str = "online") -> None:
        self.nodes[node_id] = {"node_id": node_id, "liveness": liveness,
                               "session": {"session_id": "s"}, "bundles": bundles or {}}

    def publish(self, name: str, version: int, kind: str = "app") -> None:
        self.published[(name, version)] = {"name": name, "version": version, "kind": kind,
                                           "sha256": SHA, "size": 100 + version}

    def get(self, path: str, **kw: Any) -> Any:
        parts = path.strip("/").split("/")
        if parts[2] == "nodes":
            if parts[3] not in self.nodes:
                raise CliError(f"node {parts[3]!r} is not enrolled (not_found, HTTP 404)")
            return self.nodes[parts[3]]
        if parts[2] == "bundles" and len(parts) == 3:
            name = kw["params"]["name"]
            items = sorted((b for (n, _), b in self.published.items() if n == name),
                           key=lambda b: -b["version"])
            return {"items": items[:kw["params"]["limit"]]}
        if parts[2] == "bundles":
            key = (parts[3], int(parts[4]))
            if key not in self.published:
                raise CliError(f"bundle {key[0]} version {key[1]} is not published "
                               "(not_found, HTTP 404)")
            return self.published[key]
        return self.commands[parts[3]]

    def post(self, path: str, **kw: Any) -> Any:
        body = kw["json"]
        self.posts.append((path, body))
        command_id = f"c_{len(self.posts)}"
        node_id = path.split("/")[4]
        outcome = self.outcomes.pop(0) if self.outcomes else {"state": "succeeded"}
        self.commands[command_id] = {"command_id": command_id, "error": None, "result": None,
                                     **outcome}
        if body["kind"] == "update.now" and outcome["state"] == "succeeded":
            self.nodes[node_id]["bundles"][body["args"]["name"]] = {
                "active": body["args"]["version"], "state": "healthy",
                "version": body["args"]["version"]}
        return {"command_id": command_id, "state": "queued"}


def args_of(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["app", "deploy", *argv])


def run(api: FakeApi, *argv: str) -> tuple[Any, list[str]]:
    lines: list[str] = []
    return deploy(api, args_of(*argv), lines.append, sleep=lambda s: None), lines


def test_the_version_is_the_flag_else_the_source_nodes_active_else_the_newest() -> None:
    api = FakeApi()
    api.node("a", bundles={"web": {"active": 3, "state": "healthy"}})
    api.node("b")
    for v in (2, 3, 5):
        api.publish("web", v)
    assert resolve_version(api, "web", version=4, from_node="a") == 4
    assert resolve_version(api, "web", version=None, from_node="a") == 3
    assert resolve_version(api, "web", version=None, from_node=None) == 5
    with pytest.raises(CliError, match="reports no active version of bundle 'web'"):
        resolve_version(api, "web", version=None, from_node="b")
    with pytest.raises(CliError, match="no bundle named 'api' is published"):
        resolve_version(api, "api", version=None, from_node=None)


@pytest.mark.parametrize(("argv", "message", "exit_code"), [
    (["Web", "--to", "b"], "bad bundle name 'Web'", 2),
    (["web", "--to", "a", "--from", "a"], "name the same node", 2),
    (["web", "--to", "b", "--probation-s", "-1"], "--probation-s must be", 2),
    (["web", "--to", "b", "--timeout-s", "0"], "--timeout-s must be positive", 2),
    (["web", "--to", "b", "--version", "0"], "--version must be at least 1", 2),
    (["web", "--to", "b", "--from", "c", "--version", "2"], "nothing to migrate", 2),
    (["web", "--to", "nope"], "node 'nope' is not enrolled", 1),
    (["web", "--to", "b", "--version", "9"], "version 9 is not published", 1),
    (["rt", "--to", "b"], "is a runtime bundle", 2)])
def test_bad_arguments_fail_before_any_command_is_sent(argv: list[str], message: str,
                                                       exit_code: int) -> None:
    api = FakeApi()
    api.node("a", bundles={"web": {"active": 1}})
    api.node("b")
    api.node("c")
    api.publish("web", 2)
    api.publish("rt", 1, kind="runtime")
    with pytest.raises(CliError) as info:
        run(api, *argv)
    assert info.value.exit_code == exit_code and message in str(info.value)
    assert api.posts == []


def test_with_from_the_stop_is_sent_only_after_the_target_succeeded_and_is_connected() -> None:
    api = FakeApi()
    api.node("a", bundles={"web": {"active": 2, "state": "healthy"}})
    api.node("b")
    api.publish("web", 2)
    result, lines = run(api, "web", "--to", "b", "--from", "a", "--probation-s", "1")
    assert [(p.split("/")[4], body["kind"]) for p, body in api.posts] == [
        ("b", "update.now"), ("a", "bundle.stop")]
    offer = api.posts[0][1]["args"]
    assert (offer["name"], offer["version"], offer["sha256"], offer["size"],
            offer["probation_s"]) == ("web", 2, SHA, 102, 1.0)
    assert api.posts[1][1]["args"] == {"name": "web"}
    assert result.ok and result.update["command_id"] == "c_1"
    assert result.stop is not None and result.stop["command_id"] == "c_2"
    assert lines[0] == "offered web version 2 to b: update.now c_1"
    assert "stopping web on a: bundle.stop c_2" in lines


@pytest.mark.parametrize("outcome", [
    {"state": "failed", "error": "rejected: untrusted_key: signed by no trusted key"},
    {"state": "rejected", "error": "rejected by policy: kind 'update.now' is in deny_kinds"},
    {"state": "running"}])
def test_a_target_that_does_not_turn_healthy_leaves_the_source_running(
        outcome: dict[str, Any]) -> None:
    api = FakeApi()
    api.node("a", bundles={"web": {"active": 2}})
    api.node("b")
    api.publish("web", 2)
    api.outcomes = [outcome]
    ticks = iter(range(10_000))
    with pytest.raises(DeployFailed) as info:
        deploy(api, args_of("web", "--to", "b", "--from", "a", "--timeout-s", "5"),
               lambda line: None, sleep=lambda s: None, clock=lambda: float(next(ticks)))
    assert [body["kind"] for _, body in api.posts] == ["update.now"]
    message = str(info.value)
    assert message.endswith("a's copy is left running")
    assert (outcome.get("error") or "within 5 s") in message
    assert info.value.exit_code == 1 and info.value.deploy.stop is None


def test_a_target_healthy_but_not_connected_is_not_enough_to_stop_the_source() -> None:
    api = FakeApi()
    api.node("a", bundles={"web": {"active": 2}})
    api.node("b", liveness="offline")
    api.publish("web", 2)
    ticks = iter(range(10_000))
    with pytest.raises(DeployFailed, match="does not see it connected"):
        deploy(api, args_of("web", "--to", "b", "--from", "a", "--timeout-s", "5"),
               lambda line: None, sleep=lambda s: None, clock=lambda: float(next(ticks)))
    assert [body["kind"] for _, body in api.posts] == ["update.now"]


def test_the_cli_prints_progress_and_the_command_ids_and_exits_1_naming_the_reason(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from tether.cli import app_deploy
    from tether.cli.main import main

    api = FakeApi()
    api.node("a", bundles={"web": {"active": 2}})
    api.node("b")
    api.publish("web", 2)
    monkeypatch.setattr(app_deploy, "api_from", lambda args: api)
    assert main(["app", "deploy", "web", "--to", "b", "--from", "a"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == ("deployed web version 2 to b, stopped on a (update.now c_1, "
                       "bundle.stop c_2)")
    assert "b: web version 2 healthy and connected" in out

    api.outcomes = [{"state": "failed", "error": "rolled_back: start_failed: exited 7"}]
    assert main(["app", "deploy", "web", "--to", "b", "--from", "a", "--json"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["update"]["error"] == "rolled_back: start_failed: exited 7"
    error = json.loads(captured.err.splitlines()[-1])["error"]
    assert error["code"] == "deploy_failed"
    assert "b: failed: rolled_back: start_failed: exited 7; a's copy is left running" \
        in error["message"]
