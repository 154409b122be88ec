"""End-to-end: real controller and node processes on loopback, killed and restarted for real.

The marker file proves execution counts: every command appends its own id to it, so an id
seen twice means a command ran twice.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tether.protocol.frames import TERMINAL_STATES

from ..helpers import Api, ControllerProc, NodeProc, tether_cmd, wait_until

pytestmark = pytest.mark.both_backends  # tests/e2e/conftest.py: SQLite, PostgreSQL + NATS


def marker_command(marker: Path, tag: str, gate: Path | None = None) -> dict[str, object]:
    """Append ``tag`` to ``marker``; with ``gate``, only once that file exists."""
    wait = f"while [ ! -e {gate} ]; do sleep 0.05; done; " if gate else ""
    return {"argv": ["sh", "-c", f"{wait}echo {tag} >> {marker}"]}


def counts(api: Api, node_id: str) -> dict[str, int]:
    resp = api.get("/api/v1/commands", params={"node_id": node_id, "limit": 1})
    resp.raise_for_status()
    return resp.json()["counts"]  # type: ignore[no-any-return]


def terminal_count(api: Api, node_id: str) -> int:
    return sum(n for state, n in counts(api, node_id).items() if state in TERMINAL_STATES)


def all_commands(api: Api, node_id: str) -> list[dict[str, object]]:
    resp = api.get("/api/v1/commands", params={"node_id": node_id, "limit": 10000})
    resp.raise_for_status()
    return resp.json()["items"]  # type: ignore[no-any-return]


def assert_exactly_once(api: Api, node_id: str, marker: Path, tags: list[str]) -> None:
    """Every command terminal; none ran twice; every success ran exactly once."""
    seen = Counter(marker.read_text().split()) if marker.exists() else Counter()
    doubled = {tag: n for tag, n in seen.items() if n > 1}
    assert not doubled, f"commands executed more than once: {doubled}"
    by_tag = {}
    for cmd in all_commands(api, node_id):
        argv = cmd["args"]["argv"]  # type: ignore[index]
        by_tag[argv[2].split("echo ")[-1].split()[0]] = cmd
    assert set(by_tag) == set(tags)
    for tag in tags:
        cmd = by_tag[tag]
        assert cmd["state"] in TERMINAL_STATES, f"{tag} ended {cmd['state']}"
        if cmd["state"] == "succeeded":
            assert seen[tag] == 1, f"{tag} succeeded but ran {seen[tag]} times"
        else:
            assert cmd["state"] == "failed" and "interrupted" in str(cmd["error"]), cmd


def start_marked_stream(api: Api, node_id: str, marker: Path, prefix: str,
                        count: int = 200) -> list[str]:
    """Submit ``count`` marker commands and return once 20 of them are terminal.

    Those from the 40th on wait for ``marker`` + ".gate" (the caller creates it after its
    kill), so the kill lands mid-stream however loaded the box is."""
    tags = [f"{prefix}{i}" for i in range(count)]
    gate = marker.with_name(marker.name + ".gate")
    for i, tag in enumerate(tags):
        api.submit(node_id, "exec", marker_command(marker, tag, gate if i >= 40 else None))
    wait_until(lambda: terminal_count(api, node_id) >= 20, what="20 commands done")
    return tags


def open_gate(marker: Path) -> None:
    """Let the gated commands of :func:`start_marked_stream` run."""
    marker.with_name(marker.name + ".gate").touch()


def test_a_command_queued_while_the_node_is_offline_runs_when_it_connects(
        controller: ControllerProc, make_node: Callable[..., NodeProc], tmp_path: Path) -> None:
    node = make_node("n-late", start=False)
    api = controller.api()
    assert api.liveness("n-late") == "offline"
    marker = tmp_path / "marker"
    cmd = api.submit("n-late", "exec", marker_command(marker, "late"))
    assert api.command(cmd["command_id"])["state"] == "queued"
    node.start()
    done = wait_until(lambda: (c := api.command(cmd["command_id"]))["state"] in TERMINAL_STATES
                      and c, what="queued command to finish")
    assert done["state"] == "succeeded", done
    assert [e["state"] for e in done["timeline"]] == ["queued", "delivered", "running",
                                                      "succeeded"]
    assert marker.read_text().split() == ["late"]


def test_kill_9_of_the_node_runtime_mid_stream_loses_no_status_and_runs_nothing_twice(
        controller: ControllerProc, make_node: Callable[..., NodeProc], tmp_path: Path) -> None:
    node = make_node("n-crash", extra=["--max-concurrent", "4"])
    api = controller.api()
    marker = tmp_path / "marker"
    tags = start_marked_stream(api, "n-crash", marker, "k")
    node.kill9()
    assert terminal_count(api, "n-crash") < 200, "the kill came too late to prove anything"
    open_gate(marker)
    node.start()
    wait_until(lambda: terminal_count(api, "n-crash") == 200, timeout_s=90,
               what="all 200 commands terminal after the restart")
    assert_exactly_once(api, "n-crash", marker, tags)


def test_kill_9_of_the_controller_mid_stream_loses_no_status_and_runs_nothing_twice(
        controller: ControllerProc, make_node: Callable[..., NodeProc], tmp_path: Path) -> None:
    make_node("n-ctl", extra=["--max-concurrent", "4"])
    api = controller.api()
    marker = tmp_path / "marker"
    tags = start_marked_stream(api, "n-ctl", marker, "c")
    done_before_kill = terminal_count(api, "n-ctl")
    controller.kill9()
    assert done_before_kill < 200, "the kill came too late to prove anything"
    open_gate(marker)
    controller.start()  # same port and data dir
    api = controller.api()
    wait_until(lambda: terminal_count(api, "n-ctl") == 200, timeout_s=90,
               what="all 200 commands terminal after the controller restart")
    assert_exactly_once(api, "n-ctl", marker, tags)
    assert all(c["state"] == "succeeded" for c in all_commands(api, "n-ctl"))
    # Online again (not asserted at one instant: with 3 s to stale, a loaded box that read
    # nothing of the node for 3 s just after the restart shows a true, passing 'stale').
    wait_until(lambda: api.node("n-ctl")["liveness"] == "online", timeout_s=30,
               what="the node online after the controller restart")
    assert api.node("n-ctl")["session"]["resumed"] is True


def test_a_second_session_for_the_same_node_supersedes_the_first_with_4409(
        controller: ControllerProc, make_node: Callable[..., NodeProc], tmp_path: Path) -> None:
    first = make_node("n-twin")
    api = controller.api()
    first_session = api.node("n-twin")["session"]["session_id"]
    # The same identity from another state dir (another machine with a copied key).
    twin_dir = tmp_path / "n-twin-copy"
    twin_dir.mkdir()
    for name in ("node.key", "node.json"):
        shutil.copy(first.state_dir / name, twin_dir / name)
    twin = NodeProc(twin_dir, "n-twin")
    twin.start()
    try:
        wait_until(lambda: not first.alive(), what="the first runtime to stop after 4409")
        assert first.proc is not None and first.proc.returncode == 1
        assert "4409" in first.log()
        wait_until(lambda: api.node("n-twin")["session"] and
                   api.node("n-twin")["session"]["session_id"] != first_session,
                   what="the new session to own the node")
        sessions = api.get("/api/v1/nodes/n-twin/sessions").json()["items"]
        old = next(s for s in sessions if s["session_id"] == first_session)
        assert old["close_code"] == 4409
        assert old["reason"] == "superseded"
        assert api.liveness("n-twin") == "online"
    finally:
        twin.cleanup()


def test_goodbye_on_sigterm_makes_the_node_offline_at_once(
        controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    node = make_node("n-bye")
    api = controller.api()
    session = api.node("n-bye")["session"]["session_id"]
    assert node.terminate() == 0
    # Not 'stale' first: a goodbye means offline immediately.
    assert api.liveness("n-bye") == "offline"
    sessions = api.get("/api/v1/nodes/n-bye/sessions").json()["items"]
    assert sessions[0]["session_id"] == session
    assert sessions[0]["reason"] == "goodbye"
    assert sessions[0]["close_code"] == 1000
    assert not (node.state_dir / "runtime.pid").exists()


def test_a_node_that_vanishes_without_goodbye_is_stale_then_offline(
        controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    node = make_node("n-vanish")
    api = controller.api()
    node.kill_all9()
    wait_until(lambda: api.liveness("n-vanish") == "stale", what="stale after kill -9")
    wait_until(lambda: api.liveness("n-vanish") == "offline", timeout_s=30,
               what="offline after offline_after_s")


def test_tether_exec_streams_output_and_exits_with_the_remote_exit_code(
        controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    make_node("n-cli")
    env_args = ["--url", controller.url, "--token", controller.token]
    ok = subprocess.run(tether_cmd("exec", *env_args, "n-cli", "--", "echo", "hi"),
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "hi\n"
    bad = subprocess.run(tether_cmd("exec", *env_args, "n-cli", "--", "sh", "-c",
                                    "echo oops >&2; exit 7"),
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 7
    assert "oops" in bad.stderr
    missing = subprocess.run(tether_cmd("exec", *env_args, "n-cli", "--", "no-such-binary-x"),
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 127  # as a shell says it: the program is not there
    assert "not found: no-such-binary-x" in missing.stderr
    no_wait = subprocess.run(tether_cmd("exec", *env_args, "--no-wait", "n-cli", "--", "true"),
                             capture_output=True, text=True, timeout=60)
    assert no_wait.returncode == 0 and no_wait.stdout.startswith("c_")


def test_an_unknown_command_kind_is_rejected_by_the_node(
        controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    make_node("n-kind")
    api = controller.api()
    cmd = api.submit("n-kind", "teleport", {"to": "mars"})
    done = wait_until(lambda: (c := api.command(cmd["command_id"]))["state"] in TERMINAL_STATES
                      and c, what="unknown kind answered")
    assert done["state"] == "rejected"
    assert "unknown command kind" in done["error"]


def test_diag_ping_is_answered_with_the_nodes_timestamps(
        controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    make_node("n-ping")
    api = controller.api()
    cmd = api.submit("n-ping", "diag.ping")
    done = wait_until(lambda: (c := api.command(cmd["command_id"]))["state"] in TERMINAL_STATES
                      and c, what="ping answered")
    assert done["state"] == "succeeded"
    assert done["result"]["received_ms"] <= done["result"]["sent_ms"]


def test_exec_timeout_and_cancel_end_the_process(
        controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    make_node("n-stop")
    api = controller.api()
    timed = api.submit("n-stop", "exec", {"argv": ["sleep", "30"], "timeout_s": 0.5})
    long = api.submit("n-stop", "exec", {"argv": ["sleep", "30"]})
    wait_until(lambda: api.command(long["command_id"])["state"] == "running",
               what="sleep running")
    resp = api.post(f"/api/v1/commands/{long['command_id']}/cancel")
    assert resp.status_code == 202
    cancelled = wait_until(lambda: (c := api.command(long["command_id"]))["state"]
                           in TERMINAL_STATES and c, what="cancelled")
    assert cancelled["state"] == "cancelled"
    timed_out = wait_until(lambda: (c := api.command(timed["command_id"]))["state"]
                           in TERMINAL_STATES and c, what="timed out")
    assert timed_out["state"] == "failed"
    assert "timeout" in timed_out["error"]


def test_node_status_reports_the_state_dir_without_the_controller(
        controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    node = make_node("n-status")
    out = subprocess.run(tether_cmd("node", "status", "--state-dir", str(node.state_dir),
                                    "--json"), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    import json

    status = json.loads(out.stdout)
    assert status["node_id"] == "n-status"
    assert status["runtime"]["running"] is True
    wait_until(lambda: (node.state_dir / "status.json").exists(), what="status snapshot")
