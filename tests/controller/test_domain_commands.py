"""The command and stream rules of controller/domain (pure: no store, no loop)."""

from __future__ import annotations

import json

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.controller.domain.commands import (
    COMMAND_STATES,
    CONTROL_KINDS,
    STATUS_STATES,
    TERMINAL_STATES,
    TRANSITIONS,
    ControlAction,
    cmd_epoch_fits,
    control_action,
    delivery,
    on_status,
    resequence,
)
from tether.controller.domain.streams import evt_epoch_at_hello, from_stored, to_stored
from tether.protocol.codec import decode_msgpack
from tether.protocol.errors import Conflict

states = st.sampled_from(COMMAND_STATES)
u64 = st.integers(min_value=0, max_value=(1 << 64) - 1)


def test_the_state_table_names_every_state_and_terminal_states_lead_nowhere() -> None:
    assert set(TRANSITIONS) == set(COMMAND_STATES)
    assert all(not TRANSITIONS[s] for s in TERMINAL_STATES)
    assert all(TRANSITIONS[s] <= set(COMMAND_STATES) for s in COMMAND_STATES)


@given(states, st.sampled_from(sorted(STATUS_STATES)))
def test_a_status_applies_unless_the_command_is_terminal_or_already_there(
        current: str, reported: str) -> None:
    decision = on_status(current, reported)
    assert decision.apply == (current not in TERMINAL_STATES and current != reported)
    if decision.apply:
        assert decision.state == reported and decision.detail is None
        assert decision.implied_delivered == (current == "queued")
    else:
        assert decision.state == current and not decision.implied_delivered
        assert decision.detail == f"ignored: command already {current}"


@given(states, st.sampled_from(sorted(CONTROL_KINDS)), st.booleans())
def test_control_actions_are_allowed_only_from_the_states_the_api_documents(
        state: str, action: str, sequenced: bool) -> None:
    allowed = state not in TERMINAL_STATES and (
        action == "cancel" or (action == "pause" and state == "running")
        or (action == "resume" and state == "paused"))
    if not allowed:
        with pytest.raises(Conflict) as info:
            control_action("c1", action, state, sequenced=sequenced)
        expected = ("command_terminal" if state in TERMINAL_STATES else
                    {"pause": "command_not_running", "resume": "command_not_paused"}[action])
        assert info.value.code == expected
        return
    how = control_action("c1", action, state, sequenced=sequenced)
    local = action == "cancel" and state == "queued" and not sequenced
    assert how is (ControlAction.CANCEL_HERE if local else ControlAction.SEND)


def test_an_unknown_control_action_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        control_action("c1", "explode", "running", sequenced=True)


def test_a_delivery_carries_the_commands_id_kind_args_and_times_at_its_number() -> None:
    out = delivery(command_id="c1", kind="exec", args_json='{"argv":["true"]}',
                   created_at=1.5, deadline=9.25, now=2.0, q=3, max_frame=1 << 20)
    assert out.frame is not None and out.state is None
    frame = decode_msgpack(out.frame)
    assert (frame.t, frame.s, frame.q, frame.id) == ("cmd.deliver", "cmd", 3, "c1")
    assert frame.b == {"command_id": "c1", "kind": "exec", "args": {"argv": ["true"]},
                       "created_ms": 1500, "deadline_ms": 9250}


@pytest.mark.parametrize(("args_json", "kind", "deadline", "max_frame", "state", "error"), [
    ('{"argv":["true"]}', "exec", 2.0, 1 << 20, "expired", "deadline passed"),
    ("{not json", "exec", None, 1 << 20, "rejected", "not valid JSON"),
    ('{"argv":[NaN]}', "exec", None, 1 << 20, "rejected", "not delivered"),
    ('{"argv":"true"}', "exec", None, 1 << 20, "rejected", "argv"),
    ('{"argv":["true"]}', "", None, 1 << 20, "rejected", "kind"),
    ('{"argv":["true"]}', "exec", None, 10, "rejected", "frame limit"),
])
def test_a_command_that_cannot_be_delivered_ends_with_the_reason(
        args_json: str, kind: str, deadline: float | None, max_frame: int, state: str,
        error: str) -> None:
    out = delivery(command_id="c1", kind=kind, args_json=args_json, created_at=1.0,
                   deadline=deadline, now=2.0, q=1, max_frame=max_frame)
    assert out.frame is None and out.state == state and error in (out.error or "")


@given(st.integers(0, 50), st.integers(0, 50), st.integers(0, 50), st.integers(0, 50),
       st.booleans())
def test_the_cmd_epoch_is_kept_only_when_the_nodes_ack_fits_what_was_sent(
        applied: int, acked: int, sent: int, extra: int, evt_reset: bool) -> None:
    last = applied + extra
    fits = cmd_epoch_fits(applied=applied, acked=acked, sent=sent, last=last,
                          evt_reset=evt_reset)
    assert fits == (not evt_reset and applied <= acked <= min(max(sent, applied), last))


@given(st.lists(st.integers(1, 1 << 40), max_size=20))
def test_resequencing_renumbers_from_1_in_order_and_changes_nothing_else(
        qs: list[int]) -> None:
    frames = [msgpack.packb({"t": "cmd.deliver", "s": "cmd", "q": q, "id": f"c{i}",
                             "b": {"command_id": f"c{i}"}}) for i, q in enumerate(qs)]
    out = [msgpack.unpackb(f) for f in resequence(frames)]
    assert [f["q"] for f in out] == list(range(1, len(qs) + 1))
    assert [{**f, "q": 0} for f in out] == [{**msgpack.unpackb(f), "q": 0} for f in frames]


@given(u64)
def test_a_node_epoch_is_stored_in_signed_64_bits_and_read_back_the_same(epoch: int) -> None:
    stored = to_stored(epoch)
    assert -(1 << 63) <= stored < 1 << 63 and from_stored(stored) == epoch


@pytest.mark.parametrize("epoch", [-1, 1 << 64])
def test_an_epoch_outside_64_unsigned_bits_is_refused(epoch: int) -> None:
    with pytest.raises(ValueError):
        to_stored(epoch)


@given(st.one_of(st.none(), u64.map(to_stored)), u64, st.integers(0, 100))
def test_the_evt_epoch_at_hello_resumes_when_equal_and_restarts_otherwise(
        stored: int | None, hello: int, applied: int) -> None:
    out = evt_epoch_at_hello(stored=stored, hello=hello, applied=applied)
    same = stored is not None and from_stored(stored) == hello
    assert out.applied == (applied if same else 0)
    assert out.record == (not same)
    assert out.reset == (stored is not None and not same)


def test_stored_args_in_a_delivery_are_decoded_as_json() -> None:
    body = json.dumps({"argv": ["echo", "é"]})
    out = delivery(command_id="c1", kind="exec", args_json=body, created_at=0.0,
                   deadline=None, now=0.0, q=1, max_frame=1 << 20)
    assert out.frame is not None and decode_msgpack(out.frame).b["args"]["argv"][1] == "é"
