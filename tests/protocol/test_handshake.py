"""The edge session state machine (PROTOCOL.md §4-5): every (role, state, event) pair, the
diagram generated from the table, a stateful model of one session per side, and a pair
helper that drives a node and a controller through a real handshake on bytes."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from tether.protocol.codec import decode_msgpack, encode_msgpack
from tether.protocol.errors import RemoteProtocolError
from tether.protocol.frames import Challenge, Frame, Hello, Welcome, parse_body
from tether.protocol.handshake import (
    INITIAL,
    TRANSITIONS,
    Action,
    Event,
    Role,
    State,
    event_for,
    mermaid,
    step,
)
from tether.protocol.signing import load_private_key, public_key_raw, sign_hello, verify_hello

PROPERTY = settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

C, N = Role.CONTROLLER, Role.NODE
S, E, A = State, Event, Action

# PROTOCOL.md §4-5 written out by hand, independent of the module's table.
SPEC: dict[Role, dict[tuple[State, Event], tuple[State, tuple[Action, ...]]]] = {
    C: {
        (S.AWAIT_HELLO, E.HELLO): (S.ESTABLISHED, (A.VERIFY_HELLO,)),
        (S.AWAIT_HELLO, E.TIMEOUT): (S.CLOSED, (A.CLOSE_TIMEOUT, A.END)),
        (S.AWAIT_HELLO, E.CLOSE): (S.CLOSED, (A.END,)),
        (S.ESTABLISHED, E.FRAME): (S.ESTABLISHED, (A.HANDLE,)),
        (S.ESTABLISHED, E.GOODBYE): (S.CLOSED, (A.CLOSE_NORMAL, A.END)),
        (S.ESTABLISHED, E.TIMEOUT): (S.CLOSED, (A.CLOSE_TIMEOUT, A.END)),
        (S.ESTABLISHED, E.CLOSE): (S.CLOSED, (A.END,)),
    },
    N: {
        (S.AWAIT_CHALLENGE, E.CHALLENGE): (S.AWAIT_WELCOME, (A.SEND_HELLO,)),
        (S.AWAIT_CHALLENGE, E.TIMEOUT): (S.CLOSED, (A.CLOSE_TIMEOUT, A.END)),
        (S.AWAIT_CHALLENGE, E.CLOSE): (S.CLOSED, (A.END,)),
        (S.AWAIT_WELCOME, E.WELCOME): (S.ESTABLISHED, (A.ACCEPT_WELCOME,)),
        (S.AWAIT_WELCOME, E.TIMEOUT): (S.CLOSED, (A.CLOSE_TIMEOUT, A.END)),
        (S.AWAIT_WELCOME, E.CLOSE): (S.CLOSED, (A.END,)),
        (S.ESTABLISHED, E.FRAME): (S.ESTABLISHED, (A.HANDLE,)),
        (S.ESTABLISHED, E.GOODBYE): (S.CLOSED, (A.CLOSE_NORMAL, A.END)),
        (S.ESTABLISHED, E.TIMEOUT): (S.CLOSED, (A.CLOSE_TIMEOUT, A.END)),
        (S.ESTABLISHED, E.CLOSE): (S.CLOSED, (A.END,)),
    },
}

ALL_PAIRS = [(role, state, event) for role in Role for state in State for event in Event]


def test_the_transition_table_is_the_one_protocol_md_describes() -> None:
    assert TRANSITIONS == SPEC
    assert INITIAL == {C: S.AWAIT_HELLO, N: S.AWAIT_CHALLENGE}


@PROPERTY
@given(st.sampled_from(Role), st.sampled_from(State), st.sampled_from(Event))
def test_step_returns_the_table_entry_or_a_4400_error_naming_state_and_event(
        role: Role, state: State, event: Event) -> None:
    expected = SPEC[role].get((state, event))
    if expected is not None:
        assert step(role, state, event) == expected
        return
    with pytest.raises(RemoteProtocolError) as info:
        step(role, state, event)
    assert state.value in info.value.message
    assert event.value in info.value.message
    assert info.value.code == "protocol_error"
    assert info.value.close_code == 4400


def test_every_role_state_event_pair_is_either_allowed_or_refused() -> None:
    """The exhaustive twin of the property above: 2 x 5 x 7 pairs, none left out."""
    allowed = 0
    for role, state, event in ALL_PAIRS:
        try:
            step(role, state, event)
            allowed += 1
        except RemoteProtocolError as exc:
            assert (state, event) not in SPEC[role]
            assert exc.close_code == 4400
    assert allowed == len(SPEC[C]) + len(SPEC[N])


@pytest.mark.parametrize("event", list(Event))
@pytest.mark.parametrize("role", list(Role))
def test_closed_accepts_nothing(role: Role, event: Event) -> None:
    with pytest.raises(RemoteProtocolError):
        step(role, S.CLOSED, event)


def test_the_controller_leaves_await_hello_only_by_hello_timeout_or_close() -> None:
    leaving = set()
    for event in Event:
        try:
            state, _ = step(C, S.AWAIT_HELLO, event)
        except RemoteProtocolError:
            continue
        assert state is not S.AWAIT_HELLO
        leaving.add(event)
    assert leaving == {E.HELLO, E.TIMEOUT, E.CLOSE}


@pytest.mark.parametrize("event", [E.CHALLENGE, E.WELCOME, E.FRAME, E.GOODBYE])
def test_any_frame_but_hello_before_the_welcome_closes_with_4400(event: Event) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        step(C, S.AWAIT_HELLO, event)
    assert info.value.close_code == 4400


def test_a_second_hello_on_an_established_session_is_a_protocol_error() -> None:
    with pytest.raises(RemoteProtocolError, match="hello"):
        step(C, S.ESTABLISHED, E.HELLO)


@pytest.mark.parametrize("role", list(Role))
def test_every_live_state_ends_on_timeout_or_close_and_records_the_end_once(
        role: Role) -> None:
    for state in State:
        if state is S.CLOSED or not any(src is state for src, _ in SPEC[role]):
            continue
        for event in (E.TIMEOUT, E.CLOSE):
            after, actions = step(role, state, event)
            assert after is S.CLOSED
            assert actions.count(A.END) == 1
        assert A.CLOSE_TIMEOUT in step(role, state, E.TIMEOUT)[1]


@pytest.mark.parametrize("role", list(Role))
def test_a_goodbye_closes_normally_only_once_established(role: Role) -> None:
    assert step(role, S.ESTABLISHED, E.GOODBYE) == (S.CLOSED, (A.CLOSE_NORMAL, A.END))


@PROPERTY
@given(st.text(min_size=1, max_size=30))
def test_frame_types_map_to_handshake_events(frame_type: str) -> None:
    named = {"edge.challenge": E.CHALLENGE, "edge.hello": E.HELLO,
             "edge.welcome": E.WELCOME, "edge.goodbye": E.GOODBYE}
    assert event_for(frame_type) is named.get(frame_type, E.FRAME)
    for known, event in named.items():
        assert event_for(known) is event


@pytest.mark.parametrize("role", list(Role))
def test_the_mermaid_diagram_mentions_every_transition(role: Role) -> None:
    diagram = mermaid(role)
    lines = diagram.splitlines()
    assert lines[0] == "stateDiagram-v2"
    assert f"    [*] --> {INITIAL[role].value}" in lines
    for (src, event), (dst, actions) in SPEC[role].items():
        line = f"    {src.value} --> {dst.value}: {event.value} / " + ", ".join(
            a.value for a in actions)
        assert line in lines
    assert len(lines) == 2 + len(SPEC[role])


# --- a stateful model: both sides fed arbitrary events -------------------------------------


class Session(RuleBasedStateMachine):
    """Feeds arbitrary events to one controller-side and one node-side session. A refused
    event closes the connection (4400), which the transport reports as CLOSE."""

    def __init__(self) -> None:
        super().__init__()
        self.state = dict(INITIAL)
        self.actions: dict[Role, list[Action]] = {C: [], N: []}
        self.closed_with: dict[Role, int | None] = {C: None, N: None}

    @rule(role=st.sampled_from(Role), event=st.sampled_from(Event))
    def feed(self, role: Role, event: Event) -> None:
        before = self.state[role]
        try:
            self.state[role], actions = step(role, before, event)
        except RemoteProtocolError as exc:
            assert (before, event) not in SPEC[role]
            if before is not S.CLOSED:
                self.closed_with[role] = exc.close_code
                self.state[role], actions = step(role, before, E.CLOSE)
            else:
                actions = ()
        self.actions[role].extend(actions)

    @invariant()
    def a_session_ends_once_and_ended_means_closed(self) -> None:
        for role in Role:
            ends = self.actions[role].count(A.END)
            assert ends <= 1
            assert (ends == 1) == (self.state[role] is S.CLOSED)

    @invariant()
    def frames_are_handled_only_after_the_handshake_completed(self) -> None:
        gate = {C: A.VERIFY_HELLO, N: A.ACCEPT_WELCOME}
        for role in Role:
            acts = self.actions[role]
            assert acts.count(gate[role]) <= 1
            if A.HANDLE in acts:
                assert acts.index(gate[role]) < acts.index(A.HANDLE)
            if self.state[role] is S.ESTABLISHED:
                assert gate[role] in acts

    @invariant()
    def a_refused_event_closed_with_4400(self) -> None:
        assert set(self.closed_with.values()) <= {None, 4400}


Session.TestCase.settings = settings(max_examples=100, stateful_step_count=30, deadline=None,
                                     database=None)
test_a_session_fed_any_events_ends_once_and_handles_frames_only_when_established = (
    Session.TestCase)


# --- a pair: node and controller over msgpack bytes ----------------------------------------

NODE_SEED = bytes(range(32))
NONCE = bytes(range(100, 132))


@dataclass
class Side:
    role: Role
    state: State = field(init=False)
    actions: list[Action] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.state = INITIAL[self.role]

    def receive(self, data: bytes) -> Frame:
        frame = decode_msgpack(data)
        self.state, actions = step(self.role, self.state, event_for(frame.t))
        self.actions.extend(actions)
        return frame


@dataclass
class Pair:
    """Drives both peers through PROTOCOL.md §4, frame by frame, as bytes."""

    node_id: str = "node-a"
    controller_id: str = "ctl-1"
    enrolled_key: bytes = field(default_factory=lambda: public_key_raw(
        load_private_key(NODE_SEED)))
    node: Side = field(default_factory=lambda: Side(N))
    controller: Side = field(default_factory=lambda: Side(C))

    def challenge(self) -> bytes:
        return encode_msgpack(Challenge(nonce=NONCE, controller_id=self.controller_id,
                                        time_ms=1_000).frame(id="c1"))

    def node_answers(self, data: bytes, *, claim: str | None = None) -> bytes:
        """The node's hello, signed for its own id; ``claim`` puts another id in the body."""
        challenge = Challenge.parse(self.node.receive(data))
        assert self.node.actions[-1] is A.SEND_HELLO
        sig = sign_hello(load_private_key(NODE_SEED), challenge.nonce,
                         challenge.controller_id, self.node_id)
        return encode_msgpack(Hello(node_id=claim or self.node_id, sig=sig, epoch=77,
                                    acks={"cmd": 0}).frame(id="h1"))

    def controller_answers(self, data: bytes, *, nonce: bytes = NONCE) -> bytes | int:
        """The welcome, or the close code when the hello does not verify."""
        hello = parse_body(self.controller.receive(data))
        assert isinstance(hello, Hello)
        assert self.controller.actions[-1] is A.VERIFY_HELLO
        if not verify_hello(self.enrolled_key, hello.sig, nonce, self.controller_id,
                            hello.node_id):
            self.controller.state, actions = step(C, self.controller.state, E.CLOSE)
            self.controller.actions.extend(actions)
            return 4401
        return encode_msgpack(Welcome(session_id="s-1", resumed=False, epoch=5,
                                      acks={"evt": 0}).frame(re="h1"))


