"""The pure rules of jobs (controller/domain/jobs.py), without a store or a loop."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tether.controller.domain.jobs import (
    LIVENESS_STATES,
    OFFLINE_POLICIES,
    PART_TERMINAL,
    in_flight,
    initial_part,
    job_state,
    matches,
    release_slots,
    shown_state,
    summary,
)
from tether.protocol.liveness import Liveness


def test_a_selector_needs_every_label_exactly_and_one_of_the_wanted_liveness_states() -> None:
    labels = {"env": "lab", "rack": "3"}
    assert matches(labels, "online", want_labels={"env": "lab"}, want_liveness=None)
    assert not matches(labels, "online", want_labels={"env": "prod"}, want_liveness=None)
    assert not matches(labels, "online", want_labels={"zone": "a"}, want_liveness=None)
    assert matches(labels, "stale", want_labels={}, want_liveness=frozenset({"stale"}))
    assert not matches(labels, "offline", want_labels={"env": "lab"},
                       want_liveness=frozenset({"online", "degraded"}))


def test_an_unreachable_node_is_queued_failed_as_offline_or_skipped_by_policy() -> None:
    assert [initial_part("offline", p) for p in OFFLINE_POLICIES] == [
        "pending", "offline", "skipped"]
    assert [initial_part("stale", p) for p in OFFLINE_POLICIES] == [
        "pending", "offline", "skipped"]
    for live in ("online", "degraded"):
        assert {initial_part(live, p) for p in OFFLINE_POLICIES} == {"pending"}


def test_a_part_shows_its_commands_state_once_submitted() -> None:
    assert shown_state("submitted", "running") == "running"
    assert shown_state("submitted", None) == "queued"
    assert shown_state("releasing", None) == "pending"
    assert shown_state("skipped", None) == "skipped"


@given(st.one_of(st.none(), st.integers(1, 50)), st.integers(0, 60), st.integers(0, 60))
def test_a_claim_never_puts_more_than_max_in_flight_in_flight(
        limit: int | None, flying: int, pending: int) -> None:
    n = release_slots(limit, flying, pending)
    assert 0 <= n <= pending
    if limit is None:
        assert n == pending
    else:
        assert flying + n <= max(limit, flying)
        assert n == pending or flying + n >= limit  # and it fills every free slot


def test_in_flight_counts_releasing_parts_and_commands_not_yet_ended() -> None:
    parts = [("releasing", None), ("submitted", "queued"), ("submitted", "succeeded"),
             ("submitted", None), ("pending", None), ("skipped", None)]
    assert in_flight(parts) == 3


@given(st.lists(st.sampled_from(sorted(PART_TERMINAL | {"pending", "queued", "running"}))))
def test_a_job_is_done_exactly_when_every_part_ended_unless_cancelled(
        shown: list[str]) -> None:
    assert job_state("cancelled", shown) == "cancelled"
    ended = all(s in PART_TERMINAL for s in shown)
    assert job_state("running", shown) == ("done" if ended else "running")
    assert sum(summary(shown).values()) == len(shown)


def test_a_selector_knows_every_liveness_state_the_api_reports() -> None:
    assert set(LIVENESS_STATES) == {s.value for s in Liveness}
