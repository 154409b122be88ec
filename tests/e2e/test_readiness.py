"""Readiness from explicit signals: a blackholed controller makes control authority stale
and the node not ready; healing makes it fresh again, with no process restarted."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..helpers import ControllerProc, NodeProc, Proc, wait_until


@pytest.fixture
def proxy(controller: ControllerProc, tmp_path: Path) -> Iterator[tuple[Proc, str]]:
    port_file = tmp_path / "proxy.port"
    proc = Proc([sys.executable, "-m", "tether.tools.faultproxy", "--upstream",
                 f"127.0.0.1:{controller.port}", "--port-file", str(port_file)],
                tmp_path / "proxy.log")
    proc.start()
    port = wait_until(lambda: port_file.exists() and port_file.read_text().strip(),
                      what="the fault proxy to listen")
    yield proc, f"http://127.0.0.1:{port}"
    proc.terminate()


def runtime_status(node: NodeProc) -> dict[str, Any]:
    url = (node.state_dir / "runtime.status.url").read_text().strip()
    return httpx.get(url + "/status", timeout=5).json()  # type: ignore[no-any-return]


def test_a_blackholed_controller_makes_authority_stale_and_healing_makes_it_fresh(
        controller: ControllerProc, proxy: tuple[Proc, str], tmp_path: Path) -> None:
    proc, proxy_url = proxy
    node = NodeProc(tmp_path / "n-bh", "n-bh", extra=["--controller-url", proxy_url])
    node.enroll(controller)
    node.start()
    try:
        wait_until(lambda: runtime_status(node)["readiness"]["ready"], timeout_s=30,
                   what="ready through the proxy")
        status = runtime_status(node)
        assert status["readiness"]["control_authority"]["state"] == "fresh"
        assert status["matrix"]["apply_bundles"]["allowed"] is True
        url = (node.state_dir / "runtime.status.url").read_text().strip()
        assert httpx.get(url + "/readyz", timeout=5).status_code == 200

        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGUSR1)  # blackhole
        stale = wait_until(lambda: (s := runtime_status(node))["readiness"][
            "control_authority"]["state"] == "stale" and s, timeout_s=30,
            what="control authority to go stale")
        assert stale["readiness"]["ready"] is False
        assert "control_authority" in stale["readiness"]["reasons"]
        assert stale["matrix"]["apply_bundles"] == {
            "allowed": False, "reason": "controller authority is not fresh"}
        assert httpx.get(url + "/readyz", timeout=5).status_code == 503

        proc.proc.send_signal(signal.SIGUSR2)  # heal
        wait_until(lambda: runtime_status(node)["readiness"]["control_authority"]["state"]
                   == "fresh", timeout_s=60, what="authority fresh again after healing")
        assert node.alive() and node.sidecar_pid() is not None
        incidents = runtime_status(node)["incidents"]
        assert any(i["class"] == "transport" for i in incidents), incidents
    finally:
        node.cleanup()


def test_status_endpoints_refuse_a_non_loopback_bind(
        controller: ControllerProc, tmp_path: Path) -> None:
    import subprocess

    from ..helpers import tether_cmd

    node = NodeProc(tmp_path / "n-lb", "n-lb")
    node.enroll(controller)
    out = subprocess.run(tether_cmd("node", "run", "--state-dir", str(node.state_dir),
                                    "--status-host", "0.0.0.0"),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert "loopback only" in out.stderr
