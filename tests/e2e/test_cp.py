"""Issue 14, node <-> node: ``tether cp`` between real node processes through a real
controller, on loopback only (every node and this process allowlist 127.0.0.1 as their
only ICE host address). Direct ICE is blocked for the relay case by giving the source node
an allowlisted address this machine does not have (192.0.2.1, TEST-NET-1): it then has no
host candidate at all, so no ICE check is ever sent anywhere, and the relay carries it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..helpers import ControllerProc, NodeProc, tether_cmd

LOOPBACK = ["--rtc-host-address", "127.0.0.1"]
NO_HOST = ["--rtc-host-address", "192.0.2.1", "--rtc-ice-timeout", "3"]


def cp(controller: ControllerProc, *args: str, timeout: float = 120) -> \
        subprocess.CompletedProcess[str]:
    return subprocess.run(tether_cmd("cp", *args, "--url", controller.url, "--token",
                                     controller.token, "--json"),
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TETHER_RTC_HOST_ADDRESSES": "127.0.0.1"})


def put(node: NodeProc, name: str, size: int) -> str:
    """A file of ``size`` pseudo-random bytes in the node's workspace; its sha256."""
    data = hashlib.shake_256(name.encode()).digest(size)
    path = node.state_dir / "workspace" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def result_of(run: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert run.returncode == 0, run.stderr
    out: dict[str, Any] = json.loads(run.stdout)
    return out


def test_cp_node_to_node_goes_direct_when_ice_connects(
        controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    a, b = make_node("cp-a", extra=LOOPBACK), make_node("cp-b", extra=LOOPBACK)
    digest = put(a, "blob.bin", 3 << 20)
    result = result_of(cp(controller, "cp-a:blob.bin", "cp-b:copy.bin"))
    assert result["path"] == "direct"
    assert (result["bytes"], result["sha256"]) == (3 << 20, digest)
    assert result["mb_per_s"] > 0 and result["seconds"] > 0
    assert sha(b.state_dir / "workspace" / "copy.bin") == digest


def test_cp_node_to_node_takes_the_relay_when_direct_ice_is_blocked(
        controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    a, b = make_node("cp-a", extra=NO_HOST), make_node("cp-b", extra=LOOPBACK)
    digest = put(a, "blob.bin", 2 << 20)
    result = result_of(cp(controller, "cp-a:blob.bin", "cp-b:"))
    assert result["path"] == "relay"
    assert (result["bytes"], result["sha256"]) == (2 << 20, digest)
    assert sha(b.state_dir / "workspace" / "blob.bin") == digest
    metrics = controller.api().get("/metrics").text
    assert "tether_rtc_relay_bytes_total" in metrics


def test_cp_uploads_to_and_downloads_from_a_node(
        controller: ControllerProc, make_node: Callable[..., NodeProc],
        tmp_path: Path) -> None:
    node = make_node("cp-n", extra=LOOPBACK)
    local = tmp_path / "up.bin"
    local.write_bytes(os.urandom(1 << 20))
    up = result_of(cp(controller, str(local), "cp-n:there.bin"))
    assert up["path"] == "direct" and up["sha256"] == sha(local)
    assert sha(node.state_dir / "workspace" / "there.bin") == sha(local)
    back = tmp_path / "back.bin"
    down = result_of(cp(controller, "cp-n:there.bin", str(back)))
    assert down["sha256"] == sha(local) and sha(back) == sha(local)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tether-cp-")]
    # with no host candidate here ICE cannot connect, and here <-> node has no relay
    run = cp(controller, str(local), "cp-n:never.bin", "--rtc-host-address", "192.0.2.1",
             "--ice-timeout", "2")
    assert run.returncode == 1 and "ICE found no direct path" in run.stderr
    assert "relay is for node to node only" in run.stderr
    assert not (node.state_dir / "workspace" / "never.bin").exists()


def test_a_file_send_of_a_file_outside_the_workspace_is_refused_by_the_node(
        controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    make_node("cp-a", extra=LOOPBACK)
    make_node("cp-b", extra=LOOPBACK)
    run = cp(controller, "cp-a:../node.key", "cp-b:stolen")
    assert run.returncode == 1
    assert "rejected" in run.stderr and "outside the workspace" in run.stderr
    run = cp(controller, "cp-a:/etc/passwd", "cp-b:stolen")
    assert run.returncode == 1 and "outside the workspace" in run.stderr


def test_a_cp_to_an_offline_node_fails_saying_so(
        controller: ControllerProc, make_node: Callable[..., NodeProc],
        tmp_path: Path) -> None:
    a = make_node("cp-a", extra=LOOPBACK)
    make_node("cp-off", start=False)
    put(a, "blob.bin", 1000)
    run = cp(controller, "cp-a:blob.bin", "cp-off:x", timeout=60)
    assert run.returncode == 1 and "offline" in run.stderr
    local = tmp_path / "f"
    local.write_bytes(b"x")
    run = cp(controller, str(local), "cp-off:x", timeout=60)
    assert run.returncode == 1 and "cp-off" in run.stderr


def test_cp_usage_errors_exit_2(controller: ControllerProc) -> None:
    run = cp(controller, "a", "b")
    assert run.returncode == 2 and "NODE:PATH" in run.stderr
