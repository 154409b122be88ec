"""Issue 14, a real node process: `tether node run` takes the ICE settings, and the media
plane shows (no peers yet) in its /status, /metrics and `tether node status`, apart from
readiness. The controller's rtc relay is another slice: peers end to end are its tests."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import httpx

from ..helpers import ControllerProc, NodeProc, metric_types, tether_cmd


def test_a_node_runs_with_ice_settings_and_shows_its_media_plane(
        controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    node = make_node("n-rtc", extra=["--rtc-host-address", "127.0.0.1",
                                     "--rtc-stun", "stun:127.0.0.1:3478"])
    url = (node.state_dir / "runtime.status.url").read_text().strip()
    status = httpx.get(url + "/status", timeout=5).json()
    assert status["rtc"] == {"peers": []} and status["readiness"]["ready"] is True
    types = metric_types(httpx.get(url + "/metrics", timeout=5).text)
    assert types.get("tether_node_rtc_peers") == "gauge"
    assert types.get("tether_node_rtc_subflow_bytes") == "counter"
    out = subprocess.run(tether_cmd("node", "status", "--state-dir", str(node.state_dir)),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "rtc         no peers" in out.stdout
    shown = subprocess.run(tether_cmd("node", "status", "--state-dir", str(node.state_dir),
                                      "--json"), capture_output=True, text=True, timeout=30)
    assert json.loads(shown.stdout)["rtc"] == {"peers": []}


def test_node_run_refuses_an_rtc_host_address_that_is_not_an_address(
        controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    node = make_node("n-rtc-bad", start=False)
    out = subprocess.run(tether_cmd("node", "run", "--state-dir", str(node.state_dir),
                                    "--rtc-host-address", "eth0"),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "not an IP address" in out.stderr
