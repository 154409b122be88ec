"""The controller's edge session core (protocol/edge_session.py), with no I/O: every (state,
event) of the handshake table gives the effects the gateway executes, the session ends once,
hostile cursors close with 4400 as the gateway always did, and the stateful lossy-link model
runs again with the production downlink (the core's ``cmd`` StreamSender, read the way the
gateway reads its store) at the sending end."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule

from tether.protocol.codec import decode_msgpack, encode_msgpack
from tether.protocol.edge_session import HANDLE, Close, EdgeSession, End
from tether.protocol.errors import RemoteProtocolError
from tether.protocol.frames import Ack, CmdDeliver
from tether.protocol.handshake import TRANSITIONS, Action, Event, Role, State
from tether.protocol.streams import StreamReceiver, Verdict

from .test_streams import EPOCH, MAX_PRODUCED, WINDOW, LossyLink

PROPERTY = settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

TABLE = TRANSITIONS[Role.CONTROLLER]
# a frame type standing for each frame event of the table
FRAME_OF = {Event.CHALLENGE: "edge.challenge", Event.HELLO: "edge.hello",
            Event.WELCOME: "edge.welcome", Event.FRAME: "node.event",
            Event.GOODBYE: "edge.goodbye"}


def session_in(state: State) -> EdgeSession:
    """A core driven into ``state`` by the events the gateway would step."""
    core = EdgeSession(cmd_window=WINDOW)
    if state is State.ESTABLISHED:
        core.receive("edge.hello")
    elif state is State.CLOSED:
        core.closed(None, "connection closed by node", by_peer=True)
        core.take_effects()
    assert core.state is state
    return core


def welcomed(cmd_acked: int = 0, *, evt_applied: int = 0) -> EdgeSession:
    core = session_in(State.ESTABLISHED)
    core.welcomed(evt_epoch=7, evt_applied=evt_applied, cmd_epoch=EPOCH, cmd_acked=cmd_acked)
    return core


def fire(core: EdgeSession, event: Event) -> tuple[Action, ...] | None:
    """Deliver ``event`` as the gateway does; the table's actions for a frame, None for a
    timeout or a close (their effects are queued)."""
    if event is Event.TIMEOUT:
        core.timeout("no frame within 3 s")
        return None
    if event is Event.CLOSE:
        core.closed(1001, "going away", by_peer=True)
        return None
    return core.receive(FRAME_OF[event])


# -- the table, every (state, event) ---------------------------------------------------------

CONTROLLER_STATES = [State.AWAIT_HELLO, State.ESTABLISHED, State.CLOSED]


@pytest.mark.parametrize("event", list(Event))
@pytest.mark.parametrize("state", CONTROLLER_STATES)
def test_every_state_and_event_gives_the_tables_answer_as_effects(
        state: State, event: Event) -> None:
    core = session_in(state)
    entry = TABLE.get((state, event))
    if state is State.CLOSED:  # Rule 2: nothing after the end, not even an error
        assert fire(core, event) in ((), None)
        assert core.state is State.CLOSED and core.take_effects() == []
        return
    if entry is None:
        with pytest.raises(RemoteProtocolError) as info:
            fire(core, event)
        assert info.value.close_code == 4400
        assert state.value in info.value.message and event.value in info.value.message
        assert core.take_effects() == []
        return
    after, actions = entry
    answer = fire(core, event)
    assert core.state is after
    if answer is not None:
        assert answer == actions
    effects = core.take_effects()
    expected_ends = actions.count(Action.END)
    assert sum(isinstance(e, End) for e in effects) == expected_ends
    closes = [e.code for e in effects if isinstance(e, Close)]
    if Action.CLOSE_TIMEOUT in actions:
        assert closes == [4408]
    elif Action.CLOSE_NORMAL in actions:
        assert closes == [1000]
    else:
        assert closes == []  # a close by the peer sends none back


def test_a_steady_state_frame_answers_the_tables_own_handle_tuple() -> None:
    core = welcomed()
    assert core.receive("node.event") is HANDLE
    assert core.receive("edge.heartbeat") is HANDLE
    assert core.receive("some.future_type") is HANDLE  # the gateway answers it with an error
    assert HANDLE == (Action.HANDLE,)


def test_the_hello_is_the_only_way_out_of_await_hello_by_a_frame() -> None:
    core = session_in(State.AWAIT_HELLO)
    assert core.receive("edge.hello") == (Action.VERIFY_HELLO,)
    assert core.state is State.ESTABLISHED


@pytest.mark.parametrize("frame_type", ["node.event", "edge.heartbeat", "edge.goodbye",
                                        "edge.welcome", "edge.challenge", "cmd.status"])
def test_a_frame_before_the_hello_is_a_4400_protocol_error(frame_type: str) -> None:
    core = session_in(State.AWAIT_HELLO)
    with pytest.raises(RemoteProtocolError) as info:
        core.receive(frame_type)
    assert info.value.close_code == 4400
    assert core.state is State.AWAIT_HELLO


def test_a_second_hello_on_an_established_session_is_a_4400_protocol_error() -> None:
    core = welcomed()
    with pytest.raises(RemoteProtocolError) as info:
        core.receive("edge.hello")
    assert info.value.close_code == 4400 and "hello" in info.value.message


# -- endings: once, with the code the gateway sends and records ------------------------------


def test_a_timeout_before_the_hello_closes_4408_and_records_the_end_once() -> None:
    core = session_in(State.AWAIT_HELLO)
    core.timeout("no hello in time")
    assert core.take_effects() == [Close(4408, "no hello in time"),
                                   End(4408, "no hello in time")]
    core.closed(None, "connection closed by node", by_peer=True)  # the socket then closes
    core.timeout("again")
    assert core.take_effects() == []
    assert core.ended


def test_silence_on_an_established_session_closes_4408_and_ends_it() -> None:
    core = welcomed()
    core.timeout("no frame within 3 s")
    assert core.take_effects() == [Close(4408, "no frame within 3 s"),
                                   End(4408, "no frame within 3 s")]


def test_a_goodbye_closes_1000_and_records_a_goodbye_end_and_nothing_after_it() -> None:
    core = welcomed()
    assert core.receive("edge.goodbye") == (Action.CLOSE_NORMAL, Action.END)
    assert core.goodbye
    core.closed(1000, "goodbye", by_peer=False)  # the gateway's _finish, after the flush
    assert core.take_effects() == [Close(1000, "goodbye"), End(1000, "goodbye", goodbye=True)]


def test_a_frame_after_the_end_is_never_handled() -> None:
    core = welcomed()
    core.closed(4409, "superseded by a newer session", by_peer=False)
    assert core.take_effects() == [Close(4409, "superseded by a newer session"),
                                   End(4409, "superseded by a newer session")]
    for frame_type in ("node.event", "edge.ack", "edge.hello", "edge.goodbye"):
        assert core.receive(frame_type) == ()
    assert core.take_effects() == []


def test_a_close_by_the_peer_records_its_code_and_sends_no_close() -> None:
    core = welcomed()
    core.closed(1006, "connection closed by node", by_peer=True)
    assert core.take_effects() == [End(1006, "connection closed by node")]
    core = welcomed()
    core.closed(None, "connection closed by node", by_peer=True)  # no close frame came
    assert core.take_effects() == [End(None, "connection closed by node")]


@pytest.mark.parametrize("code", [1001, 1011, 4400, 4401, 4403, 4426, 4429])
def test_a_close_from_this_side_sends_its_code_and_records_it(code: int) -> None:
    core = session_in(State.AWAIT_HELLO if code in (4401, 4426, 4429) else State.ESTABLISHED)
    core.closed(code, "why", by_peer=False)
    assert core.take_effects() == [Close(code, "why"), End(code, "why")]


ENDING = st.sampled_from(["timeout", "peer", "local", "goodbye", "frame", "hello"])


@PROPERTY
@given(st.lists(ENDING, max_size=12))
def test_whatever_happens_the_end_is_recorded_at_most_once_and_only_when_closed(
        events: list[str]) -> None:
    core = session_in(State.AWAIT_HELLO)
    effects: list[Close | End] = []
    for what in events:
        try:
            if what == "timeout":
                core.timeout("t")
            elif what == "peer":
                core.closed(1000, "p", by_peer=True)
            elif what == "local":
                core.closed(4400, "l", by_peer=False)
            else:
                core.receive({"goodbye": "edge.goodbye", "frame": "node.event",
                              "hello": "edge.hello"}[what])
        except RemoteProtocolError as exc:
            assert exc.close_code == 4400  # the gateway then closes: a local close
            core.closed(4400, exc.message, by_peer=False)
        effects += core.take_effects()
    ends = [e for e in effects if isinstance(e, End)]
    assert len(ends) == (1 if core.ended else 0)
    if ends:
        assert isinstance(effects[-1], End)  # nothing is executed after the end
        assert sum(isinstance(e, Close) for e in effects) <= 1


# -- hostile cursors: the same close codes as the gateway's -----------------------------------


@pytest.mark.parametrize("n", [1, 5, 2**62])
def test_a_cmd_ack_beyond_what_was_sent_is_4400_and_moves_nothing(n: int) -> None:
    core = welcomed()
    with pytest.raises(RemoteProtocolError) as info:
        core.on_cmd_ack(n)
    assert info.value.close_code == 4400
    assert f"q={n}" in info.value.message and "q=0" in info.value.message
    assert (core.cmd.acked, core.cmd.sent, core.cmd_ack_to_store()) == (0, 0, None)


def test_a_cmd_ack_beyond_the_window_sent_is_4400() -> None:
    core = welcomed()
    core.cmd_sending(1)
    assert core.on_cmd_ack(1) is True
    with pytest.raises(RemoteProtocolError) as info:
        core.on_cmd_ack(5)
    assert info.value.close_code == 4400
    assert "q=5" in info.value.message and "q=1" in info.value.message


def test_a_resume_beyond_what_was_sent_is_4400_and_moves_nothing() -> None:
    core = welcomed(cmd_acked=2)
    core.cmd_sending(3)
    with pytest.raises(RemoteProtocolError) as info:
        core.on_resume(4)
    assert info.value.close_code == 4400 and "q=4" in info.value.message
    assert (core.cmd.acked, core.cmd.sent) == (2, 3)


def test_a_duplicate_evt_sequence_is_acked_again_and_a_gap_is_not_applied() -> None:
    core = welcomed(evt_applied=3)
    assert core.evt.epoch == 7
    assert core.evt.classify(3) is Verdict.DUPLICATE
    assert core.evt.classify(5) is Verdict.GAP
    assert core.evt.classify(4) is Verdict.APPLY
    assert core.evt.applied == 3  # what an ack carries until the commit


# -- the downlink bookkeeping, step by step ---------------------------------------------------


def test_the_downlink_sends_within_the_window_and_records_acks_and_the_sent_mark() -> None:
    core = welcomed(cmd_acked=2)
    assert (core.cmd.sent, core.cmd.room()) == (2, WINDOW)
    assert core.cmd_ack_to_store() is None and core.cmd_sent_to_store() is None
    for q in range(3, 3 + WINDOW):
        core.cmd_sending(q)
    assert core.cmd.room() == 0  # the window is full until the node acks
    assert core.cmd_sent_to_store() == 2 + WINDOW
    core.stored_cmd_sent(2 + WINDOW)
    assert core.cmd_sent_to_store() is None
    assert core.on_cmd_ack(4) is True
    assert core.on_cmd_ack(3) is False  # stale: nothing new to record
    assert core.cmd.room() == 2
    assert core.cmd_ack_to_store() == 4
    core.stored_cmd_ack(4)
    assert core.cmd_ack_to_store() is None


def test_a_resume_resends_everything_after_the_nodes_cursor() -> None:
    core = welcomed(cmd_acked=1)
    for q in (2, 3, 4):
        core.cmd_sending(q)
    core.on_resume(2)
    assert (core.cmd.acked, core.cmd.sent) == (2, 2)
    assert core.cmd_ack_to_store() == 2
    core.on_resume(1)  # behind what it acked: re-send after what it acked, never earlier
    assert (core.cmd.acked, core.cmd.sent) == (2, 2)


# -- the lossy link, with the production downlink at the sending end -------------------------


class LossyDownlink(LossyLink):
    """test_streams.LossyLink's link and receiver, with the controller's downlink as the
    sender: each connection is a fresh :class:`EdgeSession` welcomed with the node's applied
    cursor (as the store's open_session records it), which reads the durable outbox in order
    after ``cmd.sent`` within ``cmd.room()`` (the store's downlink_after), marks each frame
    sent before writing it, takes acks and resumes through the core, and has the store
    record acks later (the gateway's downlink pass). The outbox keeps a frame until the
    store recorded its ack."""

    def __init__(self) -> None:
        super().__init__()
        self.core = EdgeSession(cmd_window=WINDOW)

    # the store and the sender

    @precondition(lambda self: self.produced < MAX_PRODUCED)
    @rule()
    def produce(self) -> None:
        self.produced += 1  # the store assigns q with the outbox row
        self.outbox[self.produced] = f"payload-{self.produced}".encode()

    @precondition(lambda self: self.core.cmd.room() > 0 and self.core.cmd.sent < self.produced)
    @rule(n=st.integers(min_value=1, max_value=WINDOW))
    def send(self, n: int) -> None:
        """The gateway's downlink pass: up to ``room`` rows after ``sent``, in order."""
        cmd = self.core.cmd
        rows = [q for q in sorted(self.outbox) if q > cmd.sent][:min(n, cmd.room())]
        for q in rows:
            body = CmdDeliver(command_id=f"c-{q}", kind="exec",
                              args={"p": self.outbox[q].decode()}, created_ms=q)
            self.core.cmd_sending(q)
            self.frames.append(encode_msgpack(body.frame(s="cmd", q=q, k=f"c-{q}")))

    @precondition(lambda self: self.acks)
    @rule(i=st.integers(min_value=0, max_value=50))
    def deliver_an_ack(self, i: int) -> None:
        ack = Ack.parse(decode_msgpack(self.acks.pop(i % len(self.acks))))
        n = ack.acks["cmd"]
        before = self.core.cmd.acked
        assert self.core.on_cmd_ack(n) is (n > before)

    @precondition(lambda self: self.core.cmd_ack_to_store() is not None)
    @rule()
    def record_acks(self) -> None:
        """The store marks the acked commands delivered: they leave the outbox."""
        n = self.core.cmd_ack_to_store()
        assert n is not None
        for q in range(self.core.cmd_acked_stored + 1, n + 1):
            del self.outbox[q]
        self.core.stored_cmd_ack(n)

    @rule()
    def resume(self) -> None:
        """The node's runtime restarts behind the same transport and says edge.resume with
        its durable cursor: what it had accepted but not committed is lost, and so are the
        frames in flight to it (the sidecar has no runtime to hand them to)."""
        self.receiver = StreamReceiver(epoch=EPOCH, applied=len(self.effects))
        self.pending.clear()
        self.frames.clear()
        self.core.on_resume(self.receiver.applied)

    @rule(restart=st.sampled_from(["neither", "sender", "receiver"]))
    def reconnect_after(self, restart: str) -> None:
        """A new connection (a controller restart is one too: its state is the store's)."""
        if restart == "receiver":
            self.receiver = StreamReceiver(epoch=EPOCH, applied=len(self.effects))
            self.pending.clear()
        self.reconnect()

    def reconnect(self) -> None:
        self.frames.clear()
        self.acks.clear()
        self.abort_pending()
        applied = self.receiver.applied  # the hello's cursor, recorded by open_session
        for q in range(self.core.cmd_acked_stored + 1, applied + 1):
            self.outbox.pop(q, None)
        self.core = EdgeSession(cmd_window=WINDOW)
        self.core.receive("edge.hello")
        self.core.welcomed(evt_epoch=0, evt_applied=0, cmd_epoch=EPOCH, cmd_acked=applied)

    # what must always hold

    @invariant()
    def cursors_are_ordered(self) -> None:
        cmd = self.core.cmd
        assert 0 <= self.core.cmd_acked_stored <= cmd.acked <= self.receiver.applied
        assert cmd.acked <= cmd.sent <= cmd.last <= self.produced
        assert cmd.sent - cmd.acked <= WINDOW  # the window is never exceeded
        assert self.receiver.applied <= self.receiver.accepted

    @invariant()
    def the_outbox_holds_exactly_the_unacked_frames(self) -> None:
        assert sorted(self.outbox) == list(range(self.core.cmd_acked_stored + 1,
                                                 self.produced + 1))

    def teardown(self) -> None:
        """A last resume (not a reconnect: the rewind on the same session must be enough
        to recover what the link lost), then a fault-free link until the outbox drains."""
        self.resume()
        for _ in range(4 * self.produced + 4):
            if not self.outbox:
                break
            if self.core.cmd.sent < self.produced and self.core.cmd.room():
                self.send(WINDOW)
            while self.frames:
                self.deliver_frames(1)
                self.commit_pending_effects(len(self.pending))
            while self.acks:
                self.deliver_an_ack(0)
            if self.core.cmd_ack_to_store() is not None:
                self.record_acks()
        assert self.effects == [(q, f"payload-{q}".encode())
                                for q in range(1, self.produced + 1)]
        assert not self.outbox and self.core.cmd.acked == self.produced


LossyDownlink.TestCase.settings = settings(max_examples=200, stateful_step_count=60,
                                           deadline=None, database=None,
                                           suppress_health_check=[HealthCheck.too_slow])
test_the_production_downlink_over_a_lossy_link_applies_every_command_once_in_order = (
    LossyDownlink.TestCase)


def test_the_downlink_model_drains_a_plain_run_without_faults() -> None:
    model: Any = LossyDownlink()
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
    assert model.core.cmd.acked == 1
    model.resume()  # the runtime asks again from q=1: 2.. are sent again
    assert (model.core.cmd.sent, model.core.cmd.room()) == (1, WINDOW)
    model.teardown()
