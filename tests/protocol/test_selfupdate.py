"""protocol/selfupdate.py: the heartbeat's `update`, local.update, and the files the runtime
and its supervisor exchange, parsed once and bounded; an undecided update decided by the
pointer."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tether.protocol.errors import BadFrame
from tether.protocol.frames import Frame, Heartbeat
from tether.protocol.liveness import Liveness, Thresholds, liveness
from tether.protocol.local import LocalUpdate
from tether.protocol.selfupdate import (
    MAX_FILE_BYTES,
    SlotPointer,
    UpdateInfo,
    UpdateRecord,
    UpdateRequest,
    dumps,
    parse_pointer,
    parse_update_record,
    parse_update_request,
    resolve_interrupted,
)

REQUEST = UpdateRequest(update_id="u1", slot="a", name="tether-runtime", bundle_version=2,
                        requested_at_ms=1_000, version="0.2.0", command_id="cmd-1")
RECORD = UpdateRecord(request=REQUEST, previous=SlotPointer(), stage="attaching",
                      stage_started_ms=2_000, deadline_ms=62_000, candidate_pid=42)


def _request(**changes: Any) -> bytes:
    return json.dumps({**REQUEST.to_map(), **changes}).encode()


def test_an_update_round_trips_through_a_heartbeat() -> None:
    hb = Heartbeat(uptime_s=1.0, update={"stage": "replay", "version": "0.2.0", "slot": "b",
                                         "age_s": 1.5, "deadline_s": 60})
    body = hb.to_body()
    assert body["update"] == {"stage": "replay", "version": "0.2.0", "slot": "b",
                              "age_s": 1.5, "deadline_s": 60}
    assert Heartbeat.from_body(body) == hb


def test_a_heartbeat_without_an_update_carries_no_update_key() -> None:
    assert "update" not in Heartbeat(uptime_s=1.0).to_body()
    assert Heartbeat.from_body({"uptime_s": 1}).update == UpdateInfo()


@pytest.mark.parametrize("update", [
    {"stage": "exploding"}, {"stage": ["applying"]}, {"stage": b"applying"},
    {"stage": "replay", "age_s": float("nan")}, {"stage": "replay", "age_s": -1},
    {"stage": "replay", "deadline_s": 1e300}, {"stage": "replay", "slot": "../../etc"},
    {"stage": "replay", "version": "x" * 65}, {"stage": "replay", "version": 7},
    "updating", [1, 2],
])
def test_a_hostile_heartbeat_update_is_a_bad_frame(update: object) -> None:
    with pytest.raises(BadFrame):
        Heartbeat.from_body({"uptime_s": 1, "update": update})


def test_unknown_keys_of_an_update_are_dropped() -> None:
    info = UpdateInfo.from_map({"stage": "applying", "secret": "x" * 10_000}, "update")
    assert info.to_map() == {"stage": "applying"}


def test_local_update_carries_the_same_value_and_an_empty_one_ends_the_update() -> None:
    body = LocalUpdate.parse(Frame(t="local.update", b={"update": {"stage": "starting"}}))
    assert body.update.stage == "starting"
    assert LocalUpdate.parse(Frame(t="local.update", b={"update": {}})).update == UpdateInfo()
    with pytest.raises(BadFrame):
        LocalUpdate.parse(Frame(t="local.update", b={"update": {"stage": "x" * 10}}))


def test_liveness_is_updating_rather_than_degraded_while_an_update_runs() -> None:
    th = Thresholds()
    common: dict[str, Any] = {"session_open": True, "last_frame_age_s": 1.0,
                              "closed_age_s": None, "closed_by_goodbye": False,
                              "thresholds": th}
    assert liveness(runtime_state="restarting", **common) is Liveness.DEGRADED
    assert liveness(runtime_state="restarting", updating=True, **common) is Liveness.UPDATING
    assert liveness(runtime_state="attached", updating=True, **common) is Liveness.UPDATING
    stale = {**common, "last_frame_age_s": th.stale_after_s}
    assert liveness(runtime_state="restarting", updating=True, **stale) is Liveness.STALE


def test_a_request_round_trips() -> None:
    assert parse_update_request(dumps(REQUEST.to_map())) == REQUEST


@pytest.mark.parametrize("raw", [
    b"", b"[]", b"{", b"NaN", _request(slot="base"), _request(slot="../a"),
    _request(update_id="a b"), _request(update_id=""), _request(name="Tether"),
    _request(bundle_version=0), _request(bundle_version=2**60), _request(bundle_version=1.5),
    _request(bundle_version=True), _request(requested_at_ms=-1),
    _request(command_id="x\ny"), _request(command_id="c" * 200), _request(force="yes"),
    _request(version="v" * 65), b'{"update_id": NaN}',
    b"{" + b'"pad": "' + b"x" * MAX_FILE_BYTES + b'"}',
])
def test_a_hostile_request_file_is_refused(raw: bytes) -> None:
    with pytest.raises(BadFrame):
        parse_update_request(raw)


def test_a_record_round_trips_with_its_recovery_metadata() -> None:
    decided = UpdateRecord(**{**{f: getattr(RECORD, f) for f in RECORD.__slots__},
                              "outcome": "rolled_back", "failed_stage": "attaching",
                              "reason": "the candidate exited with code 1",
                              "backup_path": "/opt/tether", "log_tail": ("a", "b"),
                              "decided_at_ms": 3_000})
    assert parse_update_record(dumps(decided.to_map())) == decided
    assert decided.recovery() == {"stage": "attaching", "slot": "a", "backup_slot": "base",
                                  "backup_path": "/opt/tether", "runtime_version": "0.2.0",
                                  "log_tail": ["a", "b"], "update_id": "u1"}


@pytest.mark.parametrize("changes", [
    {"stage": "promoted"}, {"outcome": "maybe"}, {"log_tail": ["x"] * 21},
    {"log_tail": ["x" * 301]}, {"log_tail": "x"}, {"backup_path": "p" * 2000},
    {"candidate_pid": 0}, {"deadline_ms": float("inf")}, {"request": "u1"},
    {"previous": {"slot": "c"}}, {"failed_stage": "done"},
])
def test_a_hostile_record_is_refused(changes: dict[str, Any]) -> None:
    raw = json.dumps({**RECORD.to_map(), **changes}).encode()
    with pytest.raises(BadFrame):
        parse_update_record(raw)


@pytest.mark.parametrize("raw", [b'{"slot": "c"}', b'{"slot": "a", "bundle_version": -1}',
                                 b'{"slot": 1}', b"{}"])
def test_a_hostile_pointer_is_refused(raw: bytes) -> None:
    with pytest.raises(BadFrame):
        parse_pointer(raw)


def test_an_undecided_update_is_promoted_only_when_the_pointer_names_its_slot_and_id() -> None:
    switched = SlotPointer(slot="a", version="0.2.0", update_id="u1")
    assert resolve_interrupted(RECORD, switched, 9, "gone").outcome == "promoted"
    for pointer in (SlotPointer(), SlotPointer(slot="a", update_id="older"),
                    SlotPointer(slot="b", update_id="u1")):
        decided = resolve_interrupted(RECORD, pointer, 9, "gone")
        assert (decided.outcome, decided.failed_stage, decided.reason) == \
            ("rolled_back", "attaching", "gone")


def test_a_decided_record_stays_as_it_was() -> None:
    decided = resolve_interrupted(RECORD, SlotPointer(), 9, "gone")
    assert resolve_interrupted(decided, SlotPointer(slot="a", update_id="u1"), 10, "x") \
        == decided
