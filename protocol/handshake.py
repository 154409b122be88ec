"""The edge session state machine (PROTOCOL.md §4-5), as a transition table.

Rule 1: the controller sends ``edge.challenge`` first; the only frame a node may send before
the welcome is ``edge.hello`` (anything else closes with 4400).
Rule 2: a session ends once: goodbye, close or timeout all lead to CLOSED, and CLOSED accepts
nothing (frames on a closed or superseded connection are never applied).

``step(role, state, event) -> (state, actions)``; a missing (state, event) key raises
RemoteProtocolError naming both. The docs' diagram is generated from :data:`TRANSITIONS`.
Both sides are driven by :class:`~tether.protocol.session.SessionCore`, which steps every
event (timeouts and the transport's close too) and turns the actions into what its shell
executes: :class:`~tether.protocol.edge_session.EdgeSession` for the gateway,
:class:`~tether.protocol.session.NodeSession` for the sidecar's link.
"""

from __future__ import annotations

from enum import StrEnum

from .errors import RemoteProtocolError


class Role(StrEnum):
    CONTROLLER = "controller"
    NODE = "node"


class State(StrEnum):
    AWAIT_CHALLENGE = "await_challenge"  # node: connected, challenge not yet seen
    AWAIT_HELLO = "await_hello"  # controller: challenge sent
    AWAIT_WELCOME = "await_welcome"  # node: hello sent
    ESTABLISHED = "established"
    CLOSED = "closed"


class Event(StrEnum):
    CHALLENGE = "challenge"  # edge.challenge
    HELLO = "hello"  # edge.hello
    WELCOME = "welcome"  # edge.welcome
    FRAME = "frame"  # any steady-state frame
    GOODBYE = "goodbye"  # edge.goodbye, either way
    TIMEOUT = "timeout"  # the phase's timeout ran out
    CLOSE = "close"  # the transport closed


class Action(StrEnum):
    SEND_HELLO = "send_hello"
    VERIFY_HELLO = "verify_hello"  # then send welcome, or close 4401/4403/4426
    ACCEPT_WELCOME = "accept_welcome"
    HANDLE = "handle"  # dispatch the steady-state frame
    CLOSE_NORMAL = "close_normal"  # 1000
    CLOSE_TIMEOUT = "close_timeout"  # 4408
    END = "end"  # record the session's end


_T = dict[tuple[State, Event], tuple[State, tuple[Action, ...]]]

TRANSITIONS: dict[Role, _T] = {
    Role.CONTROLLER: {
        (State.AWAIT_HELLO, Event.HELLO): (State.ESTABLISHED, (Action.VERIFY_HELLO,)),
        (State.AWAIT_HELLO, Event.TIMEOUT): (State.CLOSED, (Action.CLOSE_TIMEOUT, Action.END)),
        (State.AWAIT_HELLO, Event.CLOSE): (State.CLOSED, (Action.END,)),
        (State.ESTABLISHED, Event.FRAME): (State.ESTABLISHED, (Action.HANDLE,)),
        (State.ESTABLISHED, Event.GOODBYE): (State.CLOSED, (Action.CLOSE_NORMAL, Action.END)),
        (State.ESTABLISHED, Event.TIMEOUT): (State.CLOSED, (Action.CLOSE_TIMEOUT, Action.END)),
        (State.ESTABLISHED, Event.CLOSE): (State.CLOSED, (Action.END,)),
    },
    Role.NODE: {
        (State.AWAIT_CHALLENGE, Event.CHALLENGE): (State.AWAIT_WELCOME, (Action.SEND_HELLO,)),
        (State.AWAIT_CHALLENGE, Event.TIMEOUT): (State.CLOSED,
                                                 (Action.CLOSE_TIMEOUT, Action.END)),
        (State.AWAIT_CHALLENGE, Event.CLOSE): (State.CLOSED, (Action.END,)),
        (State.AWAIT_WELCOME, Event.WELCOME): (State.ESTABLISHED, (Action.ACCEPT_WELCOME,)),
        (State.AWAIT_WELCOME, Event.TIMEOUT): (State.CLOSED, (Action.CLOSE_TIMEOUT, Action.END)),
        (State.AWAIT_WELCOME, Event.CLOSE): (State.CLOSED, (Action.END,)),
        (State.ESTABLISHED, Event.FRAME): (State.ESTABLISHED, (Action.HANDLE,)),
        (State.ESTABLISHED, Event.GOODBYE): (State.CLOSED, (Action.CLOSE_NORMAL, Action.END)),
        (State.ESTABLISHED, Event.TIMEOUT): (State.CLOSED, (Action.CLOSE_TIMEOUT, Action.END)),
        (State.ESTABLISHED, Event.CLOSE): (State.CLOSED, (Action.END,)),
    },
}

INITIAL: dict[Role, State] = {Role.CONTROLLER: State.AWAIT_HELLO,
                              Role.NODE: State.AWAIT_CHALLENGE}

_FRAME_EVENTS = {
    "edge.challenge": Event.CHALLENGE,
    "edge.hello": Event.HELLO,
    "edge.welcome": Event.WELCOME,
    "edge.goodbye": Event.GOODBYE,
}


def event_for(frame_type: str) -> Event:
    """The handshake event a received frame type stands for."""
    return _FRAME_EVENTS.get(frame_type, Event.FRAME)


def step(role: Role, state: State, event: Event) -> tuple[State, tuple[Action, ...]]:
    """One transition. Raises RemoteProtocolError (code ``protocol_error``, close 4400) when
    ``event`` is not allowed in ``state``."""
    try:
        return TRANSITIONS[role][(state, event)]
    except KeyError:
        raise RemoteProtocolError(
            f"{event.value!r} is not allowed in state {state.value!r} ({role.value} side)",
            code="protocol_error") from None


def mermaid(role: Role) -> str:
    """The transition table as a Mermaid state diagram, for docs/protocol.md."""
    lines = ["stateDiagram-v2", f"    [*] --> {INITIAL[role].value}"]
    for (src, ev), (dst, actions) in TRANSITIONS[role].items():
        acts = ", ".join(a.value for a in actions)
        lines.append(f"    {src.value} --> {dst.value}: {ev.value} / {acts}")
    return "\n".join(lines)
