"""``tether diag node``'s verdict (issue 11 item 10): a probe exits non-zero on trouble."""

from __future__ import annotations

from typing import Any

import pytest

from tether.tools.diag.node import node_verdict

READY: dict[str, Any] = {"state_dir": "/s", "enrolled": True, "live": True,
                         "runtime": {"running": True, "pid": 7},
                         "readiness": {"ready": True, "reasons": []}}


@pytest.mark.parametrize("status, code, says", [
    ({"state_dir": "/s", "enrolled": False}, 20, "no node enrolled in /s"),
    ({**READY, "runtime": {"running": False, "pid": None}, "live": False}, 21,
     "'tether node run --state-dir /s'"),
    ({**READY, "live": False}, 22, "(pid 7) does not answer"),
    ({**READY, "readiness": {"ready": False, "reasons": ["transport", "store"]}}, 23,
     "not ready: transport; store"),
])
def test_each_trouble_has_its_exit_code_and_says_what_to_do(
        status: dict[str, Any], code: int, says: str) -> None:
    verdict = node_verdict(status)
    assert verdict.exit_code == code and not verdict.ok
    assert verdict.problem is not None and says in verdict.problem


def test_a_ready_node_exits_zero() -> None:
    assert node_verdict(READY).exit_code == 0 and node_verdict(READY).problem is None
