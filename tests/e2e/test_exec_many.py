"""``tether exec -l`` (a job) against a real controller and two real node processes: each
node's output comes back prefixed with its id, a summary table ends it, and the exit status
says whether every node succeeded; ``tether jobs`` and ``nodes list -l`` read the same."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..helpers import ControllerProc, NodeProc, tether_cmd, wait_until


@pytest.fixture
def lab(tmp_path: Path, controller: ControllerProc) -> Iterator[list[NodeProc]]:
    """lab-a and lab-b (env=lab) online, and other-c (env=prod) online."""
    nodes = []
    try:
        for node_id, env in (("lab-a", "lab"), ("lab-b", "lab"), ("other-c", "prod")):
            node = NodeProc(tmp_path / node_id, node_id)
            nodes.append(node)
            node.enroll(controller, labels={"env": env})
            node.start()
        api = controller.api()
        for node in nodes:
            wait_until(lambda n=node: api.liveness(n.node_id) == "online",  # type: ignore[misc]
                       what=f"{node.node_id} online")
        yield nodes
    finally:
        for node in nodes:
            node.cleanup()


def cli(controller: ControllerProc, *argv: str) -> subprocess.CompletedProcess[str]:
    noun, rest = argv[0], argv[1:]
    if noun in ("jobs", "nodes"):
        verb, rest = rest[0], rest[1:]
        head = [noun, verb]
    else:
        head = [noun]
    return subprocess.run(tether_cmd(*head, "--url", controller.url, "--token",
                                     controller.token, *rest),
                          capture_output=True, text=True, timeout=60)


def test_exec_by_label_prefixes_each_nodes_output_and_ends_with_a_summary(
        controller: ControllerProc, lab: list[NodeProc]) -> None:
    done = cli(controller, "exec", "-l", "env=lab", "--", "sh", "-c",
               'echo "hello from $(hostname)"; echo line2')
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for node_id in ("lab-a", "lab-b"):
        assert [ln for ln in lines if ln.startswith(f"{node_id} | ")] == [
            f"{node_id} | hello from {socket.gethostname()}",
            f"{node_id} | line2"]
    assert not any(ln.startswith("other-c") for ln in lines)
    table = done.stderr.splitlines()
    assert table[1].split()[:2] == ["NODE", "RESULT"]
    assert [row.split()[:2] for row in table[2:4]] == [["lab-a", "succeeded"],
                                                        ["lab-b", "succeeded"]]
    assert "2 of 2 node(s) ok" in done.stderr


def test_exec_by_label_exits_non_zero_when_a_node_fails_and_jobs_show_agrees(
        controller: ControllerProc, lab: list[NodeProc]) -> None:
    done = cli(controller, "exec", "-l", "env=lab", "--", "sh", "-c", "exit 3")
    assert done.returncode == 1
    assert "0 of 2 node(s) ok" in done.stderr
    jobs = json.loads(cli(controller, "jobs", "list", "--json").stdout)
    job = json.loads(cli(controller, "jobs", "show", jobs[0]["job_id"], "--json").stdout)
    assert job["state"] == "done" and job["summary"] == {"failed": 2}
    shown = cli(controller, "jobs", "show", jobs[0]["job_id"])
    assert "lab-a" in shown.stdout and "failed" in shown.stdout


def test_nodes_list_filters_by_label_and_liveness_on_the_controller(
        controller: ControllerProc, lab: list[NodeProc]) -> None:
    listed = json.loads(cli(controller, "nodes", "list", "-l", "env=lab", "--liveness",
                            "online", "--json").stdout)
    assert sorted(n["node_id"] for n in listed) == ["lab-a", "lab-b"]
    assert json.loads(cli(controller, "nodes", "list", "--liveness", "offline",
                          "--json").stdout) == []
