"""The local link's framing (protocol/local.py): length-prefixed MessagePack, decoded
incrementally whatever the read boundaries, bounded before anything is buffered."""

from __future__ import annotations

import itertools

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
