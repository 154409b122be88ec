"""Stream cursors for class A frames (PROTOCOL.md §3): the receiver's duplicate / gap / apply
rules, the sender's window and acks, and a stateful model of both ends over a lossy link
that must still apply every frame exactly once, in order."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from tether.protocol.codec import decode_msgpack, encode_msgpack
from tether.protocol.errors import RemoteProtocolError
from tether.protocol.frames import Ack, CmdDeliver
from tether.protocol.streams import StreamReceiver, StreamRegressed, StreamSender, Verdict

PROPERTY = settings(max_examples=150, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

# --- receiver ------------------------------------------------------------------------------


def receiver_at(applied: int, epoch: int = 1) -> StreamReceiver:
    return StreamReceiver(epoch=epoch, applied=applied)


def test_a_fresh_receiver_applies_q1_and_moves_applied_only_on_commit() -> None:
    rx = StreamReceiver()
    assert rx.classify(1) is Verdict.APPLY
    assert (rx.accepted, rx.applied) == (1, 0)
    rx.committed(1)
    assert rx.applied == 1


def test_a_duplicate_sequence_is_acked_again_and_not_applied() -> None:
    rx = receiver_at(3)
    for q in (1, 2, 3):
        assert rx.classify(q) is Verdict.DUPLICATE
    assert (rx.accepted, rx.applied) == (3, 3)


def test_a_sequence_beyond_the_next_one_is_a_gap_and_changes_nothing() -> None:
    rx = receiver_at(2)
    assert rx.classify(4) is Verdict.GAP
    assert rx.classify(1000) is Verdict.GAP
    assert (rx.accepted, rx.applied) == (2, 2)
    assert rx.classify(3) is Verdict.APPLY


def test_a_frame_accepted_but_not_yet_committed_is_a_duplicate_and_acks_carry_applied() -> None:
    rx = receiver_at(2)
    assert rx.classify(3) is Verdict.APPLY
    assert rx.classify(3) is Verdict.DUPLICATE
    assert rx.applied == 2  # what an ack sent now would carry
    rx.committed(3)
    assert rx.applied == 3


def test_committing_beyond_what_was_accepted_is_refused() -> None:
    rx = receiver_at(2)
    with pytest.raises(ValueError, match="q=3"):
        rx.committed(3)
    assert rx.applied == 2


def test_a_late_commit_of_an_older_sequence_never_moves_applied_back() -> None:
    rx = receiver_at(5)
    rx.committed(4)
    assert rx.applied == 5


def test_a_rollback_forgets_the_accepted_frame_so_it_is_applied_when_sent_again() -> None:
    rx = receiver_at(2)
    assert rx.classify(3) is Verdict.APPLY
    rx.rollback()
    assert (rx.accepted, rx.applied) == (2, 2)
    assert rx.classify(4) is Verdict.GAP
    assert rx.classify(3) is Verdict.APPLY


def test_a_receiver_restored_from_its_store_starts_accepting_at_applied() -> None:
    rx = StreamReceiver(epoch=1, applied=7, accepted=3)
    assert rx.accepted == 7
    assert rx.classify(8) is Verdict.APPLY


def test_the_first_epoch_a_fresh_receiver_sees_is_recorded_without_a_reset_event() -> None:
    rx = StreamReceiver()
    assert rx.observe_epoch(11) is False
    assert rx.epoch == 11


def test_the_same_epoch_again_keeps_the_cursor() -> None:
    rx = receiver_at(5, epoch=11)
    assert rx.observe_epoch(11) is False
    assert rx.applied == 5


def test_a_new_epoch_resets_the_cursor_to_zero_and_asks_for_an_event() -> None:
    rx = receiver_at(5, epoch=11)
    rx.classify(6)
    assert rx.observe_epoch(12) is True
    assert (rx.epoch, rx.applied, rx.accepted) == (12, 0, 0)
    assert rx.classify(1) is Verdict.APPLY


def test_a_cursor_with_no_recorded_epoch_is_reset_loudly_not_silently() -> None:
    rx = StreamReceiver(epoch=None, applied=5)
    assert rx.observe_epoch(3) is True
    assert rx.applied == 0


@PROPERTY
@given(st.lists(st.integers(min_value=1, max_value=12), max_size=40))
def test_with_immediate_commits_the_verdict_follows_protocol_md_against_applied(
        arrivals: list[int]) -> None:
    rx = StreamReceiver()
    applied: list[int] = []
    for q in arrivals:
        before = rx.applied
        verdict = rx.classify(q)
        expected = (Verdict.DUPLICATE if q <= before else
                    Verdict.GAP if q > before + 1 else Verdict.APPLY)
        assert verdict is expected
        if verdict is Verdict.APPLY:
            applied.append(q)
            rx.committed(q)
    assert applied == list(range(1, len(applied) + 1))


# --- sender --------------------------------------------------------------------------------


def test_sequences_are_assigned_from_one_and_never_reused() -> None:
    tx = StreamSender()
    assert [tx.assign() for _ in range(4)] == [1, 2, 3, 4]
    assert tx.unacked == 4


def test_the_sender_keeps_at_most_a_window_of_frames_unacked() -> None:
    tx = StreamSender(last=10, window=3)
    assert list(tx.next_to_send()) == [1, 2, 3]
    for q in tx.next_to_send():
        tx.mark_sent(q)
    assert list(tx.next_to_send()) == []
    assert tx.on_ack(2) == (1, 2)
    assert list(tx.next_to_send()) == [4, 5]


def test_nothing_is_sent_beyond_the_last_assigned_sequence() -> None:
    tx = StreamSender(last=2, window=256)
    assert list(tx.next_to_send()) == [1, 2]


def test_a_cumulative_ack_returns_the_newly_acknowledged_range() -> None:
    tx = StreamSender(last=9, sent=9)
    assert tx.on_ack(3) == (1, 3)
    assert tx.on_ack(7) == (4, 7)
    assert tx.on_ack(9) == (8, 9)
    assert (tx.acked, tx.unacked) == (9, 0)


def test_a_stale_or_repeated_ack_is_ignored() -> None:
    tx = StreamSender(last=9, sent=9)
    tx.on_ack(5)
    assert tx.on_ack(5) is None
    assert tx.on_ack(2) is None
    assert tx.on_ack(0) is None
    assert tx.acked == 5


def test_an_ack_beyond_the_last_assigned_sequence_is_a_remote_protocol_error() -> None:
    tx = StreamSender(last=3, sent=3, acked=1)
    with pytest.raises(RemoteProtocolError) as info:
        tx.on_ack(4)
    assert info.value.code == "protocol_error"
    assert info.value.close_code == 4400
    assert "4" in info.value.message and "3" in info.value.message
    assert (tx.acked, tx.sent) == (1, 3)


def test_an_ack_ahead_of_what_was_sent_is_a_protocol_error_and_moves_nothing() -> None:
    # issue 11 item 6: acking frames assigned but never sent would drop them unseen
    tx = StreamSender(last=5, sent=1)
    with pytest.raises(RemoteProtocolError) as info:
        tx.on_ack(3)
    assert info.value.close_code == 4400
    assert "q=3" in info.value.message and "q=1" in info.value.message
    assert (tx.acked, tx.sent) == (0, 1)
    assert list(tx.next_to_send()) == [2, 3, 4, 5]


def test_connecting_resends_everything_above_the_peers_applied_cursor() -> None:
    tx = StreamSender(last=6, acked=2, sent=6)
    tx.connected(4)
    assert (tx.acked, tx.sent) == (4, 4)
    assert list(tx.next_to_send()) == [5, 6]


def test_a_disconnect_rewinds_sent_to_acked() -> None:
    tx = StreamSender(last=6, acked=2, sent=6)
    tx.disconnected()
    assert list(tx.next_to_send()) == [3, 4, 5, 6]


def test_a_failed_write_rewinds_sent_so_those_frames_are_sent_again() -> None:
    tx = StreamSender(last=6, acked=2, sent=3)
    tx.mark_sent(6)  # marked before the write: the ack may come back first
    tx.rewind_to(3)  # the write of 4..6 failed
    assert (tx.acked, tx.sent) == (2, 3)
    assert list(tx.next_to_send()) == [4, 5, 6]


def test_a_failed_write_never_rewinds_below_what_the_peer_acked_meanwhile() -> None:
    tx = StreamSender(last=6, acked=2, sent=2)
    tx.mark_sent(6)
    tx.on_ack(5)  # the peer applied part of it before the write reported failure
    tx.rewind_to(2)
    assert (tx.acked, tx.sent) == (5, 5)
    assert list(tx.next_to_send()) == [6]


def test_a_failed_write_reported_after_a_reconnect_never_moves_sent_forward() -> None:
    tx = StreamSender(last=9, acked=2, sent=5)  # 3..5 written on the old connection
    tx.mark_sent(8)  # then 6..8, whose write is still under way...
    tx.disconnected()
    tx.connected(3)  # ...when the new connection starts from the peer's cursor
    tx.rewind_to(5)  # the old write's failure arrives late: 4 and 5 are not skipped
    assert (tx.acked, tx.sent) == (3, 3)
    tx.mark_sent(5)
    tx.rewind_to(6)  # a rewind past sent is no rewind
    assert tx.sent == 5
    assert list(tx.next_to_send()) == [6, 7, 8, 9]


@pytest.mark.parametrize(("acked", "last", "peer"), [(3, 6, 2), (0, 6, 7), (3, 3, 4),
                                                     (5, 9, 0)])
def test_a_peer_cursor_behind_what_it_acked_or_ahead_of_last_raises_stream_regressed(
        acked: int, last: int, peer: int) -> None:
    tx = StreamSender(last=last, acked=acked, sent=last)
    with pytest.raises(StreamRegressed) as info:
        tx.connected(peer)
    assert isinstance(info.value, RemoteProtocolError)
    assert str(peer) in info.value.message
    assert (tx.acked, tx.sent, tx.last) == (acked, last, last)


@pytest.mark.parametrize("peer", [3, 4, 5, 6])
def test_a_peer_cursor_between_acked_and_last_is_accepted(peer: int) -> None:
    tx = StreamSender(last=6, acked=3)
    tx.connected(peer)
    assert tx.acked == peer


# --- the stateful model: durable outbox -> lossy link -> durable cursor --------------------

EPOCH = 0x5EED
WINDOW = 4
MAX_PRODUCED = 24  # enough to wrap the window several times


class LossyLink(RuleBasedStateMachine):
    """A controller outbox feeding a node over a link that drops, duplicates and reorders
    frames and acks, with reconnects and restarts of either end.

    Durable state (survives a restart): the sender's outbox and acked cursor, the receiver's
    applied cursor and the effects it committed with it. Everything else is rebuilt.
    """

    def __init__(self) -> None:
        super().__init__()
        self.produced = 0
        self.outbox: dict[int, bytes] = {}  # durable, q -> payload
        self.sender = StreamSender(window=WINDOW)
        self.receiver = StreamReceiver()
        self.effects: list[tuple[int, bytes]] = []  # durable, committed with the cursor
        self.pending: list[tuple[int, bytes]] = []  # accepted, commit not yet done
        self.frames: list[bytes] = []  # in flight, sender -> receiver
        self.acks: list[bytes] = []  # in flight, receiver -> sender

    @initialize()
    def handshake(self) -> None:
        assert self.receiver.observe_epoch(EPOCH) is False
        self.reconnect()

    # the sender

    @precondition(lambda self: self.produced < MAX_PRODUCED)
    @rule()
    def produce(self) -> None:
        self.produced += 1
        q = self.sender.assign()
        assert q == self.produced
        self.outbox[q] = f"payload-{q}".encode()

    @precondition(lambda self: len(self.sender.next_to_send()) > 0)
    @rule(n=st.integers(min_value=1, max_value=WINDOW))
    def send(self, n: int) -> None:
        """Up to ``n`` frames, as many as the window allows, from the durable outbox."""
        for q in list(self.sender.next_to_send())[:n]:
            body = CmdDeliver(command_id=f"c-{q}", kind="exec", args={"p": self.outbox[q].decode()},
                              created_ms=q)
            self.frames.append(encode_msgpack(body.frame(s="cmd", q=q, k=f"c-{q}")))
            self.sender.mark_sent(q)

    @precondition(lambda self: self.acks)
    @rule(i=st.integers(min_value=0, max_value=50))
    def deliver_an_ack(self, i: int) -> None:
        """Any ack in flight, so acks arrive out of order too."""
        ack = Ack.parse(decode_msgpack(self.acks.pop(i % len(self.acks))))
        n = ack.acks["cmd"]
        before = self.sender.acked
        newly = self.sender.on_ack(n)
        if n <= before:
            assert newly is None
        else:
            assert newly == (before + 1, n)
            for q in range(before + 1, n + 1):
                del self.outbox[q]

    # the link

    @precondition(lambda self: self.frames)
    @rule(i=st.integers(min_value=0, max_value=50))
    def drop_a_frame(self, i: int) -> None:
        self.frames.pop(i % len(self.frames))

    @precondition(lambda self: self.frames)
    @rule(i=st.integers(min_value=0, max_value=50))
    def duplicate_a_frame(self, i: int) -> None:
        i %= len(self.frames)
        self.frames.insert(i + 1, self.frames[i])

    @precondition(lambda self: len(self.frames) >= 2)
    @rule(i=st.integers(min_value=0, max_value=50), j=st.integers(min_value=0, max_value=50))
    def swap_two_frames(self, i: int, j: int) -> None:
        i, j = i % len(self.frames), j % len(self.frames)
        self.frames[i], self.frames[j] = self.frames[j], self.frames[i]

    @precondition(lambda self: self.acks)
    @rule(i=st.integers(min_value=0, max_value=50))
    def drop_an_ack(self, i: int) -> None:
        self.acks.pop(i % len(self.acks))

    @precondition(lambda self: self.sender.unacked > 0)
    @rule(restart=st.sampled_from(["neither", "sender", "receiver"]),
          drop_noticed=st.booleans())
    def reconnect_after(self, restart: str, drop_noticed: bool = True) -> None:
        """The connection drops, and maybe one end restarts from its durable state.

        ``drop_noticed``: whether the sender saw the old connection end (disconnected())
        before the new handshake; connected() alone must be enough."""
        if drop_noticed:
            self.sender.disconnected()
        if restart == "sender":
            self.sender = StreamSender(last=self.produced,
                                       acked=self.produced - len(self.outbox), window=WINDOW)
        elif restart == "receiver":
            self.receiver = StreamReceiver(epoch=EPOCH, applied=len(self.effects))
            self.pending.clear()
            assert self.receiver.observe_epoch(EPOCH) is False
        self.reconnect()

    def reconnect(self) -> None:
        """In-flight frames and acks are lost; the handshake carries the receiver's applied
        cursor to the sender, which sends again from there."""
        self.frames.clear()
        self.acks.clear()
        self.abort_pending()
        # the hello's cursor acknowledges like an ack does; connected() does not say what
        # it acknowledged, so the outbox is trimmed from the cursors before and after
        before = self.sender.acked
        self.sender.connected(self.receiver.applied)
        for q in range(before + 1, self.sender.acked + 1):
            del self.outbox[q]

    # the receiver

    @precondition(lambda self: self.frames)
    @rule(n=st.integers(min_value=1, max_value=4))
    def deliver_frames(self, n: int) -> None:
        """Up to ``n`` frames from the head of the link; each is classified and acked."""
        for _ in range(min(n, len(self.frames))):
            frame = decode_msgpack(self.frames.pop(0))
            assert frame.s == "cmd" and frame.q is not None
            if self.receiver.classify(frame.q) is Verdict.APPLY:
                self.pending.append((frame.q, CmdDeliver.parse(frame).args["p"].encode()))
            self.send_ack()

    @precondition(lambda self: self.pending)
    @rule(n=st.integers(min_value=1, max_value=4))
    def commit_pending_effects(self, n: int) -> None:
        """Commit the oldest ``n`` accepted effects, each with its cursor, in order."""
        for _ in range(min(n, len(self.pending))):
            q, payload = self.pending.pop(0)
            self.effects.append((q, payload))
            self.receiver.committed(q)
            self.send_ack()

    @precondition(lambda self: self.pending)
    @rule()
    def fail_the_pending_commit(self) -> None:
        self.abort_pending()
        self.send_ack()

    def abort_pending(self) -> None:
        self.pending.clear()
        self.receiver.rollback()

    def send_ack(self) -> None:
        self.acks.append(encode_msgpack(Ack(acks={"cmd": self.receiver.applied}).frame()))

    # what must always hold

    @invariant()
    def applied_is_exactly_one_to_n_in_order(self) -> None:
        assert [q for q, _ in self.effects] == list(range(1, len(self.effects) + 1))
        assert all(payload == f"payload-{q}".encode() for q, payload in self.effects)
        assert self.receiver.applied == len(self.effects)

    @invariant()
    def cursors_are_ordered(self) -> None:
        tx = self.sender
        assert 0 <= tx.acked <= self.receiver.applied <= tx.last == self.produced
        assert tx.acked <= tx.sent <= tx.last
        assert self.receiver.applied <= self.receiver.accepted

    @invariant()
    def the_outbox_holds_exactly_the_unacked_frames(self) -> None:
        assert sorted(self.outbox) == list(range(self.sender.acked + 1, self.sender.last + 1))

    def teardown(self) -> None:
        """A last reconnect, then a fault-free link until the outbox drains."""
        self.reconnect()
        for _ in range(4 * self.produced + 4):
            if not self.sender.unacked:
                break
            self.send(WINDOW)
            while self.frames:
                self.deliver_frames(1)
                self.commit_pending_effects(len(self.pending))
            while self.acks:
                self.deliver_an_ack(0)
        assert self.effects == [(q, f"payload-{q}".encode())
                                for q in range(1, self.produced + 1)]
        assert self.sender.unacked == 0 and not self.outbox


LossyLink.TestCase.settings = settings(max_examples=200, stateful_step_count=60,
                                       deadline=None, database=None,
                                       suppress_health_check=[HealthCheck.too_slow])
test_a_lossy_link_still_applies_every_frame_exactly_once_in_order = LossyLink.TestCase


def test_the_model_drains_a_plain_run_without_faults() -> None:
    """A worked example of the model's rules, for a reader new to the state machine."""
    model: Any = LossyLink()
    model.handshake()
    for _ in range(6):
        model.produce()
    model.send(6)
    assert len(model.frames) == WINDOW  # the window is full
    model.drop_a_frame(1)  # q=2 is lost
    model.deliver_frames(3)  # 1 is accepted, 3 and 4 are gaps
    model.commit_pending_effects(1)
    while model.acks:
        model.deliver_an_ack(0)
    assert model.sender.acked == 1
    model.reconnect_after("receiver")
    assert list(model.sender.next_to_send()) == [2, 3, 4, 5]
    model.teardown()
