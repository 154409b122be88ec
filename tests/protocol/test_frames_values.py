"""Issue 11 item 2: every body a node sends carries value rules. A value the store or JSON
cannot hold (NaN, Infinity, an integer outside int64, msgpack bin where text belongs, nesting
past the depth, a map past its byte bound) is a BadFrame naming the field, never a value
that reaches the store."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.protocol.codec import decode_msgpack, encode_msgpack
from tether.protocol.errors import BadFrame
from tether.protocol.frames import (
    Ack,
    Body,
    CmdDeliver,
    CmdStatus,
    Frame,
    Heartbeat,
    Hello,
    LogChunk,
    MonitorPacket,
    NodeEvent,
    NodeResources,
    Resume,
    RuntimeState,
    parse_body,
)

NAN, INF = float("nan"), float("inf")


def deep(n: int) -> Any:
    value: Any = 1
    for _ in range(n):
        value = {"k": value}
    return value


HELLO = {"node_id": "node-a", "protocol": 1, "sig": b"s" * 64, "epoch": 7, "acks": {"cmd": 0}}

# (body class, a valid body, the hostile field path, the hostile value)
HOSTILE: list[tuple[type[Body], dict[str, Any], tuple[str, ...], Any]] = [
    (NodeEvent, {"kind": "k"}, ("data", "x"), NAN),
    (NodeEvent, {"kind": "k"}, ("data", "x"), INF),
    (NodeEvent, {"kind": "k"}, ("data", "x"), 2**64),
    (NodeEvent, {"kind": "k"}, ("data", "x"), -(2**63) - 1),
    (NodeEvent, {"kind": "k"}, ("data", "x"), b"bin where text belongs"),
    (NodeEvent, {"kind": "k"}, ("data", "x"), deep(100)),
    (NodeEvent, {"kind": "k"}, ("data", "x"), "x" * (65 * 1024)),
    (NodeEvent, {"kind": "k"}, ("data", "x"), "\ud800"),
    (NodeEvent, {"data": {}}, ("kind",), b"policy"),
    (NodeEvent, {"data": {}}, ("kind",), "k" * 129),
    (CmdStatus, {"command_id": "c", "state": "failed"}, ("exit_code",), 2**63),
    (CmdStatus, {"command_id": "c", "state": "failed"}, ("exit_code",), 2**32),
    (CmdStatus, {"command_id": "c", "state": "failed"}, ("exit_code",), NAN),
    (CmdStatus, {"command_id": "c", "state": "failed"}, ("started_ms",), 2**64),
    (CmdStatus, {"command_id": "c", "state": "failed"}, ("finished_ms",), -(2**63) - 1),
    (CmdStatus, {"command_id": "c", "state": "failed"}, ("error",), b"bin"),
    (CmdStatus, {"command_id": "c", "state": "failed"}, ("error",), "e" * 5000),
    (CmdStatus, {"command_id": "c", "state": "failed"}, ("result", "r"), INF),
    (CmdStatus, {"command_id": "c", "state": "failed"}, ("result", "r"), 10**30),
    (CmdStatus, {"state": "failed"}, ("command_id",), b"c"),
    (LogChunk, {"source": "stdout", "data": b""}, ("seq",), 2**64),
    (LogChunk, {"source": "stdout", "data": b""}, ("seq",), -1),
    (LogChunk, {"source": "stdout", "seq": 1, "data": b""}, ("dropped",), -1),
    (LogChunk, {"source": "stdout", "seq": 1, "data": b""}, ("dropped",), 2**63),
    (LogChunk, {"seq": 1, "data": b""}, ("source",), b"stdout"),
    (LogChunk, {"source": "stdout", "seq": 1, "data": b""}, ("command_id",), "c" * 200),
    (MonitorPacket, {"topic": "t", "seq": 1}, ("data", "x"), NAN),
    (MonitorPacket, {"topic": "t", "seq": 1}, ("data", "x"), 2**64),
    (MonitorPacket, {"topic": "t", "data": {}}, ("seq",), 2**64),
    (MonitorPacket, {"topic": "t", "data": {}, "seq": 1}, ("at_ms",), -5),
    (Heartbeat, {}, ("uptime_s",), NAN),
    (Heartbeat, {}, ("uptime_s",), INF),
    (Heartbeat, {}, ("outbox", "depth"), 2**64),
    (Heartbeat, {}, ("outbox", "oldest_age_s"), NAN),
    (Heartbeat, {}, ("transport", "rtt_ms"), INF),
    (Heartbeat, {}, ("transport", "rtt_ms"), -1),
    (Heartbeat, {}, ("transport", "reconnects"), 2**64),
    (Heartbeat, {}, ("transport", "clock_offset_ms"), NAN),
    (Heartbeat, {}, ("runtime", "state"), "sleeping"),
    (Heartbeat, {}, ("runtime", "version"), b"1.0"),
    (Heartbeat, {}, ("acks", "cmd"), 2**63),
    (Hello, HELLO, ("runtime", "state"), "zombie"),
    (Hello, HELLO, ("runtime", "version"), "v" * 65),
    (Hello, HELLO, ("runtime", "version"), b"1.0"),
    (Hello, HELLO, ("sidecar", "pid"), 2**64),
    (Hello, HELLO, ("sidecar", "pid"), NAN),
    (Hello, HELLO, ("sidecar", "version"), b"v"),
    (Hello, HELLO, ("labels", "site"), b"bin"),
    (Hello, HELLO, ("labels", "site"), "x" * 257),
    (Hello, HELLO, ("capabilities",), ["c"] * 65),
    (Hello, HELLO, ("capabilities",), [b"exec"]),
    (Hello, HELLO, ("acks", "cmd"), 2**64),
    (Ack, {}, ("acks", "cmd"), 2**63),
    (Resume, {}, ("acks", "cmd"), 2**64),
    (RuntimeState, {"state": "attached"}, ("version",), b"1"),
    (CmdDeliver, {"command_id": "c", "kind": "exec"}, ("args", "argv"), [NAN]),
    (CmdDeliver, {"command_id": "c", "kind": "exec"}, ("args", "argv"), [b"true"]),
    (CmdDeliver, {"command_id": "c", "kind": "exec"}, ("args", "n"), 2**64 - 1),
    (CmdDeliver, {"command_id": "c", "kind": "exec"}, ("deadline_ms",), 2**64 - 1),
    (CmdDeliver, {"command_id": "c"}, ("kind",), b"exec"),
    (NodeResources, {}, ("cpu_percent",), NAN),
    (NodeResources, {}, ("cpus",), 0),
    (NodeResources, {}, ("load",), [INF]),
    (NodeResources, {}, ("load",), [0.0] * 4),
    (NodeResources, {}, ("memory", "total"), 2**64),
    (NodeResources, {}, ("memory", "percent"), 101),
    (NodeResources, {}, ("disk", "path"), b"/"),
    (NodeResources, {}, ("disk", "free"), -1),
    (NodeResources, {}, ("processes",), 2**63),
    (NodeResources, {}, ("uptime_s",), INF),
    (NodeResources, {}, ("at_ms",), 1e30),
]


def _with(body: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out = dict(body)
    if len(path) == 1:
        out[path[0]] = value
    else:
        out[path[0]] = {**out.get(path[0], {}), path[1]: value}
    return out


@pytest.mark.parametrize(("cls", "body", "path", "value"), HOSTILE,
                         ids=[f"{c.__name__}.{'.'.join(p)}={v!r:.24}" for c, _, p, v in HOSTILE])
def test_a_hostile_value_in_a_body_is_a_bad_frame_naming_its_field(
        cls: type[Body], body: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    with pytest.raises(BadFrame) as info:
        cls.from_body(_with(body, path, value))
    assert path[0] in info.value.message
    assert info.value.close_code == 4400


def test_a_hostile_value_travelling_in_msgpack_is_refused_by_parse_body() -> None:
    # the same values as they arrive from the wire (bin, NaN and 2**64 all decode)
    for data in ({"x": NAN}, {"x": b"\xff"}, {"x": 2**64 - 1}, deep(100)):
        wire = encode_msgpack(Frame(t="node.event", s="evt", q=1, b={"kind": "k", "data": data}))
        with pytest.raises(BadFrame):
            parse_body(decode_msgpack(wire))


def test_unknown_keys_inside_typed_maps_are_dropped_not_kept() -> None:
    hb = Heartbeat.from_body({"uptime_s": 1, "outbox": {"depth": 1, "junk": NAN},
                              "transport": {"rtt_ms": 2.5, "extra": b"x"},
                              "runtime": {"state": "attached", "pid": 2**70}})
    assert hb.to_body()["outbox"] == {"depth": 1}
    assert hb.to_body()["transport"] == {"rtt_ms": 2.5}
    assert hb.to_body()["runtime"] == {"state": "attached"}


def test_a_sender_may_build_a_body_from_plain_maps_and_gets_typed_values() -> None:
    hb = Heartbeat(uptime_s=1.0, runtime={"state": "detached", "version": "v"},  # type: ignore[arg-type]
                   outbox={"depth": 2, "last": 5, "acked": 3},  # type: ignore[arg-type]
                   transport={"rtt_ms": None, "reconnects": 0})  # type: ignore[arg-type]
    assert hb.runtime.state == "detached"
    assert hb.outbox.depth == 2
    assert hb.transport.reconnects == 0
    with pytest.raises(BadFrame):
        Heartbeat(uptime_s=1.0, outbox={"depth": NAN})  # type: ignore[arg-type]


def test_what_node_resources_sends_today_parses() -> None:
    from tether.node.resources import sample  # the node's real sampler, on this machine

    body = sample(__import__("pathlib").Path("/"))
    parsed = NodeResources.from_body(body)
    assert parsed.to_body() == {k: v for k, v in body.items() if v is not None}


PLAIN = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None, database=None)
@given(st.dictionaries(st.sampled_from(["kind", "data", "command_id", "state", "exit_code",
                                        "result", "error", "seq", "source", "topic"]),
                       PLAIN, max_size=6),
       st.sampled_from([NodeEvent, CmdStatus, MonitorPacket, LogChunk, Heartbeat,
                        NodeResources]))
def test_whatever_a_body_holds_it_parses_to_json_safe_values_or_is_a_bad_frame(
        body: dict[str, Any], cls: type[Body]) -> None:
    try:
        parsed = cls.from_body(body)
    except BadFrame:
        return
    out = parsed.to_body()
    if isinstance(parsed, LogChunk):
        out["data"] = out["data"].decode("utf-8", "replace")
    text = json.dumps(out, allow_nan=False)  # never raises for a parsed body
    assert not any(isinstance(v, float) and not math.isfinite(v)
                   for v in json.loads(text).values())


SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats()
           | st.text(max_size=8) | st.text(alphabet="\x00\x01\"\\", max_size=3000))


@settings(max_examples=300, deadline=None, database=None)
@given(st.dictionaries(st.text(max_size=300), SCALARS, max_size=70))
def test_the_fast_path_for_flat_maps_agrees_with_the_exact_value_rules(data: dict[str, Any]
                                                                       ) -> None:
    from tether.protocol.fields import DATA_LIMITS
    from tether.protocol.values import plain_map

    try:
        exact: Any = plain_map(data, "data", DATA_LIMITS)
    except BadFrame:
        exact = BadFrame
    try:
        fast: Any = NodeEvent.from_body({"kind": "k", "data": data}).data
    except BadFrame:
        fast = BadFrame
    if exact is BadFrame or fast is BadFrame:
        assert exact is fast
    else:
        assert json.dumps(fast, allow_nan=False) == json.dumps(exact, allow_nan=False)


def test_a_flat_map_of_escaped_text_just_over_the_byte_bound_is_refused() -> None:
    # 64 KiB of JSON: the fast path counts 6 bytes a character and hands this to the walk
    data = {"x": "\x01" * (64 * 1024 // 6)}
    with pytest.raises(BadFrame, match="bytes"):
        NodeEvent.from_body({"kind": "k", "data": data})
