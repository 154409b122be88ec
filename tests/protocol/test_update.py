"""protocol/update.py: the update.now offer and the bundle.status report, hostile values
refused by name, good ones round-tripped."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.protocol.errors import BadFrame
from tether.protocol.update import (
    BUNDLE_STATES,
    BundleStatus,
    UpdateOffer,
    parse_bundle_status,
    parse_update_offer,
)

SHA = "ab" * 32


def offer(**more: Any) -> dict[str, Any]:
    return {"name": "sensor", "version": 3, "sha256": SHA, "size": 1000, **more}


def status(**more: Any) -> dict[str, Any]:
    return {"name": "sensor", "version": 3, "state": "healthy", "at_ms": 1, **more}


def test_an_offer_takes_its_defaults_and_round_trips() -> None:
    parsed = parse_update_offer(offer())
    assert parsed == UpdateOffer(name="sensor", version=3, kind="app", sha256=SHA, size=1000)
    full = UpdateOffer(name="rt", version=9, kind="runtime", sha256=SHA, size=5,
                       rollout_id="r-1", rollback=True, probation_s=0.5,
                       failure_threshold=7, force=True)
    assert parse_update_offer(full.args()) == full


@pytest.mark.parametrize(("field", "value"), [
    ("name", "../etc"), ("name", "UPPER"), ("name", ""), ("name", 7), ("name", "a" * 64),
    ("version", 0), ("version", True), ("version", 2**53 + 1), ("version", "3"),
    ("version", 1.5), ("sha256", "AB" * 32), ("sha256", "ab" * 31), ("size", 0),
    ("size", -1), ("size", 2**41), ("kind", "script"), ("rollout_id", "../x"),
    ("rollout_id", "x" * 65), ("rollout_id", ""), ("rollback", "yes"), ("rollback", 1),
    ("probation_s", math.nan), ("probation_s", math.inf), ("probation_s", -1),
    ("probation_s", 86_401), ("probation_s", True), ("failure_threshold", 0),
    ("failure_threshold", 101), ("failure_threshold", 2.0), ("force", None),
], ids=lambda v: repr(v)[:40])
def test_an_offer_off_the_rules_is_refused_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(BadFrame, match=field if field != "kind" else "kind"):
        parse_update_offer(offer(**{field: value}))


def test_an_offer_that_is_not_a_map_or_misses_a_field_is_refused() -> None:
    for bad in (None, [], "x", b"x", 3):
        with pytest.raises(BadFrame, match="must be a map"):
            parse_update_offer(bad)
    for missing in ("name", "version", "sha256", "size"):
        args = offer()
        del args[missing]
        with pytest.raises(BadFrame, match=missing):
            parse_update_offer(args)


def test_a_status_round_trips_with_its_detail_read_only() -> None:
    value = BundleStatus(name="sensor", version=3, state="rolled_back", at_ms=5,
                         code="start_failed", reason="exited 3 times",
                         rollout_id="r1", active=2, last_known_good=2,
                         detail={"failed_starts": 3, "log_tail": ["boom"]})
    parsed = parse_bundle_status(value.body())
    assert parsed == BundleStatus(**{**value.body(), "detail": parsed.detail})
    assert dict(parsed.detail) == {"failed_starts": 3, "log_tail": ["boom"]}
    with pytest.raises(TypeError):
        parsed.detail["x"] = 1  # type: ignore[index]


@pytest.mark.parametrize("body", [
    status(state="installed"), status(state=None), status(state="rejected"),
    status(state="rejected", code="start_failed"), status(state="rolled_back"),
    status(state="failed", code="downgrade"), status(code="nonsense"),
    status(reason="x" * 501), status(reason="\ud800"), status(reason=5),
    status(at_ms=-1), status(at_ms=2**60), status(at_ms=math.nan), status(active=0),
    status(last_known_good="2"), status(kind="os"), status(detail=[1]),
    status(detail={"a": {"b": {"c": 1}}}), status(detail={"x": "y" * 9000}),
    status(detail={"x": math.nan}), status(detail={"x": b"bytes"}),
    status(detail={"k" * 65: 1}), status(name="a/b"), status(version=-3),
    status(rollout_id=["r"]),
], ids=lambda b: repr(b)[-60:])
def test_a_status_off_the_rules_is_a_bad_frame(body: dict[str, Any]) -> None:
    with pytest.raises(BadFrame):
        parse_bundle_status(body)


def test_unknown_keys_are_dropped_and_every_state_parses() -> None:
    assert parse_bundle_status(status(newer_field={"x": 1})) == parse_bundle_status(status())
    for state in BUNDLE_STATES:
        code = {"rejected": "downgrade", "failed": "download_failed",
                "rolled_back": "health_failed"}.get(state)
        assert parse_bundle_status(status(state=state, code=code)).state == state


@settings(deadline=None)  # a loaded CI box: the examples, not their speed
@given(st.dictionaries(st.sampled_from(["name", "version", "sha256", "size", "kind",
                                        "rollout_id", "rollback", "probation_s",
                                        "failure_threshold", "force", "state", "at_ms",
                                        "code", "reason", "detail", "active"]),
                       st.recursive(st.none() | st.booleans() | st.integers()
                                    | st.floats() | st.text(max_size=20),
                                    lambda c: st.lists(c, max_size=3)
                                    | st.dictionaries(st.text(max_size=5), c, max_size=3),
                                    max_leaves=8)))
def test_any_value_parses_or_is_a_bad_frame_never_another_error(body: dict[str, Any]) -> None:
    for parse in (parse_update_offer, parse_bundle_status):
        try:
            parse(body)
        except BadFrame:
            pass


@pytest.mark.parametrize("args", [
    None, [], "web", {}, {"name": None}, {"name": 7}, {"name": ""}, {"name": "../etc"},
    {"name": "Web"}, {"name": "a" * 64}, {"name": "web\x00"}, {"name": ["web"]}])
def test_bundle_stop_args_off_the_rules_are_refused_naming_the_field(args: object) -> None:
    from tether.protocol.update import parse_bundle_stop

    with pytest.raises(BadFrame) as info:
        parse_bundle_stop(args)
    assert "'name'" in info.value.message or "map" in info.value.message


def test_bundle_stop_args_round_trip_and_unknown_keys_are_dropped() -> None:
    from tether.protocol.update import BundleStop, parse_bundle_stop

    assert parse_bundle_stop({"name": "web", "extra": 1}) == BundleStop("web")
    assert parse_bundle_stop(BundleStop("web-2").args()) == BundleStop("web-2")
