"""Hello ``max_frame`` (docs/protocol.md §4 "Frame cap"): optional, additive, validated."""

from __future__ import annotations

import pytest

from tether.protocol.codec import decode_msgpack, encode_msgpack
from tether.protocol.errors import BadFrame
from tether.protocol.frames import Hello


def hello(**kw: object) -> Hello:
    return Hello(node_id="n-1", sig=bytes(64), epoch=7, acks={"cmd": 0}, **kw)  # type: ignore[arg-type]


def test_a_hello_carries_the_nodes_frame_cap_through_the_codec() -> None:
    parsed = Hello.parse(decode_msgpack(encode_msgpack(hello(max_frame=65_536).frame())))
    assert parsed.max_frame == 65_536


def test_a_hello_without_a_cap_omits_the_field_and_parses_as_none() -> None:
    frame = hello().frame()
    assert "max_frame" not in frame.b
    assert Hello.parse(frame).max_frame is None


@pytest.mark.parametrize("value", [0, 1023, -1, 1 << 63, 1.5e6, "1048576", True,
                                   float("nan")])
def test_a_hello_cap_that_is_not_an_integer_of_at_least_1024_is_refused(value: object) -> None:
    frame = hello().frame()
    bad = type(frame)(t=frame.t, b={**frame.b, "max_frame": value})
    with pytest.raises(BadFrame, match="max_frame"):
        Hello.parse(bad)
