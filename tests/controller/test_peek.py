"""Peeks (services/peek.py) without a network: the request and the reply round-trip, a reply
stays within its byte bound by cutting the oldest monitor packets (and says how many), a reply
another replica sends is parsed as hostile input (anything off is None, never an exception),
only the holder answers, and a reader falls back to its own memory when nobody answers."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import pytest

from tether.controller.services.monitor import MonitorStore
from tether.controller.services.peek import (
    MAX_REPLY_BYTES,
    LocalPeek,
    NodePeek,
    PeekRequest,
    Peeks,
    encode_reply,
    encode_request,
    parse_reply,
    parse_request,
    session_map,
)
from tether.controller.services.presence import SessionSnapshot

SESSION = SessionSnapshot(
    node_id="n-1", session_id="s_" + "a" * 32, last_frame_age_s=0.25, opened_at=1.7e9,
    runtime={"state": "attached", "version": "1.2.3"}, remote="10.0.0.7:51234",
    resumed=True, max_frame=1 << 20, sidecar={"version": "1.2.3", "pid": 42},
    outbox={"depth": 3, "oldest_age_s": 0.5, "last": 9, "acked": 6},
    transport={"rtt_ms": 12.5, "reconnects": 2, "clock_offset_ms": -3.0},
    resources={"cpu_percent": 12.0, "cpus": 4, "load": [0.5, 0.25, 0.125],
               "memory": {"available": 100, "total": 1000}},
    logs_dropped_total=5,
    rtc={"peers": [{"peer_session_id": "p-1", "remote": "client:c1", "state": "connected",
                    "ice_state": "completed", "candidate_pair": "host",
                    "negotiations_total": 2, "connections_total": 1,
                    "subflows": {"control": {"state": "open", "bytes_in": 10,
                                             "bytes_out": 20, "errors_total": 0}}}],
         "history": [{"peer_session_id": "p-0", "at": 1.7e9, "reason": "replaced"}]})


def packet(topic: str, seq: int, pad: int = 0) -> dict[str, Any]:
    return {"node_id": "n-1", "topic": topic, "data": {"v": seq, "pad": "x" * pad},
            "seq": seq, "at_ms": 1000 + seq, "dropped": 0}


def reply(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"v": 1, "r": "r-a", "s": session_map(SESSION),
                            "m": {"cpu": [packet("cpu", 1)]}, "cut": 0}
    base.update(over)
    return base


class Held:
    """Presence holding the nodes given."""

    def __init__(self, *node_ids: str) -> None:
        self.node_ids = set(node_ids)

    def snapshot(self, node_id: str) -> SessionSnapshot | None:
        return SESSION if node_id in self.node_ids else None

    def __len__(self) -> int:
        return len(self.node_ids)


# -- the wire form ---------------------------------------------------------------------------


@pytest.mark.parametrize("request_", [PeekRequest(), PeekRequest(monitor=True),
                                      PeekRequest(monitor=True, topic="cpu")])
def test_a_request_round_trips(request_: PeekRequest) -> None:
    assert parse_request(encode_request(request_)) == request_


@pytest.mark.parametrize("payload", [
    b"", b"\xc1", b"x" * 600, msgpack.packb([1]), msgpack.packb({"m": 1}),
    msgpack.packb({"m": True, "topic": ""}), msgpack.packb({"m": True, "topic": "t" * 129}),
    msgpack.packb({"m": True, "extra": 1}), msgpack.packb({"m": True, "topic": b"cpu"}),
    msgpack.packb({"m": True}) + b"\x00"])
def test_a_request_that_is_not_one_is_none(payload: bytes) -> None:
    assert parse_request(payload) is None


def test_a_reply_round_trips_the_session_and_the_packets_as_the_holder_keeps_them() -> None:
    peek = NodePeek("r-a", SESSION, {"cpu": [packet("cpu", 1), packet("cpu", 2)],
                                     "disk": [packet("disk", 3)]})
    parsed = parse_reply(encode_reply(peek), node_id="n-1")
    assert parsed == peek
    assert list(parsed.monitor or {}) == ["cpu", "disk"]  # the order topics were updated


def test_a_reply_without_monitor_packets_asked_says_so_with_none() -> None:
    parsed = parse_reply(encode_reply(NodePeek("r-a", SESSION)), node_id="n-1")
    assert parsed == NodePeek("r-a", SESSION, None, 0)


def test_packets_are_filed_under_the_node_that_was_asked_about() -> None:
    parsed = parse_reply(msgpack.packb(reply()), node_id="n-other")
    assert parsed is not None and parsed.monitor is not None
    assert parsed.monitor["cpu"][0]["node_id"] == "n-other"


def test_a_reply_too_large_keeps_the_newest_packets_and_counts_the_ones_it_cut() -> None:
    rings = {"old": [packet("old", i, pad=10_000) for i in range(40)],
             "new": [packet("new", 100 + i, pad=10_000) for i in range(20)]}
    data = encode_reply(NodePeek("r-a", SESSION, rings), max_bytes=300_000)
    assert len(data) <= 300_000
    parsed = parse_reply(data, node_id="n-1", max_bytes=300_000)
    assert parsed is not None and parsed.monitor is not None
    kept_new, kept_old = parsed.monitor["new"], parsed.monitor["old"]
    assert kept_new == rings["new"]  # the topic updated last is kept first
    assert kept_old == rings["old"][len(rings["old"]) - len(kept_old):]  # its newest
    assert 0 < len(kept_old) < 40
    assert parsed.cut == 60 - len(kept_new) - len(kept_old)


def test_every_topic_asked_for_is_in_the_reply_even_when_all_its_packets_were_cut() -> None:
    rings = {"big": [packet("big", 1, pad=60_000)]}
    parsed = parse_reply(encode_reply(NodePeek("r-a", SESSION, rings), max_bytes=20_000),
                         node_id="n-1", max_bytes=20_000)
    assert parsed is not None
    assert (parsed.monitor, parsed.cut) == ({"big": []}, 1)


def test_the_default_bound_is_well_under_nats_default_max_payload() -> None:
    assert MAX_REPLY_BYTES <= (1 << 20) // 2


# -- hostile replies -------------------------------------------------------------------------


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def _bad_session(**over: Any) -> dict[str, Any]:
    return reply(s={**session_map(SESSION), **over})


HOSTILE: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("garbage", b"\xc1\xff\x00garbage"),
    ("trailing bytes", msgpack.packb(reply()) + b"\x00"),
    ("a list", msgpack.packb([1, 2, 3])),
    ("another version", msgpack.packb(reply(v=2))),
    ("a missing key", msgpack.packb({k: v for k, v in reply().items() if k != "cut"})),
    ("an extra key", msgpack.packb(reply(x=1))),
    ("a replica id with a dot", msgpack.packb(reply(r="r.a"))),
    ("a replica id that is bytes", msgpack.packb(reply(r=b"r-a"), use_bin_type=True)),
    ("a negative cut", msgpack.packb(reply(cut=-1))),
    ("a cut past 2^63", msgpack.packb(reply(cut=1 << 64 - 1))),
    ("a boolean cut", msgpack.packb(reply(cut=True))),
    ("a session that is a list", msgpack.packb(reply(s=[1]))),
    ("a session missing a field", msgpack.packb(reply(s={"session_id": "s-1"}))),
    ("a NaN age", msgpack.packb(_bad_session(last_frame_age_s=math.nan))),
    ("an infinite rtt", msgpack.packb(_bad_session(transport={"rtt_ms": math.inf}))),
    ("a negative age", msgpack.packb(_bad_session(last_frame_age_s=-1.0))),
    ("a runtime state nobody knows", msgpack.packb(_bad_session(runtime={"state": "odd"}))),
    ("a runtime that is text", msgpack.packb(_bad_session(runtime="attached"))),
    ("a session id that is a number", msgpack.packb(_bad_session(session_id=7))),
    ("a session id with a newline", msgpack.packb(_bad_session(session_id="s\n1"))),
    ("resumed as a number", msgpack.packb(_bad_session(resumed=1))),
    ("a huge remote", msgpack.packb(_bad_session(remote="x" * 1000))),
    ("an outbox depth past 2^63", msgpack.packb(_bad_session(outbox={"depth": 1 << 63}))),
    ("resources that are a list", msgpack.packb(_bad_session(resources=[1]))),
    ("rtc that is a list", msgpack.packb(_bad_session(rtc=[1]))),
    ("an rtc peer in a state nobody knows", msgpack.packb(_bad_session(rtc={"peers": [{
        **SESSION.rtc["peers"][0], "state": "<script>"}]}))),
    ("rtc with too many peers", msgpack.packb(_bad_session(rtc={"peers": [
        SESSION.rtc["peers"][0]] * 10_000}))),
    ("monitor that is a list", msgpack.packb(reply(m=[packet("cpu", 1)]))),
    ("a topic that is empty", msgpack.packb(reply(m={"": [packet("", 1)]}))),
    ("a ring that is a map", msgpack.packb(reply(m={"cpu": {"a": 1}}))),
    ("a packet under another topic", msgpack.packb(reply(m={"cpu": [packet("disk", 1)]}))),
    ("a packet with no seq", msgpack.packb(reply(m={"cpu": [{"topic": "cpu", "data": {}}]}))),
    ("a packet with bytes in its data", msgpack.packb(
        reply(m={"cpu": [{**packet("cpu", 1), "data": {"b": b"\x00"}}]}), use_bin_type=True)),
    ("a packet with data too large", msgpack.packb(
        reply(m={"cpu": [packet("cpu", 1, pad=70_000)]}))),
    ("an ext type", msgpack.packb(reply(cut=msgpack.ExtType(1, b"x")))),
    ("invalid UTF-8 text", msgpack.packb(reply())[:-1] + b"\xa1\xff"),
    ("deep nesting", msgpack.packb(reply(m={"cpu": [{**packet("cpu", 1), "data": {
        "d": nested(20)}}]}))),
    ("oversize", msgpack.packb(reply(m={f"t{i}": [packet(f"t{i}", 1, pad=60_000)]
                                        for i in range(10)}))),
]


@pytest.mark.parametrize("payload", [p for _, p in HOSTILE], ids=[n for n, _ in HOSTILE])
def test_a_hostile_reply_is_none_and_never_raises(payload: bytes) -> None:
    assert parse_reply(payload, node_id="n-1") is None


def test_the_well_formed_reply_the_hostile_ones_are_made_from_parses() -> None:
    assert parse_reply(msgpack.packb(reply()), node_id="n-1") is not None


def test_a_reply_from_a_replica_that_knows_no_rtc_still_parses_with_none() -> None:
    old = reply(s={k: v for k, v in session_map(SESSION).items() if k != "rtc"})
    parsed = parse_reply(msgpack.packb(old), node_id="n-1")
    assert parsed is not None and parsed.session is not None and parsed.session.rtc == {}


# -- the holder and the reader -------------------------------------------------------------


def test_only_a_replica_holding_the_node_answers_a_peek() -> None:
    monitor = MonitorStore()
    monitor.add("n-1", packet("cpu", 1))
    monitor.add("n-2", packet("cpu", 2))
    source = LocalPeek(Held("n-1"), monitor, "r-a")
    assert source("n-2", PeekRequest(monitor=True)) is None  # packets, but no session here
    assert source("n-1", PeekRequest()) == NodePeek("r-a", SESSION, None)
    assert source("n-1", PeekRequest(monitor=True, topic="disk")) == NodePeek(
        "r-a", SESSION, {"disk": []})


async def test_a_reader_holding_the_node_reads_its_own_memory_without_asking() -> None:
    monitor = MonitorStore()
    monitor.add("n-1", packet("cpu", 1))

    async def remote(node_id: str, request: PeekRequest) -> NodePeek | None:
        raise AssertionError("a node held here is never asked for")

    peeks = Peeks(Held("n-1"), monitor, remote)
    assert await peeks.monitor("n-1") == ({"cpu": [packet("cpu", 1)]}, 0)
    assert await peeks.session("n-1") is None


async def test_a_reader_shows_the_holders_packets_and_its_own_when_nobody_answers() -> None:
    monitor = MonitorStore()
    monitor.add("n-1", packet("cpu", 1))  # from when this replica held it
    answers: list[NodePeek | None] = [
        NodePeek("r-a", SESSION, {"cpu": [packet("cpu", 9)]}, 4), None]
    asked: list[PeekRequest] = []

    async def remote(node_id: str, request: PeekRequest) -> NodePeek | None:
        asked.append(request)
        return answers.pop(0)

    peeks = Peeks(Held(), monitor, remote)
    assert await peeks.monitor("n-1", "cpu") == ({"cpu": [packet("cpu", 9)]}, 4)
    assert await peeks.monitor("n-1", "cpu") == ({"cpu": [packet("cpu", 1)]}, 0)
    assert asked == [PeekRequest(monitor=True, topic="cpu")] * 2


async def test_a_single_controller_never_asks_anyone() -> None:
    peeks = Peeks(Held(), MonitorStore(), None)
    assert await peeks.monitor("n-1") == ({}, 0)
    assert await peeks.session("n-1") is None
