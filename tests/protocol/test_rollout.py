"""protocol/rollout.py, sans I/O: the request's rules with hostile values, the placement of
nodes in cumulative percent rings and explicit rings, and the decisions that advance, wait
on and trip a rollout."""

from __future__ import annotations

from typing import Any

import pytest

from tether.protocol.errors import BadFrame
from tether.protocol.rollout import (
    NodeFacts,
    Ring,
    RolloutSpec,
    decide,
    parse_rollout,
    place,
    spec_from_json,
)

BASE: dict[str, Any] = {"bundle": "web", "version": 2, "rings": [{"name": "all",
                                                                 "percent": 100}]}


def spec(*rings: Ring, **over: Any) -> RolloutSpec:
    return RolloutSpec(bundle="web", version=2, selector={}, rings=rings, **over)


def test_a_request_parses_with_its_defaults_and_round_trips_through_json() -> None:
    parsed = parse_rollout({**BASE, "selector": {"app": "web"}, "max_unavailable": 3,
                            "on_failure": "rollback", "max_failed_starts": 2})
    assert parsed.selector == {"app": "web"} and parsed.rings == (Ring("all", 100.0),)
    assert (parsed.max_unavailable, parsed.failure_threshold, parsed.on_failure,
            parsed.probation_s, parsed.max_failed_starts) == (3, 0, "rollback", 30.0, 2)
    assert spec_from_json(parsed.to_json()) == parsed
    explicit = parse_rollout({**BASE, "rings": [{"name": "c", "nodes": ["n1", "n2"]}]})
    assert explicit.rings == (Ring("c", nodes=("n1", "n2")),)


@pytest.mark.parametrize("change", [
    {"bundle": None}, {"bundle": "a" * 64}, {"bundle": "-web"}, {"version": 2.0},
    {"version": -1}, {"selector": {"": "x"}}, {"selector": {"k": "v" * 257}},
    {"selector": {"k": "\ud800"}}, {"rings": [None]}, {"rings": [{"name": "a" * 33,
                                                                 "percent": 1}]},
    {"rings": [{"name": "a", "percent": True}]}, {"rings": [{"name": "a", "percent": "50"}]},
    {"rings": [{"name": "a", "percent": float("nan")}]},
    {"rings": [{"name": "a", "nodes": []}]}, {"rings": [{"name": "a", "nodes": "n1"}]},
    {"rings": [{"name": "a", "nodes": [1]}]},
    {"rings": [{"name": "a", "nodes": [f"n{i}" for i in range(10_001)]}]},
    {"rings": [{"name": f"r{i}", "nodes": [f"n{i}-{j}" for j in range(5_001)]}
               for i in range(2)]},
    {"failure_threshold": 1.5}, {"probation_s": float("inf")}, {"on_failure": None},
    {"max_failed_starts": 101}, {"force": 1},
])
def test_a_hostile_value_is_refused_naming_what(change: dict[str, Any]) -> None:
    with pytest.raises(BadFrame) as err:
        parse_rollout({**BASE, **change})
    assert next(iter(change)).split("_")[0] in err.value.message


def test_a_body_that_is_not_an_object_is_refused() -> None:
    for body in (None, [], "web", 7):
        with pytest.raises(BadFrame):
            parse_rollout(body)


def test_percent_rings_are_cumulative_over_the_selected_nodes_in_id_order() -> None:
    nodes = [f"n{i:02}" for i in range(10)]
    placed = place(spec(Ring("canary", 10), Ring("half", 50), Ring("rest", 100)),
                   list(reversed(nodes)))
    rings = {r: [n for n, i in placed if i == r] for r in range(3)}
    assert rings == {0: ["n00"], 1: ["n01", "n02", "n03", "n04"], 2: nodes[5:]}
    # 1% of three nodes still reaches one; a ring whose percent earlier rings covered is empty
    small = place(spec(Ring("a", 1), Ring("b", 1), Ring("c", 100)), ["x", "y", "z"])
    assert small == [("x", 0), ("y", 2), ("z", 2)]


def test_an_explicit_ring_takes_its_nodes_first_and_a_node_is_in_one_ring_only() -> None:
    placed = place(spec(Ring("pick", nodes=("n3", "n9")), Ring("all", 100)),
                   ["n1", "n2", "n3"])
    assert placed == [("n3", 0), ("n9", 0), ("n1", 1), ("n2", 1)]
    assert place(spec(Ring("half", 50)), ["a", "b", "c", "d"]) == [("a", 0), ("b", 0)]


def facts(*rows: tuple[str, int, str, bool]) -> list[NodeFacts]:
    return [NodeFacts(node_id=n, ring=r, pos=i, state=s, ready=ok, reason=f"{s}!")
            for i, (n, r, s, ok) in enumerate(rows)]


def test_a_ring_offers_at_most_max_unavailable_at_once_in_placement_order() -> None:
    d = decide(ring=0, rings=2, max_unavailable=2, failure_threshold=0, nodes=facts(
        ("a", 0, "offered", False), ("b", 0, "pending", False), ("c", 0, "pending", False),
        ("d", 1, "pending", False)))
    assert d.offer == ("b",) and d.advance is None and d.trip is None
    assert d.waiting is not None and d.waiting["nodes"] == ["a", "b", "c"]
    full = decide(ring=0, rings=2, max_unavailable=1, failure_threshold=0,
                  nodes=facts(("a", 0, "activated", False), ("b", 0, "pending", False)))
    assert full.offer == ()


def test_a_ring_advances_only_when_each_node_is_ready_not_merely_healthy() -> None:
    gone = decide(ring=0, rings=2, max_unavailable=5, failure_threshold=0, nodes=facts(
        ("a", 0, "healthy", True), ("b", 0, "healthy", False), ("c", 1, "pending", False)))
    assert gone.advance is None and gone.offer == ()
    assert gone.waiting is not None and gone.waiting["not_connected"] == ["b"]
    ready = decide(ring=0, rings=2, max_unavailable=5, failure_threshold=0, nodes=facts(
        ("a", 0, "healthy", True), ("b", 0, "healthy", True), ("c", 1, "pending", False)))
    assert ready.advance == 1
    last = decide(ring=1, rings=2, max_unavailable=5, failure_threshold=0, nodes=facts(
        ("a", 0, "healthy", True), ("c", 1, "healthy", True)))
    assert last.advance == 2  # past the last ring: completed


def test_failures_past_the_threshold_trip_with_the_nodes_figures_and_reasons() -> None:
    nodes = facts(("a", 0, "rolled_back", False), ("b", 0, "healthy", True),
                  ("c", 0, "rejected", False), ("d", 1, "pending", False))
    d = decide(ring=0, rings=2, max_unavailable=5, failure_threshold=1, nodes=nodes)
    assert d.trip == {"check": "failure_threshold", "nodes": ["a", "c"],
                      "figures": {"failed": 2, "threshold": 1, "accepted": 0},
                      "reasons": {"a": "rolled_back!", "c": "rejected!"}}
    assert d.offer == () and d.advance is None
    # a tolerated failure does not hold its ring back
    tolerated = decide(ring=0, rings=2, max_unavailable=5, failure_threshold=2, nodes=nodes)
    assert tolerated.trip is None and tolerated.advance == 1
    # failures an operator's resume accepted no longer count
    accepted = decide(ring=0, rings=2, max_unavailable=5, failure_threshold=0,
                      accepted_failures=2, nodes=nodes)
    assert accepted.trip is None
