"""The node's edge session core (protocol/session.py's NodeSession), with no I/O: every
(state, event) of the node role's handshake table gives the actions and effects the sidecar's
link executes, a timeout in any phase closes with 4408, the session ends once, and nothing is
handled after it ended."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.protocol.edge_session import EdgeSession
from tether.protocol.errors import RemoteProtocolError
from tether.protocol.handshake import TRANSITIONS, Action, Event, Role, State
from tether.protocol.session import NODE_HANDLE, Close, End, NodeSession, SessionCore

TABLE = TRANSITIONS[Role.NODE]
FRAME_OF = {Event.CHALLENGE: "edge.challenge", Event.HELLO: "edge.hello",
            Event.WELCOME: "edge.welcome", Event.FRAME: "cmd.deliver",
            Event.GOODBYE: "edge.goodbye"}
NODE_STATES = [State.AWAIT_CHALLENGE, State.AWAIT_WELCOME, State.ESTABLISHED, State.CLOSED]


def session_in(state: State) -> NodeSession:
    """A core driven into ``state`` by the frames the link would step."""
    core = NodeSession()
    if state in (State.AWAIT_WELCOME, State.ESTABLISHED):
        assert core.receive("edge.challenge") == (Action.SEND_HELLO,)
    if state is State.ESTABLISHED:
        assert core.receive("edge.welcome") == (Action.ACCEPT_WELCOME,)
    if state is State.CLOSED:
        core.closed(1006, "", by_peer=True)
        core.take_effects()
    assert core.state is state
    return core


def fire(core: NodeSession, event: Event) -> tuple[Action, ...] | None:
    """Deliver ``event`` as the link does; the table's actions for a frame, None for a
    timeout or a close (their effects are queued)."""
    if event is Event.TIMEOUT:
        core.timeout("nothing from the controller for 10 s")
        return None
    if event is Event.CLOSE:
        core.closed(1001, "going away", by_peer=True)
        return None
    return core.receive(FRAME_OF[event])


@pytest.mark.parametrize("event", list(Event))
@pytest.mark.parametrize("state", NODE_STATES)
def test_every_state_and_event_of_the_node_table_gives_its_answer_as_effects(
        state: State, event: Event) -> None:
    core = session_in(state)
    if state is State.CLOSED:  # nothing after the end, not even an error
        assert fire(core, event) in ((), None)
        assert core.state is State.CLOSED and core.take_effects() == []
        return
    entry = TABLE.get((state, event))
    if entry is None:
        with pytest.raises(RemoteProtocolError) as info:
            fire(core, event)
        assert info.value.close_code == 4400
        assert state.value in info.value.message and event.value in info.value.message
        assert "node side" in info.value.message
        assert core.state is state and core.take_effects() == []
        return
    after, actions = entry
    answer = fire(core, event)
    assert core.state is after
    if answer is not None:
        assert answer is actions  # the table's own tuple
    effects = core.take_effects()
    assert sum(isinstance(e, End) for e in effects) == actions.count(Action.END)
    closes = [e.code for e in effects if isinstance(e, Close)]
    if Action.CLOSE_TIMEOUT in actions:
        assert closes == [4408]
    elif Action.CLOSE_NORMAL in actions:
        assert closes == [1000]
    else:
        assert closes == []  # a close by the controller sends none back


def test_the_states_above_reach_every_key_of_the_node_table() -> None:
    # fails when the table grows a state the parametrized test does not drive into
    assert set(TABLE) <= {(state, event) for state in NODE_STATES for event in Event}


def test_the_challenge_asks_for_the_hello_and_the_welcome_establishes_the_session() -> None:
    core = NodeSession()
    assert core.state is State.AWAIT_CHALLENGE
    assert core.receive("edge.challenge") == (Action.SEND_HELLO,)
    assert core.state is State.AWAIT_WELCOME
    assert core.receive("edge.welcome") == (Action.ACCEPT_WELCOME,)
    assert core.state is State.ESTABLISHED and not core.ended
    assert core.take_effects() == []


def test_a_steady_state_frame_answers_the_node_tables_own_handle_tuple() -> None:
    core = session_in(State.ESTABLISHED)
    for frame_type in ("cmd.deliver", "edge.ack", "edge.heartbeat_ack", "error", "x.future"):
        assert core.receive(frame_type) is NODE_HANDLE
    assert NODE_HANDLE == (Action.HANDLE,)


@pytest.mark.parametrize("frame_type", ["cmd.deliver", "edge.welcome", "edge.hello",
                                        "edge.goodbye", "error"])
def test_anything_but_the_challenge_first_is_a_4400_protocol_error(frame_type: str) -> None:
    core = NodeSession()
    with pytest.raises(RemoteProtocolError) as info:
        core.receive(frame_type)
    assert info.value.close_code == 4400
    assert core.state is State.AWAIT_CHALLENGE


@pytest.mark.parametrize("frame_type", ["edge.challenge", "cmd.deliver", "edge.goodbye"])
def test_anything_but_the_welcome_after_the_hello_is_a_4400_protocol_error(
        frame_type: str) -> None:
    core = session_in(State.AWAIT_WELCOME)
    with pytest.raises(RemoteProtocolError) as info:
        core.receive(frame_type)
    assert info.value.close_code == 4400
    assert core.state is State.AWAIT_WELCOME


@pytest.mark.parametrize("frame_type", ["edge.challenge", "edge.welcome", "edge.hello"])
def test_a_handshake_frame_on_an_established_session_is_a_4400_protocol_error(
        frame_type: str) -> None:
    core = session_in(State.ESTABLISHED)
    with pytest.raises(RemoteProtocolError) as info:
        core.receive(frame_type)
    assert info.value.close_code == 4400


# -- endings: once, with the code the link sends and records ---------------------------------


@pytest.mark.parametrize("state", [State.AWAIT_CHALLENGE, State.AWAIT_WELCOME,
                                   State.ESTABLISHED])
def test_a_timeout_in_any_phase_closes_4408_and_ends_once(state: State) -> None:
    core = session_in(state)
    core.timeout("nothing from the controller for 10 s")
    assert core.take_effects() == [Close(4408, "nothing from the controller for 10 s"),
                                   End(4408, "nothing from the controller for 10 s")]
    core.closed(4408, "", by_peer=True)  # the transport then closes
    core.timeout("again")
    assert core.take_effects() == []
    assert core.ended


def test_the_controllers_goodbye_closes_1000_and_records_a_goodbye_end() -> None:
    core = session_in(State.ESTABLISHED)
    assert core.receive("edge.goodbye") == (Action.CLOSE_NORMAL, Action.END)
    assert core.goodbye and core.ended
    assert core.take_effects() == [Close(1000, "controller said goodbye"),
                                   End(1000, "controller said goodbye", goodbye=True)]
    core.closed(1000, "", by_peer=True)
    assert core.take_effects() == []


@pytest.mark.parametrize("state", [State.AWAIT_CHALLENGE, State.AWAIT_WELCOME,
                                   State.ESTABLISHED])
def test_a_close_by_the_controller_records_its_code_and_sends_no_close(state: State) -> None:
    core = session_in(state)
    core.closed(4401, "bad signature", by_peer=True)
    assert core.take_effects() == [End(4401, "bad signature")]
    core = session_in(state)
    core.closed(None, "", by_peer=True)  # the network dropped it: no close frame came
    assert core.take_effects() == [End(None, "")]


@pytest.mark.parametrize(("state", "code"), [(State.AWAIT_CHALLENGE, 4400),
                                             (State.AWAIT_WELCOME, 4426),
                                             (State.ESTABLISHED, 1009),
                                             (State.ESTABLISHED, 1000)])
def test_a_close_from_the_node_side_sends_its_code_and_records_it(state: State,
                                                                   code: int) -> None:
    core = session_in(state)
    core.closed(code, "why", by_peer=False)
    assert core.take_effects() == [Close(code, "why"), End(code, "why")]


def test_frames_after_the_end_are_ignored_never_handled_nor_refused() -> None:
    core = session_in(State.ESTABLISHED)
    core.timeout("stale")
    core.take_effects()
    for frame_type in ("cmd.deliver", "edge.ack", "edge.challenge", "edge.welcome",
                       "edge.goodbye", "edge.hello"):
        assert core.receive(frame_type) == ()
    assert core.take_effects() == [] and core.state is State.CLOSED and not core.goodbye


EVENTS = st.sampled_from(["challenge", "welcome", "frame", "goodbye", "timeout", "peer",
                          "local"])


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(EVENTS, max_size=12))
def test_whatever_happens_the_end_is_recorded_at_most_once_and_only_when_closed(
        events: list[str]) -> None:
    core = NodeSession()
    effects: list[Close | End] = []
    for what in events:
        try:
            if what == "timeout":
                core.timeout("t")
            elif what == "peer":
                core.closed(1006, "", by_peer=True)
            elif what == "local":
                core.closed(4400, "bad", by_peer=False)
            else:
                core.receive(FRAME_OF[Event(what)])
        except RemoteProtocolError:
            core.closed(4400, "refused", by_peer=False)  # what the link does with it
        effects += core.take_effects()
    ends = [e for e in effects if isinstance(e, End)]
    assert len(ends) == (1 if core.ended else 0)
    assert len([e for e in effects if isinstance(e, Close)]) <= 1
    if ends:
        assert effects[-1] == ends[0]  # the end comes last, after the close it records


def test_both_roles_share_one_core_each_with_its_own_table() -> None:
    assert isinstance(NodeSession(), SessionCore) and isinstance(EdgeSession(), SessionCore)
    assert NodeSession().state is State.AWAIT_CHALLENGE
    assert EdgeSession().state is State.AWAIT_HELLO
