"""Every failpoint of common/failpoints.py crashed through in a real process, then the history
checker over what every process recorded (issue 16, docs/reliability.md).

Each case arms ``crash`` at one point in one process (``TETHER_FAILPOINTS``), drives commands
(each one a ``cmd.deliver`` down and ``cmd.status`` frames up, its execution a marker line)
until that process dies there, restarts it unarmed, drains (node online, every command
terminal, the node's outbox empty), and checks: no violation (no acked frame lost, none
applied twice, per-stream order, commands terminal once, executed at most once), the
frame records of both streams present, and the crash really happened at that point.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tether.common.failpoints import CRASH_EXIT_CODE, KNOWN_POINTS
from tether.protocol.frames import TERMINAL_STATES

from ..helpers import wait_until
from .crashkit import Rig, crashed_at, kinds, summary

pytestmark = pytest.mark.timeout(120)


@dataclass(frozen=True)
class Case:
    point: str
    process: str  # controller | runtime | sidecar
    action: str   # the TETHER_FAILPOINTS action: which hit crashes


CASES = [
    Case("outbox.after_append", "runtime", "crash@3"),
    Case("outbox.after_send", "runtime", "crash@3"),
    Case("sidecar.after_send", "sidecar", "crash@3"),
    Case("gateway.before_ack", "controller", "crash@2"),
    Case("outbox.after_ack_before_delete", "runtime", "crash@2"),
    Case("inbox.after_apply_before_commit", "runtime", "crash@2"),
    Case("gateway.after_apply_before_commit", "controller", "crash@2"),
    Case("gateway.mid_claim", "controller", "crash@1"),
    Case("gateway.after_claim", "controller", "crash@1"),
]
# Crashed through elsewhere: store.mid_migration (tests/common/test_failpoints.py, at three
# statements of a migration), bundles.mid_activation (test_bundle_activation_crash.py).
ELSEWHERE = {"store.mid_migration", "bundles.mid_activation"}


def test_every_registered_failpoint_has_a_crash_test() -> None:
    assert {c.point for c in CASES} | ELSEWHERE == set(KNOWN_POINTS)


def _dead(rig: Rig, case: Case) -> bool:
    if case.process == "controller":
        return not rig.controller.alive()
    if case.process == "runtime":
        return not rig.node.alive()
    return crashed_at(rig, case.point)


def _terminal_or_dead(rig: Rig, case: Case, command_id: str) -> bool:
    if _dead(rig, case):
        return True
    try:
        return rig.state(command_id) in TERMINAL_STATES
    except httpx.HTTPError:  # the controller died between the two tests
        return _dead(rig, case)


def _drive_until_crash(rig: Rig, case: Case) -> None:
    """Commands one at a time until the armed process dies at its point (bounded)."""
    for _ in range(20):
        if _dead(rig, case):
            return
        try:
            command_id = rig.submit()
        except httpx.HTTPError:
            continue  # the controller is going down: the next turn sees it dead
        wait_until(lambda c=command_id: _terminal_or_dead(rig, case, c),  # type: ignore[misc]
                   timeout_s=20, what=f"a command ends or {case.process} crashes")
    wait_until(lambda: _dead(rig, case), timeout_s=10,
               what=f"{case.process} to crash at {case.point}")


@pytest.mark.parametrize("case", CASES, ids=[c.point for c in CASES])
def test_a_crash_at_the_failpoint_loses_nothing_acked_and_applies_nothing_twice(
        tmp_path: Path, case: Case) -> None:
    spec = {"TETHER_FAILPOINTS": f"{case.point}={case.action}"}
    rig = Rig(tmp_path,
              controller_env=spec if case.process == "controller" else {},
              node_env=spec if case.process != "controller" else {})
    try:
        rig.start_controller()
        rig.enroll()
        rig.submit()  # queued before the node's first hello
        rig.start_node()
        _drive_until_crash(rig, case)
        assert crashed_at(rig, case.point), summary(rig, [], "no failpoint line in any log")
        if case.process == "controller":
            assert rig.controller.proc is not None
            assert rig.controller.proc.wait(10) == CRASH_EXIT_CODE
            rig.start_controller(armed=False)
        elif case.process == "runtime":
            assert rig.node.proc is not None
            assert rig.node.proc.wait(10) == CRASH_EXIT_CODE
            rig.start_node(armed=False)  # its sidecar kept the session meanwhile
        else:  # the runtime restarts a dead sidecar, armed as it was: restart both unarmed
            # (stopped, not killed: a kill -9 landing inside a COMMIT's fsync leaves a
            # committed frame the runtime never got to record, docs/reliability.md)
            rig.node.cleanup()
            rig.start_node(armed=False)
        rig.wait_online()
        for _ in range(2):
            rig.submit()
        violations, records, states = rig.finish()
    finally:
        rig.stop()
    assert violations == [], summary(rig, violations)
    seen = kinds(records)
    for ev in ("append", "applied", "acked"):
        for stream in ("evt", "cmd"):
            assert seen.get((ev, stream), 0) > 0, f"no {ev} record on {stream}: {seen}"
    assert set(states.values()) <= TERMINAL_STATES
