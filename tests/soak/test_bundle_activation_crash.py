"""The failpoint ``bundles.mid_activation`` crashed through: the runtime dies between moving
a bundle's new version into place and naming it in ``state.json`` (node/bundles.py, the
``placed`` step), with the history recorder armed in every process.

After the restart nothing half-activated runs (the placed directory is removed, the offer's
command ends ``failed`` once), the same offer made again activates, and the history of the
exec traffic around it passes the checker."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tether.cli.bundle import load_public_key, trust
from tether.common.failpoints import CRASH_EXIT_CODE
from tether.protocol.frames import TERMINAL_STATES

from ..e2e.test_bundle_updates import STEADY, bundle, make_key, publish
from ..helpers import wait_until
from .crashkit import NODE_ID, Rig, crashed_at, summary

pytestmark = pytest.mark.timeout(120)


def _offer(rig: Rig, published: dict[str, object]) -> str:
    args = {"name": published["name"], "version": published["version"], "kind": "app",
            "sha256": published["sha256"], "size": published["size"], "probation_s": 0.5,
            "failure_threshold": 2}
    return str(rig.api.submit(NODE_ID, "update.now", args)["command_id"])


def test_a_crash_mid_activation_leaves_nothing_half_active_and_the_offer_works_again(
        tmp_path: Path) -> None:
    rig = Rig(tmp_path, node_env={"TETHER_FAILPOINTS": "bundles.mid_activation=crash"})
    key, pub = make_key(tmp_path, "pub")
    try:
        rig.start_controller()
        rig.enroll()
        trust(rig.node.state_dir, load_public_key(pub), None)
        rig.start_node()
        rig.wait_online()
        rig.submit()
        published = publish(rig.api, bundle(tmp_path, key, "web", 1, STEADY))
        first = _offer(rig, published)
        wait_until(lambda: not rig.node.alive(), timeout_s=30,
                   what="the runtime to crash mid-activation")
        assert rig.node.proc is not None and rig.node.proc.wait(10) == CRASH_EXIT_CODE
        assert crashed_at(rig, "bundles.mid_activation")
        placed = list((rig.node.state_dir / "bundles" / "web").glob("v1-*"))
        assert placed, "the crash came before the version was moved in"
        rig.start_node(armed=False)
        rig.wait_online()
        interrupted = wait_until(lambda: (c := rig.api.command(first))["state"]
                                 in TERMINAL_STATES and c, timeout_s=30,
                                 what="the interrupted offer to end")
        assert interrupted["state"] == "failed", interrupted
        assert not any(p.exists() for p in placed), "a half-activated version was kept"
        again = _offer(rig, published)
        done = wait_until(lambda: (c := rig.api.command(again))["state"]
                          in TERMINAL_STATES and c, timeout_s=60, what="the offer again")
        assert done["state"] == "succeeded", done
        url = (rig.node.state_dir / "runtime.status.url").read_text().strip()
        assert httpx.get(url + "/status", timeout=5).json()["bundles"]["web"]["active"] == 1
        rig.submit()
        violations, _records, states = rig.finish()
    finally:
        rig.stop()
    assert violations == [], summary(rig, violations)
    assert set(states.values()) == {"succeeded"}
