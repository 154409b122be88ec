"""A node's health report (protocol/health.py): what passes, what is refused, and that the
node's own reports (node/readiness.py ``health_report``) always pass, however long its texts."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tether.node.readiness import Incidents, Signals, health_report, readiness
from tether.protocol.errors import BadFrame
from tether.protocol.frames import NodeEvent
from tether.protocol.health import (
    HEALTH_KIND,
    MAX_INCIDENTS,
    MAX_MESSAGE_CHARS,
    NodeHealth,
)

GOOD: dict[str, Any] = {
    "at_ms": 1_700_000_000_000, "ready": False, "reasons": ["transport"],
    "checks": {"transport": {"ok": False, "state": "disconnected", "detail": "no session"},
               "store": {"ok": True, "state": "ok"}},
    "incidents": [{"at_ms": 1, "class": "transport", "message": "lost", "close_code": 1006}],
    "incidents_total": 3}


def with_(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """GOOD with the value at ``path`` replaced (a deep copy)."""
    out = copy.deepcopy(GOOD)
    target: Any = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return out


def test_a_report_round_trips_and_unknown_keys_are_dropped() -> None:
    health = NodeHealth.from_map({**GOOD, "extra": {"x": 1}})
    assert health.to_map() == GOOD
    assert NodeHealth.from_map(health.to_map()) == health


def test_script_in_a_message_is_kept_as_the_text_it_is() -> None:
    script = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    health = NodeHealth.from_map(with_(("incidents", 0, "message"), script))
    assert health.incidents[0].message == script  # text; the dashboard shows it as text


HOSTILE = {
    "ready as a number": (("ready",), 1),
    "ok as a string": (("checks", "store", "ok"), "true"),
    "a state that is not text": (("checks", "store", "state"), ["ok"]),
    "an empty state": (("checks", "store", "state"), ""),
    "a check name with markup": (("checks", "<b>"), {"ok": True, "state": "ok"}),
    "a check that is not a map": (("checks", "store"), "ok"),
    "too many checks": (("checks",), {f"c{i}": {"ok": True, "state": "ok"}
                                      for i in range(17)}),
    "an oversized message": (("incidents", 0, "message"), "x" * (MAX_MESSAGE_CHARS + 1)),
    "too many incidents": (("incidents",), [GOOD["incidents"][0]] * (MAX_INCIDENTS + 1)),
    "an incident time as a float": (("incidents", 0, "at_ms"), 1.5),
    "a negative time": (("at_ms",), -1),
    "a close code past 16 bits": (("incidents", 0, "close_code"), 70000),
    "a bool close code": (("incidents", 0, "close_code"), True),
    "reasons as a map": (("reasons",), {"a": 1}),
    "a reason that is not text": (("reasons",), [7]),
    "a lone surrogate": (("reasons",), ["\ud800"]),
    "a negative total": (("incidents_total",), -1),
    "nesting past the shape": (("checks", "store", "detail"), {"a": {"b": {"c": 1}}}),
    # every text within its bound in characters, the whole over MAX_HEALTH_BYTES in bytes
    "a report over its byte bound": (("incidents",), [
        {"at_ms": 1, "class": "transport", "message": "\x01" * MAX_MESSAGE_CHARS}
    ] * MAX_INCIDENTS),  # each \x01 is 6 bytes as JSON (\u0001)
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_report_is_refused_as_a_whole(case: str) -> None:
    path, value = HOSTILE[case]
    with pytest.raises(BadFrame):
        NodeHealth.from_map(with_(path, value))


def test_a_health_node_event_is_checked_at_the_boundary_and_others_are_not() -> None:
    parsed = NodeEvent.from_body({"kind": HEALTH_KIND, "data": {**GOOD, "extra": 1}})
    assert parsed.data == GOOD
    with pytest.raises(BadFrame):
        NodeEvent.from_body({"kind": HEALTH_KIND, "data": with_(("ready",), "yes")})
    assert NodeEvent.from_body({"kind": "app", "data": {"ready": "yes"}}).data == \
        {"ready": "yes"}


def signals(**over: Any) -> Signals:
    base: dict[str, Any] = dict(
        now=1000.0, sidecar_attached=True, session_connected=True, last_ack_age_s=1.0,
        heartbeat_s=15, stale_after_s=60, outbox_depth=0, outbox_oldest_age_s=0.0,
        max_outbox=10, store_ok=True, store_error=None, running=0, max_concurrent=4)
    return Signals(**{**base, **over})


def test_the_nodes_report_always_passes_and_changes_only_with_the_nodes_state() -> None:
    incidents = Incidents()
    for i in range(30):
        incidents.record(900.0 + i, "transport", "y" * 5000, close_code=1006 + i % 2)
    incidents.record(990.0, "store", "bad", close_code="not a code")
    sig = signals(store_ok=False, store_error="disk <full> " * 100, outbox_depth=10)
    report = health_report(readiness(sig, incidents), incidents, sig.now)
    health = NodeHealth.from_map(report)
    assert not health.ready and len(health.incidents) == 10 and health.incidents_total == 31
    assert health.incidents[-1].close_code is None
    assert all(len(i.message) <= MAX_MESSAGE_CHARS for i in health.incidents)
    assert not health.checks["store"].ok and health.checks["outbox"].state == "full"

    # the ack's age and the executors' load move on every sample: the report does not
    quiet = Incidents()
    one = health_report(readiness(signals(), quiet), quiet, 1000.0)
    two = health_report(readiness(signals(last_ack_age_s=9.0, running=2), quiet), quiet,
                        1001.0)
    assert one["ready"] and {**one, "at_ms": 0} == {**two, "at_ms": 0}
