"""``tether diag node``: the verdict on a node's status (:func:`tether.node.status.node_status`).

A probe exits non-zero on trouble (docs/operations.md), and the code says which trouble:
the first rule below that holds decides.

| code | trouble |
|---|---|
| 20 | no node is enrolled in the state dir |
| 21 | the runtime is not running |
| 22 | the runtime runs but its status endpoint does not answer (wedged or stopped) |
| 23 | the runtime answers but is not ready (the reasons are named) |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NOT_ENROLLED, NOT_RUNNING, NOT_ANSWERING, NOT_READY = 20, 21, 22, 23


@dataclass(frozen=True, slots=True)
class Verdict:
    exit_code: int  # 0: ready
    problem: str | None = None  # one line: what is wrong and what to do next

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def node_verdict(status: dict[str, Any]) -> Verdict:
    """The verdict on ``status``; pure."""
    state_dir = status.get("state_dir", ".")
    if not status.get("enrolled"):
        return Verdict(NOT_ENROLLED, f"no node enrolled in {state_dir}; run 'tether node "
                                     "enroll --controller URL --token JOIN --node-id ID'")
    runtime = status.get("runtime") or {}
    if not runtime.get("running"):
        return Verdict(NOT_RUNNING, f"the runtime is not running; start it with 'tether node "
                                    f"run --state-dir {state_dir}'")
    if not status.get("live"):
        return Verdict(NOT_ANSWERING, f"the runtime (pid {runtime.get('pid')}) does not answer "
                                      "on its status endpoint; read its log, or restart it "
                                      f"with 'tether node restart --state-dir {state_dir}'")
    tree = status.get("readiness") or {}
    if not tree.get("ready"):
        reasons = "; ".join(str(r) for r in tree.get("reasons") or ()) or "no reason given"
        return Verdict(NOT_READY, f"the runtime is not ready: {reasons}")
    return Verdict(0)
