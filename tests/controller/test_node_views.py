"""A node's view on a replica that does not hold its session (services/nodes.py): judged
from what the owner last wrote to the shared store, not reported offline."""

from __future__ import annotations

from typing import Any

from tether.controller.services.nodes import NodeViews
from tether.controller.services.peek import NodePeek
from tether.controller.services.presence import SessionSnapshot
from tether.controller.store.records import NodeRecord
from tether.controller.views import iso
from tether.protocol.liveness import Thresholds

NOW = 1_000_000.0
TH = Thresholds(heartbeat_s=15, stale_after_s=60, offline_after_s=300)


class HeldElsewhere:
    def snapshot(self, node_id: str) -> SessionSnapshot | None:
        return None  # this replica holds no session for any node


def row(**over: Any) -> NodeRecord:
    base: dict[str, Any] = {
        "node_id": "n1", "labels": {}, "enabled": True, "created_at": NOW - 3600,
        "current_session": "s_other", "current_replica": "r-a", "last_seen_at": NOW - 5,
        "closed_at": None, "closed_by_goodbye": False, "runtime_state": "attached",
        "runtime_version": "0.1.0", "sidecar": {}, "capabilities": [], "policy": None,
        "apps": {}, "dead_letters_total": 0}
    base.update(over)
    return NodeRecord(**base)


views = NodeViews(HeldElsewhere(), TH, replica_id="r-b", wall=lambda: NOW)


def test_a_node_held_by_another_replica_is_online_by_the_owners_last_touch() -> None:
    view = views.view(row())
    assert view["liveness"] == "online"
    assert view["session"] == {"session_id": "s_other", "replica": "r-a"}
    assert view["runtime"]["state"] == "attached"


def test_it_turns_stale_when_the_owner_stops_touching_it_and_degraded_when_detached(
        ) -> None:
    assert views.view(row(last_seen_at=NOW - 61))["liveness"] == "stale"
    assert views.view(row(runtime_state="detached"))["liveness"] == "degraded"


def test_a_node_with_no_open_session_anywhere_is_judged_by_its_close_as_before() -> None:
    closed = row(current_session=None, current_replica=None, closed_at=NOW - 10,
                 closed_by_goodbye=True)
    assert views.view(closed)["liveness"] == "offline"
    assert views.view(closed)["session"] is None


def test_a_session_of_this_replica_that_presence_has_let_go_is_not_shown_live() -> None:
    """Between the registry releasing a session and the store recording its close, the
    row still names it: it is this replica's own, ending, never judged from touches."""
    assert views.view(row(current_replica="r-b"))["liveness"] == "offline"
    assert views.view(row(current_replica=None))["liveness"] == "offline"


def test_hostile_stored_values_never_make_the_view_fail() -> None:
    """Whatever a row holds, the record read from it (records.py rule 1) makes a view."""
    stored = {"node_id": "n1", "labels": "{}", "enabled": 1, "created_at": NOW - 3600,
              "current_session": "s_other", "current_replica": "r-a",
              "last_seen_at": NOW - 5, "closed_at": None, "closed_by_goodbye": 0,
              "runtime_state": "attached", "runtime_version": "0.1.0", "sidecar": "{}",
              "capabilities": "[]", "policy": None, "apps": "{}", "dead_letters_total": 0,
              "health": None, "bundles": None}
    for bad in ({"last_seen_at": None}, {"last_seen_at": True}, {"last_seen_at": "x"},
                {"last_seen_at": float("nan")}, {"current_session": 5},
                {"runtime_state": None}, {"labels": "{not json"}, {"labels": "[1]"},
                {"capabilities": '{"a": 1}'}, {"closed_at": "soon"}, {"apps": "\ud800"},
                {"health": "[1"}, {"health": "7"}, {"bundles": "[1"}):
        view = views.view(NodeRecord.from_row({**stored, **bad}))
        assert view["liveness"] in {"online", "stale", "offline", "degraded"}, bad
        assert isinstance(view["labels"], dict) and isinstance(view["apps"], dict)
        assert isinstance(view["capabilities"], list)
        assert NodeRecord.from_row({**stored, **bad}).health == {}
        assert view["bundles"] == {}


LIVE = SessionSnapshot(node_id="n1", session_id="s_other", last_frame_age_s=1.0,
                       opened_at=NOW - 60, runtime={"state": "attached", "version": "0.1.0"},
                       transport={"rtt_ms": 12.5, "reconnects": 3})


async def test_one_nodes_view_shows_the_live_session_the_owner_reports() -> None:
    asked: list[str] = []

    async def remote(node_id: str) -> NodePeek | None:
        asked.append(node_id)
        return NodePeek("r-a", LIVE)

    one = NodeViews(HeldElsewhere(), TH, replica_id="r-b", wall=lambda: NOW,
                    remote_session=remote)
    view = await one.view_one(row())
    assert view["session"]["replica"] == "r-a"
    assert view["transport"]["rtt_ms"] == 12.5
    assert view["last_seen_at"] == iso(NOW - 1.0)
    # a node no replica holds is not asked about, and a list never asks
    assert (await one.view_one(row(current_session=None, current_replica=None)))[
        "transport"] is None
    assert one.view(row())["transport"] is None
    assert asked == ["n1"]


async def test_one_nodes_view_is_judged_from_the_store_when_the_owner_does_not_answer(
        ) -> None:
    async def silent(node_id: str) -> NodePeek | None:
        return None

    one = NodeViews(HeldElsewhere(), TH, replica_id="r-b", wall=lambda: NOW,
                    remote_session=silent)
    assert await one.view_one(row()) == {**views.view(row()), "health": None}


class HeldHere:
    def snapshot(self, node_id: str) -> SessionSnapshot | None:
        return LIVE


def test_a_node_held_here_names_this_replica_as_its_sessions_holder() -> None:
    """session.replica names the holder whichever replica answers, itself included."""
    here = NodeViews(HeldHere(), TH, replica_id="r-b", wall=lambda: NOW)
    view = here.view(row(current_replica="r-b"))
    assert view["session"]["replica"] == "r-b" and view["transport"]["rtt_ms"] == 12.5
