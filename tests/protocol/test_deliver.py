"""Commands on their way to a node (issue 11 items 2 and 6): submitted args are plain
values, and the cmd.deliver frame checked at submit bounds the frame sent later."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.protocol.codec import MAX_FRAME_BYTES, decode_msgpack
from tether.protocol.deliver import (
    REFUSED_KIND,
    CommandTooLarge,
    command_args,
    command_kind,
    encode_deliver,
    refused_placeholder,
)
from tether.protocol.errors import BadFrame
from tether.protocol.frames import CmdDeliver

PROPERTY = settings(max_examples=60, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
CID = "c_" + "0" * 32
NOW_MS = 1_760_000_000_000


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


HOSTILE_ARGS = [
    {"x": float("nan")}, {"x": float("inf")}, {"x": float("-inf")}, {"x": [1.0, float("nan")]},
    {"x": 1 << 64}, {"x": 1 << 63}, {"x": -(1 << 63) - 1}, {"x": nested(40)},
    {"x": b"bytes"}, {"x": "\ud800"}, {"\ud800": 1}, {"x": list(range(70_000))},
]


@pytest.mark.parametrize("args", HOSTILE_ARGS, ids=lambda a: repr(a)[:30])
def test_args_that_json_or_the_store_cannot_hold_are_refused(args: dict[str, Any]) -> None:
    with pytest.raises(BadFrame):
        command_args("diag.ping", args)


@pytest.mark.parametrize("args", [[1], "x", 3, None])
def test_args_must_be_a_map(args: object) -> None:
    with pytest.raises(BadFrame, match="map"):
        command_args("diag.ping", args)


@pytest.mark.parametrize("kind", ["", "k" * 65, 5, None, "\ud800"])
def test_a_kind_is_bounded_valid_text(kind: object) -> None:
    with pytest.raises(BadFrame):
        command_kind(kind)


EXEC_HOSTILE = [
    {}, {"argv": []}, {"argv": "true"}, {"argv": ["true", 1]}, {"argv": ["a\x00b"]},
    {"argv": ["x"] * 5000}, {"argv": ["x" * ((1 << 20) + 1)]},
    {"argv": ["true"], "env": ["A=1"]}, {"argv": ["true"], "env": {"A": 1}},
    {"argv": ["true"], "env": {"A=B": "1"}}, {"argv": ["true"], "env": {"": "1"}},
    {"argv": ["true"], "env": {"A": "x\x00"}}, {"argv": ["true"], "cwd": 5},
    {"argv": ["true"], "cwd": ""}, {"argv": ["true"], "cwd": "/tmp\x00/x"},
    {"argv": ["true"], "timeout_s": float("nan")}, {"argv": ["true"], "timeout_s": float("inf")},
    {"argv": ["true"], "timeout_s": 0}, {"argv": ["true"], "timeout_s": -1},
    {"argv": ["true"], "timeout_s": True}, {"argv": ["true"], "timeout_s": "5"},
    {"argv": ["true"], "timeout_s": 1e300},
]


@pytest.mark.parametrize("args", EXEC_HOSTILE, ids=lambda a: repr(a)[:40])
def test_exec_args_are_typed(args: dict[str, Any]) -> None:
    with pytest.raises(BadFrame):
        command_args("exec", args)


def test_good_exec_args_come_back_as_a_plain_copy() -> None:
    args = {"argv": ["echo", "hi"], "env": {"A": "1"}, "cwd": "/tmp", "timeout_s": 5,
            "extra": {"n": [1, 2.5, None, True]}}
    assert command_args("exec", args) == args


@pytest.mark.parametrize("kind", ["cancel", "pause", "resume"])
def test_control_kinds_need_a_command_id(kind: str) -> None:
    with pytest.raises(BadFrame):
        command_args(kind, {})
    with pytest.raises(BadFrame):
        command_args(kind, {"command_id": "c" * 200})
    assert command_args(kind, {"command_id": "c_1"}) == {"command_id": "c_1"}


# -- the frame --------------------------------------------------------------------------------

def test_float_heavy_args_double_on_the_wire_and_are_refused_with_the_limit() -> None:
    """The issue's case: JSON writes 0.12 in 4 bytes, msgpack every float in 9."""
    args = {"x": [0.12] * 120_000}
    json_size = len(json.dumps(args, separators=(",", ":")))
    assert json_size < MAX_FRAME_BYTES * 0.6  # the JSON is well under the cap
    with pytest.raises(CommandTooLarge, match=f"{MAX_FRAME_BYTES}-byte") as info:
        encode_deliver(command_id=CID, kind="diag.ping", args=args, created_ms=NOW_MS,
                       deadline_ms=None, max_frame=MAX_FRAME_BYTES)
    assert info.value.code == "frame_too_large" and info.value.http_status == 413


def test_a_frame_exactly_at_the_cap_is_accepted_and_one_byte_more_is_not() -> None:
    base = len(encode_deliver(command_id=CID, kind="exec", args={"pad": ""},
                              created_ms=NOW_MS, deadline_ms=None, max_frame=1 << 30))
    pad = 4096 - base + 2  # a str8/16 header: sizes here stay in the 2-byte header range
    fits = {"pad": "x" * pad}
    size = len(encode_deliver(command_id=CID, kind="exec", args=fits, created_ms=NOW_MS,
                              deadline_ms=None, max_frame=1 << 30))
    assert encode_deliver(command_id=CID, kind="exec", args=fits, created_ms=NOW_MS,
                          deadline_ms=None, max_frame=size)
    with pytest.raises(CommandTooLarge):
        encode_deliver(command_id=CID, kind="exec", args=fits, created_ms=NOW_MS,
                       deadline_ms=None, max_frame=size - 1)


@PROPERTY
@given(args=st.dictionaries(st.text(max_size=8), st.integers(-(1 << 63), (1 << 63) - 1) |
                            st.floats(allow_nan=False, allow_infinity=False) |
                            st.text(max_size=40), max_size=8),
       q=st.integers(1, (1 << 63) - 1),
       deadline=st.none() | st.integers(0, 1 << 50))
def test_the_frame_checked_at_submit_bounds_the_frame_sent_at_any_sequence_number(
        args: dict[str, Any], q: int, deadline: int | None) -> None:
    at_submit = encode_deliver(command_id=CID, kind="exec", args=args, created_ms=NOW_MS,
                               deadline_ms=deadline, max_frame=1 << 30)
    sent = encode_deliver(command_id=CID, kind="exec", args=args, created_ms=NOW_MS,
                          deadline_ms=deadline, q=q, max_frame=len(at_submit))
    frame = decode_msgpack(sent)
    assert frame.q == q
    assert CmdDeliver.parse(frame).args == args


def test_the_placeholder_for_a_frame_that_can_never_be_sent_is_small_and_runs_nothing() -> None:
    data = refused_placeholder(command_id=CID, q=42)
    frame = decode_msgpack(data)
    body = CmdDeliver.parse(frame)
    assert (frame.q, frame.s, body.command_id, body.kind) == (42, "cmd", CID, REFUSED_KIND)
    assert body.deadline_ms == 0 and len(data) < 200
