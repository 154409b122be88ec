"""The fleet simulator: 1,000 nodes on the real protocol against a real controller, with a
reconnect storm, and zero loss."""

from __future__ import annotations

import json
import subprocess

from ..helpers import ControllerProc, tether_cmd


def test_a_thousand_simulated_nodes_hold_sessions_survive_a_storm_and_lose_nothing(
        controller: ControllerProc) -> None:
    out = subprocess.run(tether_cmd("sim", "--url", controller.url, "--token",
                                    controller.token, "--nodes", "1000", "--events", "3",
                                    "--duration", "1", "--storm", "--json"),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert report["nodes"] == 1000 and report["sessions_held"] == 1000
    assert report["frames"] == 3000
    assert report["zero_loss"] == {"ok": True, "unacked": 0, "sampled_nodes": 5,
                                   "sample_mismatches": {}, "duplicate_commands": 0}
    assert report["storm_seconds_to_all_online"] > 0
    sessions = controller.api().get("/api/v1/diag").json()["sessions"]
    assert sessions["nodes_by_liveness"].get("online", 0) == 0  # all said goodbye at the end
