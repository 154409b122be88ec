"""Liveness (PROTOCOL.md §5) and controller-authority freshness, as pure functions of ages."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tether.protocol.liveness import (
    Freshness,
    Liveness,
    Thresholds,
    authority_freshness,
    liveness,
)

PROPERTY = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

T = Thresholds()  # 15 / 60 / 300, the defaults of PROTOCOL.md §4 welcome


def live(*, session_open: bool = False, last_frame_age_s: float | None = None,
         runtime_state: str | None = "attached", closed_age_s: float | None = None,
         closed_by_goodbye: bool = False, thresholds: Thresholds = T) -> Liveness:
    return liveness(session_open=session_open, last_frame_age_s=last_frame_age_s,
                    runtime_state=runtime_state, closed_age_s=closed_age_s,
                    closed_by_goodbye=closed_by_goodbye, thresholds=thresholds)


def test_the_default_thresholds_are_those_of_protocol_md() -> None:
    assert (T.heartbeat_s, T.stale_after_s, T.offline_after_s) == (15.0, 60.0, 300.0)


# The §5 table, one row per case, with the boundaries on both sides.
TABLE: list[tuple[str, dict[str, Any], Liveness]] = [
    ("open, fresh frame, runtime attached",
     {"session_open": True, "last_frame_age_s": 0.0}, Liveness.ONLINE),
    ("open, frame just younger than stale_after",
     {"session_open": True, "last_frame_age_s": 59.999}, Liveness.ONLINE),
    ("open, no frame for exactly stale_after",
     {"session_open": True, "last_frame_age_s": 60.0}, Liveness.STALE),
    ("open, no frame for long",
     {"session_open": True, "last_frame_age_s": 10_000.0}, Liveness.STALE),
    ("open, runtime detached",
     {"session_open": True, "last_frame_age_s": 1.0, "runtime_state": "detached"},
     Liveness.DEGRADED),
    ("open, runtime restarting",
     {"session_open": True, "last_frame_age_s": 1.0, "runtime_state": "restarting"},
     Liveness.DEGRADED),
    ("open, runtime detached and silent past stale_after",
     {"session_open": True, "last_frame_age_s": 60.0, "runtime_state": "detached"},
     Liveness.STALE),
    ("closed just now, not by goodbye",
     {"closed_age_s": 0.0}, Liveness.STALE),
    ("closed just under offline_after ago",
     {"closed_age_s": 299.999}, Liveness.STALE),
    ("closed exactly offline_after ago",
     {"closed_age_s": 300.0}, Liveness.OFFLINE),
    ("closed long ago",
     {"closed_age_s": 86_400.0}, Liveness.OFFLINE),
    ("closed just now by goodbye",
     {"closed_age_s": 0.0, "closed_by_goodbye": True}, Liveness.OFFLINE),
    ("never connected",
     {}, Liveness.OFFLINE),
]


@pytest.mark.parametrize(("case", "expected"), [(kw, want) for _, kw, want in TABLE],
                         ids=[name for name, _, _ in TABLE])
def test_liveness_follows_the_table_in_protocol_md(case: dict[str, Any],
                                                     expected: Liveness) -> None:
    assert live(**case) is expected


@PROPERTY
@given(st.floats(min_value=0, max_value=1e6))
def test_a_node_that_said_goodbye_is_offline_at_once_whatever_the_age(age_s: float) -> None:
    assert live(closed_age_s=age_s, closed_by_goodbye=True) is Liveness.OFFLINE


@PROPERTY
@given(st.floats(min_value=0, max_value=1e6), st.floats(min_value=0, max_value=1e6))
def test_a_closed_session_is_stale_exactly_while_younger_than_offline_after(
        age_s: float, later_s: float) -> None:
    state = live(closed_age_s=age_s)
    assert state is (Liveness.STALE if age_s < T.offline_after_s else Liveness.OFFLINE)
    # and it never comes back from offline as time passes
    if state is Liveness.OFFLINE:
        assert live(closed_age_s=age_s + later_s) is Liveness.OFFLINE


@PROPERTY
@given(st.floats(min_value=0, max_value=1e6),
       st.sampled_from(["attached", "detached", "restarting"]))
def test_an_open_session_is_never_offline_and_is_stale_once_silent_for_stale_after(
        age_s: float, runtime: str) -> None:
    state = live(session_open=True, last_frame_age_s=age_s, runtime_state=runtime)
    assert state is not Liveness.OFFLINE
    assert (state is Liveness.STALE) == (age_s >= T.stale_after_s)


@PROPERTY
@given(st.floats(min_value=0.001, max_value=100), st.floats(min_value=0.001, max_value=100),
       st.floats(min_value=0.001, max_value=100), st.floats(min_value=0, max_value=1e4))
def test_custom_thresholds_move_the_boundaries(hb: float, stale_gap: float, offline_gap: float,
                                               age_s: float) -> None:
    th = Thresholds(heartbeat_s=hb, stale_after_s=hb + stale_gap,
                    offline_after_s=hb + stale_gap + offline_gap)
    assert (live(session_open=True, last_frame_age_s=age_s, thresholds=th) is Liveness.STALE
            ) == (age_s >= th.stale_after_s)
    assert (live(closed_age_s=age_s, thresholds=th) is Liveness.STALE
            ) == (age_s < th.offline_after_s)


# --- authority freshness -------------------------------------------------------------------


@pytest.mark.parametrize(("age_s", "expected"), [
    (None, Freshness.MISSING),
    (0.0, Freshness.FRESH),
    (29.999, Freshness.FRESH),
    (30.0, Freshness.AGING),  # 2 x heartbeat_s
    (59.999, Freshness.AGING),
    (60.0, Freshness.STALE),  # stale_after_s
    (1e9, Freshness.STALE),
])
def test_authority_freshness_boundaries_with_the_default_thresholds(
        age_s: float | None, expected: Freshness) -> None:
    assert authority_freshness(age_s, heartbeat_s=15, stale_after_s=60) is expected


ORDER = [Freshness.FRESH, Freshness.AGING, Freshness.STALE]


@PROPERTY
@given(st.floats(min_value=0.001, max_value=100), st.floats(min_value=0.001, max_value=100),
       st.floats(min_value=0, max_value=1e4), st.floats(min_value=0, max_value=1e4))
@example(hb=40.0, stale_gap=20.0, age_s=70.0, later_s=0.0)
def test_authority_is_stale_from_stale_after_on_and_never_gets_fresher_with_age(
        hb: float, stale_gap: float, age_s: float, later_s: float) -> None:
    """For any thresholds Thresholds accepts. Fails today when 2 * heartbeat_s >
    stale_after_s (e.g. 40 / 60): liveness.authority_freshness checks ``< 2 * heartbeat_s``
    first, so an ack 70 s old is still FRESH although stale_after_s is 60."""
    th = Thresholds(heartbeat_s=hb, stale_after_s=hb + stale_gap,
                    offline_after_s=hb + stale_gap + 1)
    now = authority_freshness(age_s, heartbeat_s=th.heartbeat_s,
                              stale_after_s=th.stale_after_s)
    later = authority_freshness(age_s + later_s, heartbeat_s=th.heartbeat_s,
                                stale_after_s=th.stale_after_s)
    assert (now is Freshness.STALE) == (age_s >= th.stale_after_s)
    assert ORDER.index(later) >= ORDER.index(now)


# --- thresholds ----------------------------------------------------------------------------


@pytest.mark.parametrize(("hb", "stale", "offline"), [
    (0, 60, 300), (-1, 60, 300), (60, 60, 300), (61, 60, 300), (15, 300, 300),
    (15, 400, 300), (15, 60, 0), (math.nan, 60, 300), (15, math.nan, 300),
    (15, 60, math.nan),
])
def test_thresholds_refuse_an_ordering_other_than_heartbeat_then_stale_then_offline(
        hb: float, stale: float, offline: float) -> None:
    with pytest.raises(ValueError, match="heartbeat_s"):
        Thresholds(heartbeat_s=hb, stale_after_s=stale, offline_after_s=offline)


def test_thresholds_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        T.heartbeat_s = 1  # type: ignore[misc]
