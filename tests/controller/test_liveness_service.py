"""NodeLiveness and the Sweeper driven directly, with a clock the test moves (no I/O): what
the API and /ws say of a node whose session closed, and how the sweeper touches sessions."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from tether.controller.services.liveness import NodeLiveness
from tether.controller.services.presence import SessionSnapshot
from tether.controller.services.sweeper import Sweeper
from tether.controller.store.records import Touch
from tether.protocol.liveness import Thresholds

TH = Thresholds(heartbeat_s=1, stale_after_s=3, offline_after_s=6)


@dataclass
class Clock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Bus:
    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def publish(self, topic: str, kind: str, data: dict[str, Any], *,
                size: int | None = None) -> None:
        self.events.append((topic, kind, data))


@dataclass
class Sessions:
    live: dict[str, SessionSnapshot] = field(default_factory=dict)

    def snapshot(self, node_id: str) -> SessionSnapshot | None:
        return self.live.get(node_id)

    def __len__(self) -> int:
        return len(self.live)


def snap(node_id: str, age_s: float, state: str = "attached") -> SessionSnapshot:
    return SessionSnapshot(node_id=node_id, session_id="s_" + node_id, last_frame_age_s=age_s,
                           opened_at=0.0, runtime={"state": state})


def test_a_live_session_is_online_then_stale_by_its_last_frame_and_degraded_if_detached(
        ) -> None:
    sessions = Sessions({"a": snap("a", 0.5), "b": snap("b", 3.5),
                         "c": snap("c", 0.5, "detached")})
    live = NodeLiveness(sessions, Bus(), TH, monotonic=Clock())
    assert [live.liveness(n) for n in "abc"] == ["online", "stale", "degraded"]
    assert live.liveness("never-seen") == "offline"


def test_a_node_closed_without_goodbye_is_stale_until_offline_after_then_pushed_offline_once(
        ) -> None:
    clock, bus = Clock(), Bus()
    live = NodeLiveness(Sessions(), bus, TH, monotonic=clock)
    live.node_changed("a", "session.closed", {"session_id": "s_a", "reason": "lost"})
    assert bus.events[-1] == ("node:a", "session.closed", {
        "node_id": "a", "session_id": "s_a", "reason": "lost", "liveness": "stale"})
    clock.now += 5.9
    assert live.expire() == [] and live.liveness("a") == "stale"
    clock.now += 0.2
    assert live.expire() == ["a"]
    assert bus.events[-1] == ("nodes", "liveness.changed",
                              {"node_id": "a", "liveness": "offline"})
    assert live.expire() == [] and live.liveness("a") == "offline"


def test_a_goodbye_is_offline_at_once_and_a_new_session_forgets_the_close() -> None:
    clock, sessions = Clock(), Sessions()
    live = NodeLiveness(sessions, Bus(), TH, monotonic=clock)
    live.node_changed("a", "session.closed", {"reason": "goodbye"})
    assert live.liveness("a") == "offline"
    live.node_changed("b", "session.closed", {"reason": "lost"})
    sessions.live["b"] = snap("b", 0.0)
    live.node_changed("b", "session.opened", {"session_id": "s_b"})
    clock.now += 60
    assert live.expire() == ["a"]  # b's close was forgotten when it came back


@dataclass
class Store:
    fail_touches: int = 0
    touched: list[dict[str, tuple[float, str | None]]] = field(default_factory=list)

    async def expire_due(self) -> list[str]:
        return ["c_old"]

    async def prune_idempotency_keys(self, *, older_than_s: float = 0) -> int:
        return 0

    async def touch_nodes(self, seen: dict[str, Touch]) -> None:
        if self.fail_touches:
            self.fail_touches -= 1
            raise OSError("disk full")
        self.touched.append(seen)


def session(node_id: str, last_frame: float) -> SimpleNamespace:
    return SimpleNamespace(node_id=node_id, session_id="s_" + node_id,
                           last_frame_mono=last_frame, runtime={"state": "attached"},
                           expire_if_idle=lambda now_mono: False)


async def test_a_touch_that_failed_is_written_again_by_the_next_one() -> None:
    store, bus = Store(fail_touches=1), Bus()
    sweeper = Sweeper(store, bus, [session("a", 10.0)], expire_closed=lambda: [],
                      sweep_interval_s=1.0, touch_interval_s=1.0, monotonic=Clock())
    with pytest.raises(OSError):
        await sweeper.tick()
    await sweeper.tick()
    assert [set(t) for t in store.touched] == [{"a"}]
    await sweeper.tick()  # nothing new since: no write
    assert [set(t) for t in store.touched] == [{"a"}, set()]
    assert ("command:c_old", "command.updated",
            {"command_id": "c_old", "state": "expired"}) in bus.events
