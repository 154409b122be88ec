"""The local link's framing (protocol/local.py): length-prefixed MessagePack, decoded
incrementally whatever the read boundaries, bounded before anything is buffered."""

from __future__ import annotations

import itertools

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.protocol.codec import MAX_FRAME_BYTES, encode_msgpack
from tether.protocol.errors import BadFrame, FrameTooLarge, LocalProtocolError
from tether.protocol.frames import Frame
from tether.protocol.local import (
    HEADER,
    LOCAL_OVERHEAD,
    LocalDecoder,
    encode_local,
    frame_local,
    peek_type,
)

FRAMES = [Frame(t="local.attach", b={"node_id": "n1", "pid": 7}),
          Frame(t="node.event", s="evt", q=1, b={"kind": "k", "data": {"v": "x" * 300}}),
          Frame(t="edge.ack", b={"acks": {"cmd": 4}})]
WIRE = b"".join(encode_local(f) for f in FRAMES)


@given(st.lists(st.integers(min_value=0, max_value=len(WIRE)), max_size=12))
def test_frames_come_out_whole_and_in_order_however_the_bytes_are_split(
        cuts: list[int]) -> None:
    decoder = LocalDecoder()
    out: list[Frame] = []
    edges = [0, *sorted(cuts), len(WIRE)]
    for start, end in itertools.pairwise(edges):
        out += decoder.feed(WIRE[start:end])
    assert out == FRAMES
    assert decoder.buffered == 0


def test_feed_raw_hands_back_each_frames_own_msgpack_bytes_for_relaying() -> None:
    pairs = LocalDecoder().feed_raw(WIRE)
    assert [f for f, _ in pairs] == FRAMES
    assert [raw for _, raw in pairs] == [encode_msgpack(f) for f in FRAMES]


def test_a_header_announcing_too_much_is_refused_before_anything_is_buffered() -> None:
    decoder = LocalDecoder(max_frame_bytes=1024)
    with pytest.raises(FrameTooLarge):
        decoder.feed(HEADER.pack(decoder.max_bytes + 1) + b"\x80")


def test_undecodable_bytes_are_a_bad_frame() -> None:
    with pytest.raises(BadFrame):
        LocalDecoder().feed(HEADER.pack(3) + b"\xc1\xc1\xc1")


def test_framing_a_frame_encoded_already_gives_what_encode_local_gives() -> None:
    frame = Frame(t="node.event", b={"kind": "k"}, s="evt", q=7)
    assert frame_local(encode_msgpack(frame)) == encode_local(frame)
    with pytest.raises(LocalProtocolError):
        frame_local(b"x" * (MAX_FRAME_BYTES + LOCAL_OVERHEAD + 1))


@given(st.lists(st.sampled_from(FRAMES), min_size=1, max_size=6), st.data())
def test_payloads_come_out_whole_and_each_peeks_as_the_type_it_decodes_to(
        frames: list[Frame], data: st.DataObject) -> None:
    wire = b"".join(encode_local(f) for f in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=4)))
    decoder = LocalDecoder()
    payloads = [p for a, b in itertools.pairwise([0, *cuts, len(wire)])
                for p in decoder.feed_payloads(wire[a:b])]
    assert [decoder.decode(p) for p in payloads] == frames
    assert [peek_type(p) for p in payloads] == [f.t for f in frames]
    assert decoder.buffered == 0


@pytest.mark.parametrize("payload", [
    b"", b"\x80", b"\x81\xa1", b"\x81\xa1b\xa4edge",  # too short, empty map, not "t" first
    b"\x81\xa1t\xa5edge", b"\x81\xa1t\xd9\x04edge",  # cut short, not a fixstr
    b"\x81\xa1t\xa2\xff\xfe", b"\x91\xa1t",  # not UTF-8, not a map
    msgpack.packb({"b": {}, "t": "edge.ack"})])
def test_a_payload_that_does_not_start_as_the_encoder_starts_frames_peeks_as_unknown(
        payload: bytes) -> None:
    assert peek_type(payload) is None


def test_a_header_announcing_too_much_is_refused_when_only_splitting_payloads() -> None:
    with pytest.raises(FrameTooLarge):
        LocalDecoder(max_frame_bytes=10).feed_payloads(
            HEADER.pack(10 + LOCAL_OVERHEAD + 1) + b"x")
