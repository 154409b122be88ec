"""How the sidecar packs the runtime's frames into WebSocket messages (pure: no I/O)."""

from __future__ import annotations

import logging

import pytest

from tether.protocol.codec import (
    BATCH_OVERHEAD,
    BATCH_TYPE,
    decode_msgpack,
    encode_msgpack,
    unbatch,
)
from tether.protocol.frames import Frame
from tether.sidecar.transport import pack_messages


def frame(q: int, pad: int = 0) -> bytes:
    return encode_msgpack(Frame(t="node.event", s="evt", q=q,
                                b={"kind": "k", "data": {"pad": "x" * pad}}))


def carried(messages: list[bytes]) -> list[int]:
    out: list[int] = []
    for m in messages:
        f = decode_msgpack(m)
        out += [x.q or 0 for x in unbatch(f)] if f.t == BATCH_TYPE else [f.q or 0]
    return out


def test_without_batch_support_each_frame_is_its_own_message() -> None:
    payloads = [frame(q) for q in range(1, 6)]
    assert list(pack_messages(payloads, max_batch=0, max_bytes=1 << 20)) == payloads


def test_frames_share_batches_up_to_the_count_and_order_is_kept() -> None:
    messages = list(pack_messages([frame(q) for q in range(1, 11)], max_batch=4,
                                  max_bytes=1 << 20))
    assert [len(unbatch(decode_msgpack(m))) for m in messages[:2]] == [4, 4]
    assert carried(messages) == list(range(1, 11))


def test_a_lone_frame_goes_as_itself_not_in_an_envelope() -> None:
    assert list(pack_messages([frame(1)], max_batch=64, max_bytes=1 << 20)) == [frame(1)]
    messages = list(pack_messages([frame(q) for q in (1, 2, 3)], max_batch=2,
                                  max_bytes=1 << 20))
    assert messages[1] == frame(3)


def test_no_message_exceeds_the_byte_limit() -> None:
    payloads = [frame(q, pad=300) for q in range(1, 30)]
    limit = 3 * len(payloads[0]) + BATCH_OVERHEAD
    messages = list(pack_messages(payloads, max_batch=1000, max_bytes=limit))
    assert all(len(m) <= limit for m in messages)
    assert carried(messages) == list(range(1, 30))


def test_a_frame_over_the_limit_is_dropped_with_a_warning_and_the_rest_go(
        caplog: pytest.LogCaptureFixture) -> None:
    big = frame(2, pad=5000)
    with caplog.at_level(logging.WARNING):
        messages = list(pack_messages([frame(1), big, frame(3)], max_batch=8,
                                      max_bytes=2048))
    assert carried(messages) == [1, 3]
    assert "over the frame limit" in caplog.text