def test_a_node_and_a_controller_complete_the_handshake_over_msgpack_bytes() -> None:
    pair = Pair()
    welcome = pair.controller_answers(pair.node_answers(pair.challenge()))
    assert isinstance(welcome, bytes)
    pair.node.receive(welcome)
    assert pair.node.state is pair.controller.state is S.ESTABLISHED
    assert pair.node.actions == [A.SEND_HELLO, A.ACCEPT_WELCOME]
    assert pair.controller.actions == [A.VERIFY_HELLO]


def test_a_hello_signed_for_another_nonce_is_refused_with_4401() -> None:
    pair = Pair()
    hello = pair.node_answers(pair.challenge())
    assert pair.controller_answers(hello, nonce=bytes(32)) == 4401
    assert pair.controller.state is S.CLOSED
    assert pair.controller.actions == [A.VERIFY_HELLO, A.END]


def test_a_hello_signed_by_one_node_but_claiming_another_id_is_refused_with_4401() -> None:
    pair = Pair()
    hello = pair.node_answers(pair.challenge(), claim="node-b")
    assert pair.controller_answers(hello) == 4401


def test_a_steady_state_frame_before_the_hello_is_refused_with_4400() -> None:
    pair = Pair()
    with pytest.raises(RemoteProtocolError) as info:
        pair.controller.receive(encode_msgpack(Frame(t="edge.heartbeat", b={"uptime_s": 1})))
    assert info.value.close_code == 4400
    assert "await_hello" in info.value.message and "frame" in info.value.message


def test_after_a_goodbye_nothing_more_is_accepted_on_that_connection() -> None:
    pair = Pair()
    welcome = pair.controller_answers(pair.node_answers(pair.challenge()))
    assert isinstance(welcome, bytes)
    pair.node.receive(welcome)
    pair.controller.receive(encode_msgpack(Frame(t="edge.goodbye", b={"reason": "bye"})))
    assert pair.controller.state is S.CLOSED
    with pytest.raises(RemoteProtocolError):
        pair.controller.receive(encode_msgpack(Frame(t="cmd.status", s="evt", q=1)))
