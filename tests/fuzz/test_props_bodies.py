"""Fuzz each typed body's validation, the value rules and the handshake table, in process
and without I/O (PROTOCOL.md §2-5).

* Every type in ``BODY_TYPES``, fed hostile maps (keys from every body's field names,
  values msgpack or JSON can carry: NaN, 2**64, bin, lone surrogates, deep nesting), is
  parsed or refused with a RemoteProtocolError (BadFrame, close 4400), never another error.
* :func:`plain` refuses with BadFrame only; what it returns is JSON without NaN, survives
  msgpack unchanged and keeps its limits.
* The handshake's ``step()`` over any sequence of events ends in a state of the table or
  raises RemoteProtocolError (4400); CLOSED accepts nothing.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from tether.protocol.codec import decode_json, decode_msgpack, encode_msgpack
from tether.protocol.errors import RemoteProtocolError
from tether.protocol.frames import BODY_TYPES, Frame, parse_body
from tether.protocol.handshake import INITIAL, TRANSITIONS, Event, Role, State, step
from tether.protocol.values import INT64_MAX, Limits, plain

from . import targets
from .seeds import SAMPLES
from .strategies import (
    fields_of,
    fuzz_settings,
    json_text,
    json_values,
    msgpack_values,
    mutated_body,
    poison_values,
)

FIELDS = fields_of(BODY_TYPES)
TYPES = sorted(BODY_TYPES)
keys = st.sampled_from(FIELDS) | st.text(max_size=8)


def hostile_maps(values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(keys, values, max_size=8)


@fuzz_settings(150)
@given(t=st.sampled_from(TYPES), body=hostile_maps(msgpack_values))
def test_every_body_type_parses_or_refuses_any_msgpack_map_with_a_bad_frame(
        t: str, body: dict[str, Any]) -> None:
    targets.check_body_map(t, body)


@fuzz_settings(150)
@given(t=st.sampled_from(TYPES), body=hostile_maps(json_values))
def test_every_body_type_parses_or_refuses_any_json_map_with_a_bad_frame(
        t: str, body: dict[str, Any]) -> None:
    try:  # the map as the JSON decoder hands it over (NaN, big integers; no lone surrogate)
        decoded = decode_json(json.dumps({"t": t, "b": body}), max_frame_bytes=targets.HUGE)
    except RemoteProtocolError:
        return
    targets.check_body_map(t, decoded.b)


@fuzz_settings(300)
@given(data=st.data())
def test_every_body_type_parses_or_refuses_a_valid_body_with_hostile_fields(
        data: st.DataObject) -> None:
    t = data.draw(st.sampled_from(TYPES), label="t")
    codec = data.draw(st.sampled_from(["msgpack", "json"]), label="codec")
    values = poison_values if codec == "msgpack" else json_values
    body = data.draw(mutated_body(SAMPLES.get(t, {}), FIELDS, values), label="body")
    if codec == "json":  # as the JSON decoder hands it over (it refuses lone surrogates)
        try:
            body = decode_json(json.dumps({"t": t, "b": body}, default=bytes.hex),
                               max_frame_bytes=targets.HUGE).b
        except RemoteProtocolError:
            return
    targets.check_body_map(t, body)


@fuzz_settings(100)
@given(t=st.sampled_from(TYPES), body=hostile_maps(msgpack_values))
def test_a_body_accepted_from_msgpack_travels_again_and_parses_to_the_same_value(
        t: str, body: dict[str, Any]) -> None:
    try:
        parsed = parse_body(Frame(t=t, b=body))
    except RemoteProtocolError:
        return
    again = decode_msgpack(encode_msgpack(parsed.frame(), max_frame_bytes=targets.HUGE),
                           max_frame_bytes=targets.HUGE)
    reparsed = parse_body(again)
    assert type(reparsed) is type(parsed)
    # compared as encodings: a NaN the rules let through is still the same NaN
    assert encode_msgpack(reparsed.frame(), max_frame_bytes=targets.HUGE) == encode_msgpack(
        parsed.frame(), max_frame_bytes=targets.HUGE)


@fuzz_settings(200)
@given(value=msgpack_values | json_values
       | st.dictionaries(json_text, json_values, max_size=6))
def test_plain_refuses_with_bad_frame_only_and_what_it_returns_is_json_and_msgpack(
        value: Any) -> None:
    targets.check_plain(value)


@fuzz_settings(300)
@given(role=st.sampled_from(list(Role)), events=st.lists(st.sampled_from(list(Event)),
                                                         max_size=12))
def test_the_handshake_ends_any_event_sequence_in_a_table_state_or_a_4400(
        role: Role, events: list[Event]) -> None:
    state = INITIAL[role]
    states = {s for key, (dst, _) in TRANSITIONS[role].items() for s in (key[0], dst)}
    for event in events:
        try:
            state, actions = step(role, state, event)
        except RemoteProtocolError as exc:
            assert exc.close_code == 4400
            assert (state, event) not in TRANSITIONS[role]
            return
        assert state in states and actions
    if state is State.CLOSED:
        for event in Event:
            assert (State.CLOSED, event) not in TRANSITIONS[role]


STORABLE = Limits(max_depth=1 << 20, max_entries=1 << 40, max_bytes=1 << 40,
                  max_key_len=1 << 40, allow_bytes=True)


@settings(fuzz_settings(150), phases=[Phase.generate])
@given(data=st.data())
def test_a_body_accepted_from_a_peer_holds_only_values_json_and_the_store_can_hold(
        data: st.DataObject) -> None:
    """A poison value is refused at parse time, not found later by the store or a read:
    what a typed body accepts is plain (finite floats, int64, valid text; bytes only in
    byte fields, which the JSON codec turns into base64url)."""
    t = data.draw(st.sampled_from(TYPES), label="t")
    body = data.draw(mutated_body(SAMPLES.get(t, {}), FIELDS, poison_values), label="body")
    try:
        parsed = parse_body(Frame(t=t, b=body))
    except RemoteProtocolError:
        return
    plain(_uint64_as_int64(parsed.to_body()), f"{t} body", STORABLE)


def _uint64_as_int64(value: Any) -> Any:
    """Unsigned 64-bit fields (a hello's epoch) are the protocol's to bound, not this
    oracle's: fold them into int64 so only what JSON or msgpack cannot hold fails."""
    if isinstance(value, int) and not isinstance(value, bool) and INT64_MAX < value < 1 << 64:
        return value - (1 << 64)
    if isinstance(value, dict):
        return {k: _uint64_as_int64(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_uint64_as_int64(v) for v in value]
    return value
