"""protocol/iostream.py: the sending half of an interactive io stream, without a clock or a
loop: bounded by the peer's window, ordered, and re-sent when acks stall."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.protocol.errors import LocalProtocolError
from tether.protocol.iostream import INITIAL_WINDOW, IoSender


def test_a_sender_takes_no_more_than_the_window_until_acks_open_it() -> None:
    sender = IoSender(window=10)
    assert sender.room() == 10
    first = sender.push(b"x" * 6, 0.0)
    assert (first.seq, sender.room()) == (1, 4)
    with pytest.raises(LocalProtocolError, match="room for 4"):
        sender.push(b"y" * 5, 0.0)
    sender.push(b"y" * 4, 0.0)
    assert sender.room() == 0
    assert sender.on_ack(1, 10, 1.0)
    assert (sender.unacked_bytes, sender.room()) == (4, 6)


def test_a_window_of_zero_holds_everything_back_until_the_first_ack() -> None:
    sender = IoSender(window=0)
    assert sender.room() == 0
    sender.on_ack(0, 1000, 0.0)
    assert sender.room() == 1000


def test_an_ack_beyond_what_was_sent_is_refused_and_changes_nothing() -> None:
    sender = IoSender()
    sender.push(b"a", 0.0)
    with pytest.raises(LocalProtocolError, match="seq 5 is beyond seq 1"):
        sender.on_ack(5, 10, 0.0)
    assert (sender.acked, sender.window) == (0, INITIAL_WINDOW)


def test_a_stale_ack_does_not_move_the_cursor_back() -> None:
    sender = IoSender()
    for _ in range(3):
        sender.push(b"a", 0.0)
    assert sender.on_ack(2, 100, 0.0)
    assert not sender.on_ack(1, 100, 0.0)
    assert sender.acked == 2
    assert [p.seq for p in sender.unacked()] == [3]


def test_stalled_acks_make_every_unacked_frame_due_again_in_order() -> None:
    sender = IoSender(retransmit_s=2.0)
    for data in (b"a", b"b", b"c"):
        sender.push(data, 10.0)
    assert not sender.due(11.9)
    assert sender.due(12.0)
    assert [p.data for p in sender.unacked()] == [b"a", b"b", b"c"]
    sender.resent(12.0)
    assert not sender.due(13.0)
    sender.on_ack(3, 100, 13.0)
    assert not sender.due(100.0)  # nothing unacked: nothing is ever due


def test_nothing_follows_eof_and_the_stream_is_done_once_it_is_acked() -> None:
    sender = IoSender()
    sender.push(b"", 0.0, eof=True)
    assert sender.room() == 0
    with pytest.raises(LocalProtocolError, match="eof"):
        sender.push(b"x", 0.0)
    assert not sender.done()
    sender.on_ack(1, 100, 0.0)
    assert sender.done()


@given(st.lists(st.tuples(st.integers(0, 100), st.booleans()), max_size=50),
       st.integers(1, 300))
def test_unacked_bytes_never_exceed_the_window(steps: list[tuple[int, bool]],
                                               window: int) -> None:
    sender = IoSender(window=window)
    for size, ack in steps:
        if ack and sender.last_seq:
            sender.on_ack(sender.last_seq, window, 0.0)
        n = min(size, sender.room())
        if n:
            sender.push(b"x" * n, 0.0)
        assert sender.unacked_bytes <= window
        assert [p.seq for p in sender.unacked()] == list(range(sender.acked + 1,
                                                               sender.last_seq + 1))
