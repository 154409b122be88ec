"""The user-facing paths: `tether demo` then flag-less operator commands in the same
directory, and a controller that is stopped with SIGTERM and started again."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from ..helpers import ControllerProc, NodeProc, Proc, tether_cmd, wait_until

# The demo is SQLite by definition; the tests of join tokens and of a controller's graceful
# stop, kept in the store, run on both backends (tests/e2e/conftest.py).
both_backends = pytest.mark.both_backends


def test_demo_brings_up_an_online_node_and_exec_needs_no_flags(tmp_path: Path) -> None:
    demo = Proc(tether_cmd("demo", "--port", "0", "--dir", str(tmp_path / ".tether")),
                tmp_path / "demo.log")
    demo.argv = tether_cmd("demo", "--port", "0")
    demo_cwd = tmp_path
    demo.proc = subprocess.Popen(demo.argv, cwd=demo_cwd, stdout=open(demo.log_path, "wb"),  # noqa: SIM115
                                 stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: "Tether demo is running" in demo.log() or not demo.alive(),
                   timeout_s=60, what="the demo to come up")
        assert demo.alive(), demo.log()
        token = (tmp_path / ".tether/controller/admin.token").read_text().strip()
        assert token in demo.log()  # the demo prints the admin token
        listed = subprocess.run(tether_cmd("nodes", "list", "--json"), cwd=demo_cwd,
                                capture_output=True, text=True, timeout=30)
        assert listed.returncode == 0, listed.stderr
        nodes = json.loads(listed.stdout)
        assert [(n["node_id"], n["liveness"]) for n in nodes] == [("demo-node", "online")]
        hi = subprocess.run(tether_cmd("exec", "demo-node", "--", "echo", "hi"), cwd=demo_cwd,
                            capture_output=True, text=True, timeout=60)
        assert (hi.returncode, hi.stdout) == (0, "hi\n"), hi.stderr
    finally:
        assert demo.proc is not None
        demo.proc.send_signal(signal.SIGINT)
        assert demo.proc.wait(timeout=30) == 0, demo.log()


def test_operator_commands_without_a_token_say_what_to_do(tmp_path: Path) -> None:
    out = subprocess.run(tether_cmd("nodes", "list"), cwd=tmp_path, capture_output=True,
                         text=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 2
    assert "no operator token" in out.stderr and "--token" in out.stderr


def test_operator_commands_against_a_dead_port_fail_in_one_line(tmp_path: Path) -> None:
    out = subprocess.run(tether_cmd("nodes", "list", "--url", "http://127.0.0.1:9",
                                    "--token", "x"), capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "cannot reach the controller" in out.stderr


@both_backends
def test_join_token_create_and_node_listing_print_tables_and_json(
        controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    flags = ["--url", controller.url, "--token", controller.token]
    made = subprocess.run(tether_cmd("join-token", "create", *flags, "--ttl", "10m",
                                     "--uses", "2", "--json"),
                          capture_output=True, text=True, timeout=30)
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["uses"] == 2
    make_node("n-table")
    table = subprocess.run(tether_cmd("nodes", "list", *flags), capture_output=True,
                           text=True, timeout=30)
    assert table.stdout.splitlines()[0].split()[:2] == ["NODE", "LIVENESS"]
    assert "n-table" in table.stdout and "online" in table.stdout
    show = subprocess.run(tether_cmd("nodes", "show", *flags, "n-table"), capture_output=True,
                          text=True, timeout=30)
    assert "liveness      online" in show.stdout
    unknown = subprocess.run(tether_cmd("nodes", "show", *flags, "nope"), capture_output=True,
                             text=True, timeout=30)
    assert unknown.returncode == 1 and "not enrolled" in unknown.stderr


@both_backends
def test_a_controller_stopped_with_sigterm_closes_sessions_with_1001_and_nodes_come_back(
        controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    make_node("n-restart")
    api = controller.api()
    before = api.node("n-restart")["session"]["session_id"]
    assert controller.terminate() == 0
    controller.start()
    api = controller.api()
    wait_until(lambda: api.liveness("n-restart") == "online", timeout_s=40,
               what="the node to reconnect after the restart")
    node = api.node("n-restart")
    assert node["session"]["session_id"] != before
    assert node["session"]["resumed"] is True
    sessions = api.get("/api/v1/nodes/n-restart/sessions").json()["items"]
    old = next(s for s in sessions if s["session_id"] == before)
    assert old["close_code"] == 1001


@both_backends
def test_enrolling_with_a_used_token_fails_with_the_controllers_reason(
        controller: ControllerProc, tmp_path: Path) -> None:
    token = controller.api().post("/api/v1/join-tokens", json={"uses": 1}).json()["token"]
    args = ["node", "enroll", "--controller", controller.url, "--token", token]
    first = subprocess.run(tether_cmd(*args, "--node-id", "n-a", "--state-dir",
                                      str(tmp_path / "a")), capture_output=True, text=True,
                           timeout=30)
    assert first.returncode == 0, first.stderr
    second = subprocess.run(tether_cmd(*args, "--node-id", "n-b", "--state-dir",
                                       str(tmp_path / "b")), capture_output=True, text=True,
                            timeout=30)
    assert second.returncode == 1
    assert "used up" in second.stderr and "401" in second.stderr


def test_a_closed_pipe_is_not_an_error(
        controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    import os

    node = make_node("n-pipe")
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the CLI writes a byte (like `| head`)
    try:
        out = subprocess.run(tether_cmd("node", "status", "--state-dir", str(node.state_dir)),
                             stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=30)
    finally:
        os.close(write_end)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr
