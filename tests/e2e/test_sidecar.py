"""The sidecar keeps the session while the runtime restarts or crashes, and a sidecar crash
loses and doubles nothing. Real processes: controller, runtime, sidecar."""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tether.protocol.frames import TERMINAL_STATES

from ..helpers import ControllerProc, NodeProc, tether_cmd, wait_until
from .test_core_mesh import (
    all_commands,
    assert_exactly_once,
    marker_command,
    open_gate,
    start_marked_stream,
    terminal_count,
)

# Long liveness thresholds: anything seen well before stale_after_s came from an event
# (the sidecar's edge.runtime), never from a timeout.
SLOW = ["--heartbeat-s", "1", "--stale-after-s", "60", "--offline-after-s", "120"]

# The tests of what the controller sees and stores run on both backends (tests/e2e/
# conftest.py); those of the node's own socket and pid file on SQLite only.
both_backends = pytest.mark.both_backends


@pytest.fixture
def slow_controller(make_controller: Callable[..., ControllerProc]) -> ControllerProc:
    return make_controller("ctl", extra=SLOW)


@pytest.fixture
def node(slow_controller: ControllerProc, tmp_path: Path) -> Iterator[NodeProc]:
    n = NodeProc(tmp_path / "n-side", "n-side", extra=["--max-concurrent", "4"])
    n.enroll(slow_controller)
    n.start()
    api = slow_controller.api()
    wait_until(lambda: api.liveness("n-side") == "online", what="online")
    yield n
    n.cleanup()


@both_backends
def test_kill_9_of_the_runtime_keeps_the_session_and_queued_commands_run_once_it_returns(
        slow_controller: ControllerProc, node: NodeProc, tmp_path: Path) -> None:
    api = slow_controller.api()
    session = api.node("n-side")["session"]["session_id"]
    sidecar = node.sidecar_pid()
    node.kill9()
    view = wait_until(lambda: (v := api.node("n-side"))["liveness"] == "degraded" and v,
                      timeout_s=10, what="degraded, long before stale_after_s")
    assert view["session"]["session_id"] == session
    assert view["runtime"]["state"] == "detached"
    marker = tmp_path / "marker"
    queued = [api.submit("n-side", "exec", marker_command(marker, f"q{i}"))["command_id"]
              for i in range(20)]
    node.start()  # `tether node run` again: it attaches to the same sidecar
    wait_until(lambda: all(api.command(c)["state"] in TERMINAL_STATES for c in queued),
               timeout_s=60, what="the 20 queued commands to finish")
    assert all(api.command(c)["state"] == "succeeded" for c in queued)
    assert Counter(marker.read_text().split()) == {f"q{i}": 1 for i in range(20)}
    after = api.node("n-side")
    assert after["session"]["session_id"] == session
    assert after["liveness"] == "online"
    assert node.sidecar_pid() == sidecar


@both_backends
def test_node_restart_restarts_only_the_runtime_and_keeps_the_session(
        slow_controller: ControllerProc, node: NodeProc) -> None:
    api = slow_controller.api()
    session = api.node("n-side")["session"]["session_id"]
    runtime_pid = node.pid
    out = subprocess.run(tether_cmd("node", "restart", "--state-dir", str(node.state_dir)),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    wait_until(lambda: "runtime restarting" in node.log(), what="the restart")
    wait_until(lambda: node.log().count("node runtime starting") == 2, what="re-exec")
    wait_until(lambda: api.liveness("n-side") == "online", what="online again")
    assert node.alive() and node.pid == runtime_pid  # re-exec keeps the pid
    assert api.node("n-side")["session"]["session_id"] == session
    cmd = api.submit("n-side", "diag.ping")
    wait_until(lambda: api.command(cmd["command_id"])["state"] == "succeeded",
               what="ping after the restart")


def test_a_second_runtime_for_the_same_state_dir_is_refused(node: NodeProc) -> None:
    second = subprocess.run(tether_cmd("node", "run", "--state-dir", str(node.state_dir)),
                            capture_output=True, text=True, timeout=30)
    assert second.returncode != 0
    assert "already runs" in second.stderr


@both_backends
def test_kill_9_of_the_sidecar_mid_stream_loses_nothing_and_the_new_session_resumes(
        slow_controller: ControllerProc, node: NodeProc, tmp_path: Path) -> None:
    api = slow_controller.api()
    first_session = api.node("n-side")["session"]["session_id"]
    old_sidecar = node.sidecar_pid()
    marker = tmp_path / "marker"
    tags = start_marked_stream(api, "n-side", marker, "s")
    node.kill_sidecar9()
    assert terminal_count(api, "n-side") < 200, "the kill came too late to prove anything"
    open_gate(marker)
    wait_until(lambda: node.sidecar_pid() not in (None, old_sidecar),
               what="the runtime to bring a new sidecar up")
    wait_until(lambda: terminal_count(api, "n-side") == 200, timeout_s=90,
               what="all 200 commands terminal")
    assert node.alive(), "the runtime kept running"
    assert_exactly_once(api, "n-side", marker, tags)
    for cmd in all_commands(api, "n-side"):
        # every status frame applied exactly once: one entry per state, nothing ignored
        states = [e["state"] for e in api.command(str(cmd["command_id"]))["timeline"]]
        assert states == ["queued", "delivered", "running", "succeeded"], states
    view = api.node("n-side")
    assert view["session"]["session_id"] != first_session
    assert view["session"]["resumed"] is True
    assert view["liveness"] == "online"


@both_backends
def test_node_stop_stops_the_runtime_and_the_sidecar_and_the_node_is_offline_at_once(
        slow_controller: ControllerProc, node: NodeProc) -> None:
    api = slow_controller.api()
    sidecar = node.sidecar_pid()
    out = subprocess.run(tether_cmd("node", "stop", "--state-dir", str(node.state_dir)),
                         capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout.strip()) == (0, "stopped"), out.stderr
    assert not node.alive() and node.sidecar_pid() is None and sidecar is not None
    assert api.liveness("n-side") == "offline"
    assert api.get("/api/v1/nodes/n-side/sessions").json()["items"][0]["reason"] == "goodbye"


async def test_the_sidecar_socket_is_private_and_a_second_runtime_is_refused_clearly(
        node: NodeProc) -> None:
    import asyncio
    import os
    import stat

    from tether.protocol.frames import Frame
    from tether.protocol.local import LocalDecoder, encode_local

    sock = node.state_dir / "sidecar.sock"
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    async with asyncio.timeout(10):
        reader, writer = await asyncio.open_unix_connection(str(sock))
        writer.write(encode_local(Frame(t="local.attach", b={
            "node_id": "n-side", "epoch": 1, "cmd_applied": 0, "pid": 1})))
        await writer.drain()
        decoder = LocalDecoder()
        frames: list[Frame] = []
        while not frames:
            data = await reader.read(65536)
            assert data, "the sidecar closed without an answer"
            frames = decoder.feed(data)
        writer.close()
    assert frames[0].t == "local.refused"
    assert f"another runtime (pid {node.pid}) is attached" in frames[0].b["reason"]
    assert node.alive()  # the attached runtime is untouched
