"""The sweeper persists last-seen only for sessions that heard something since the last
touch: an idle fleet of 10,000 costs no writes (the seam is driven directly, no I/O)."""

from __future__ import annotations

import time
from types import SimpleNamespace

from tether.controller.config import ControllerConfig
from tether.controller.services.sweeper import changed_since_touch
from tether.protocol.liveness import Thresholds


def conn(node_id: str, last_frame: float, state: str = "attached") -> SimpleNamespace:
    return SimpleNamespace(node_id=node_id, session_id="s_" + node_id, last_frame_mono=last_frame,
                           runtime={"state": state})


def test_only_sessions_that_heard_a_frame_or_changed_state_are_touched_again() -> None:
    a, b, c = conn("a", 10.0), conn("b", 11.0), conn("c", 12.0)
    handshaking = SimpleNamespace(**{**vars(conn("d", 9.0)), "session_id": None})
    sessions = [a, b, c, handshaking]
    first, touched = changed_since_touch(sessions, {}, 20.0)  # type: ignore[arg-type]
    assert set(first) == {"a", "b", "c"}
    nothing, touched = changed_since_touch(sessions, touched, 25.0)  # type: ignore[arg-type]
    assert nothing == {}  # nothing new: no writes
    b.last_frame_mono = 24.0
    c.runtime["state"] = "detached"
    again, _ = changed_since_touch(sessions, touched, 30.0)  # type: ignore[arg-type]
    assert set(again) == {"b", "c"} and again["c"][1] == "detached"
    # last seen = the wall clock 6 s before "now" (mono 24 vs 30), not the touch time
    assert abs(again["b"][0] - (time.time() - 6.0)) < 2.0


def test_sessions_are_touched_at_least_twice_per_stale_period_so_other_replicas_see_them_online(
        ) -> None:
    assert ControllerConfig().node_touch_interval_s == 30.0  # the defaults: stale after 60 s
    fast = ControllerConfig(thresholds=Thresholds(heartbeat_s=0.5, stale_after_s=3.0,
                                                  offline_after_s=6.0))
    assert fast.node_touch_interval_s == 1.5
