"""The codecs (PROTOCOL.md §1-2): round trips, hard limits, and a decoder that only ever
raises BadFrame (close 4400) or FrameTooLarge (close 1009), whatever bytes it is fed."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tether.protocol.codec import (
    BATCH_TYPE,
    MAX_BATCH_FRAMES,
    MAX_CONTAINER_LEN,
    MAX_FRAME_BYTES,
    decode_json,
    decode_msgpack,
    encode_batch,
    encode_json,
    encode_msgpack,
    encode_sequenced,
    to_json_value,
    unbatch,
)
from tether.protocol.errors import (
    BadFrame,
    FrameTooLarge,
    LocalProtocolError,
    RemoteProtocolError,
)
from tether.protocol.frames import Frame, as_bytes

PROPERTY = settings(max_examples=150, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=400, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])

# --- strategies ----------------------------------------------------------------------------

# Scalars both codecs carry without loss (msgpack ints are 64-bit; NaN never equals itself).
scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
           | st.binary(max_size=40))
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)
bodies = st.dictionaries(st.text(max_size=12), values, max_size=5)
short_ids = st.none() | st.text(max_size=40)


@st.composite
def frames(draw: st.DrawFn, body: st.SearchStrategy[dict[str, Any]] = bodies) -> Frame:
    stream = draw(st.none() | st.tuples(st.sampled_from(["cmd", "evt"]) | st.text(max_size=10),
                                        st.integers(min_value=1, max_value=2**63 - 1)))
    return Frame(t=draw(st.text(min_size=1, max_size=64)), b=draw(body), id=draw(short_ids),
                 re=draw(short_ids), k=draw(short_ids),
                 s=None if stream is None else stream[0],
                 q=None if stream is None else stream[1])


def b64url(raw: bytes) -> str:
    """PROTOCOL.md §2, written out independently of the codec: base64url, no padding."""
    return base64.b64encode(raw).decode("ascii").replace("+", "-").replace("/", "_").rstrip("=")


def as_json_wire(value: Any) -> Any:
    """What a JSON peer must see for ``value``: bytes become base64url text."""
    if isinstance(value, bytes):
        return b64url(value)
    if isinstance(value, dict):
        return {k: as_json_wire(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_json_wire(v) for v in value]
    return value


def expected_wire(frame: Frame) -> dict[str, Any]:
    """The envelope of PROTOCOL.md §2 built by hand: absent keys omitted, empty body omitted."""
    out: dict[str, Any] = {"t": frame.t}
    for key in ("id", "re", "s", "q", "k"):
        if getattr(frame, key) is not None:
            out[key] = getattr(frame, key)
    if frame.b:
        out["b"] = dict(frame.b)
    return out


def decode_both_ways(frame_map: dict[str, Any]) -> list[Any]:
    """Feed one map to both decoders; return what each produced (Frame or the exception)."""
    outcomes: list[Any] = []
    for decode, encode in ((decode_msgpack, lambda m: msgpack.packb(m, use_bin_type=True)),
                           (decode_json, json.dumps)):
        try:
            outcomes.append(decode(encode(frame_map)))
        except Exception as exc:  # the tests below assert on the type
            outcomes.append(exc)
    return outcomes


# --- round trips ---------------------------------------------------------------------------


@PROPERTY
@given(frames())
def test_any_frame_survives_a_msgpack_round_trip_unchanged(frame: Frame) -> None:
    assert decode_msgpack(encode_msgpack(frame)) == frame


@PROPERTY
@given(frames())
def test_msgpack_puts_the_envelope_on_the_wire_with_short_keys_and_bytes_as_bin(
        frame: Frame) -> None:
    raw = msgpack.unpackb(encode_msgpack(frame), raw=False)
    assert raw == expected_wire(frame)


@PROPERTY
@given(frames())
def test_any_frame_survives_a_json_round_trip_with_bytes_as_unpadded_base64url(
        frame: Frame) -> None:
    text = encode_json(frame)
    assert json.loads(text) == as_json_wire(expected_wire(frame))
    decoded = decode_json(text)
    assert decoded.to_wire() == as_json_wire(expected_wire(frame))
    # the same message as UTF-8 bytes decodes to the same frame
    assert decode_json(text.encode()) == decoded


@PROPERTY
@given(st.binary(max_size=100))
@example(b"")
@example(b"\xfb\xff")  # '+' and '/' in standard base64
@example(b"\x00")  # would carry '==' padding
def test_bytes_in_json_are_base64url_without_padding_and_come_back_with_as_bytes(
        raw: bytes) -> None:
    text = encode_json(Frame(t="x", b={"blob": raw}))
    carried = json.loads(text)["b"]["blob"]
    assert carried == b64url(raw)
    assert not set(carried) & set("=+/")
    assert as_bytes(decode_json(text).b["blob"], "blob") == raw


def test_to_json_value_turns_nested_bytes_into_base64url_text() -> None:
    assert to_json_value({"a": [b"\xff\xfe", {"b": b"hi"}], "c": (1, 2)}) == {
        "a": ["__4", {"b": "aGk"}], "c": [1, 2]}


def test_json_output_is_compact_and_keeps_non_ascii_text_as_is() -> None:
    text = encode_json(Frame(t="x", b={"name": "caf\u00e9"}))
    assert text == '{"t":"x","b":{"name":"caf\u00e9"}}'


def test_an_empty_body_is_omitted_on_the_wire_and_reads_back_as_an_empty_map() -> None:
    frame = Frame(t="edge.goodbye")
    assert msgpack.unpackb(encode_msgpack(frame)) == {"t": "edge.goodbye"}
    assert encode_json(frame) == '{"t":"edge.goodbye"}'
    assert decode_json('{"t":"edge.goodbye","b":null}').b == {}


def test_unknown_envelope_keys_are_ignored() -> None:
    frame = decode_json('{"t":"x","zz":[1,2],"v":2,"b":{"a":1}}')
    assert frame == Frame(t="x", b={"a": 1})
    assert decode_msgpack(msgpack.packb({"t": "x", "zz": b"?"})) == Frame(t="x")


# --- limits --------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [64, 1024])
def test_a_msgpack_message_one_byte_over_the_limit_raises_frame_too_large_with_close_1009(
        limit: int) -> None:
    body = next("p" * n for n in range(limit)
                if len(msgpack.packb({"t": "x", "b": {"p": "p" * n}})) == limit)
    exact = msgpack.packb({"t": "x", "b": {"p": body}})
    assert decode_msgpack(exact, max_frame_bytes=limit).b["p"] == body
    with pytest.raises(FrameTooLarge) as info:
        decode_msgpack(exact + b"\x00", max_frame_bytes=limit)
    assert info.value.close_code == 1009
    assert info.value.code == "frame_too_large"


@pytest.mark.parametrize("as_bytes_input", [False, True])
def test_a_json_message_one_byte_over_the_limit_raises_frame_too_large_with_close_1009(
        as_bytes_input: bool) -> None:
    limit = 100
    text = '{"t":"x","b":{"p":"' + "p" * (limit - 22) + '"}}'
    assert len(text) == limit
    assert decode_json(text.encode() if as_bytes_input else text, max_frame_bytes=limit)
    over = text[:-3] + 'p"}}'
    with pytest.raises(FrameTooLarge) as info:
        decode_json(over.encode() if as_bytes_input else over, max_frame_bytes=limit)
    assert info.value.close_code == 1009


def test_a_json_text_message_is_measured_in_utf8_bytes_not_characters() -> None:
    """PROTOCOL.md §1: the frame limit is in bytes. A text message of 60 two-byte characters
    is 120+ bytes on the wire and must be refused under a 100-byte limit.

    Fails today: codec.decode_json compares len(text) (characters) for str input."""
    text = '{"t":"x","b":{"p":"' + "\u00e9" * 60 + '"}}'
    assert len(text) < 100 < len(text.encode())
    with pytest.raises(FrameTooLarge):
        decode_json(text, max_frame_bytes=100)


def test_the_default_frame_limit_is_one_mebibyte() -> None:
    assert MAX_FRAME_BYTES == 1 << 20
    with pytest.raises(FrameTooLarge):
        decode_msgpack(b"\xc0" * (MAX_FRAME_BYTES + 1))


@pytest.mark.parametrize("encode", [encode_msgpack, encode_json])
def test_encoding_a_frame_over_the_limit_is_a_local_error_and_never_sent(encode: Any) -> None:
    frame = Frame(t="x", b={"p": "p" * 200})
    with pytest.raises(LocalProtocolError):
        encode(frame, max_frame_bytes=100)


def test_encoding_a_value_msgpack_cannot_carry_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        encode_msgpack(Frame(t="x", b={"n": 2**64}))
    with pytest.raises(LocalProtocolError):
        encode_msgpack(Frame(t="x", b={"o": object()}))
    with pytest.raises(LocalProtocolError):
        encode_json(Frame(t="x", b={"o": object()}))


def test_encoding_text_that_is_not_valid_unicode_is_a_local_error_in_json_too() -> None:
    """A lone surrogate (which decode_json refuses, but code on this side may build) cannot
    be sent as UTF-8. encode_msgpack says so with LocalProtocolError; encode_json must too.

    Fails today: codec.encode_json lets UnicodeEncodeError escape from text.encode()."""
    relayed = Frame(t="rtc.offer", b={"sdp": "\ud800"})
    with pytest.raises(LocalProtocolError):
        encode_msgpack(relayed)
    with pytest.raises(LocalProtocolError):
        encode_json(relayed)


def test_json_encoding_refuses_non_finite_floats_which_are_not_json() -> None:
    """RFC 8259 has no NaN or Infinity; a browser's JSON.parse rejects the whole message.

    Fails today: codec.encode_json calls json.dumps with the default allow_nan=True."""
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(LocalProtocolError):
            encode_json(Frame(t="x", b={"f": value}))


# --- bounded msgpack: ext types and huge declared lengths ----------------------------------


@pytest.mark.parametrize("payload", [
    msgpack.packb({"t": "x", "b": {"e": msgpack.ExtType(5, b"abc")}}),
    msgpack.packb({"t": "x", "b": {"e": msgpack.ExtType(5, b"")}}),
    b"\xc7\x00\xff",  # ext8 of length 0 with type -1
    msgpack.packb({"t": "x", "b": {"e": msgpack.Timestamp(1, 0)}}, datetime=False),
    msgpack.packb(msgpack.ExtType(1, b"\x00" * 16)),
], ids=["ext-3-bytes", "ext-empty", "ext-minus-one-empty", "timestamp", "top-level-ext"])
def test_msgpack_ext_types_are_refused_as_bad_frames(payload: bytes) -> None:
    with pytest.raises(BadFrame) as info:
        decode_msgpack(payload)
    assert info.value.close_code == 4400


@pytest.mark.parametrize("header", [
    b"\xdb\x7f\xff\xff\xff",  # str32 claiming 2 GiB
    b"\xc6\x7f\xff\xff\xff",  # bin32 claiming 2 GiB
    b"\xdd\x7f\xff\xff\xff",  # array32 claiming 2**31 items
    b"\xdf\x7f\xff\xff\xff",  # map32 claiming 2**31 pairs
    b"\xdd" + (MAX_CONTAINER_LEN + 1).to_bytes(4, "big") + b"\xc0" * (MAX_CONTAINER_LEN + 1),
], ids=["str32", "bin32", "array32", "map32", "array-over-container-limit"])
def test_msgpack_lengths_beyond_the_bounds_are_bad_frames_without_allocating(
        header: bytes) -> None:
    with pytest.raises(BadFrame):
        decode_msgpack(header)


def test_deeply_nested_input_is_a_bad_frame_not_a_recursion_error() -> None:
    with pytest.raises(BadFrame):
        decode_msgpack(b"\x91" * 100_000)
    with pytest.raises(BadFrame):
        decode_json("[" * 100_000)


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize("data", [
    b"", b"\xc1", b"\x82\xa1t", msgpack.packb({"t": "x"}) + b"\x00",
    msgpack.packb({1: "x"}), msgpack.packb({("t",): "x"}),
], ids=["empty", "reserved-byte", "truncated", "trailing-data", "int-key", "array-key"])
def test_garbage_msgpack_is_a_bad_frame_with_close_4400(data: bytes) -> None:
    with pytest.raises(BadFrame) as info:
        decode_msgpack(data)
    assert info.value.close_code == 4400


@pytest.mark.parametrize("text", [
    "", "{", "{'t': 'x'}", '{"t":"x"} {}', "\ufeff{}", b"\xff\xfe\x00", b"\xc3\x28",
    '{"t":"x","q":1' + "0" * 5000 + "}",
], ids=["empty", "open-brace", "single-quotes", "two-objects", "bom", "utf16-bom",
        "bad-utf8", "int-over-digit-limit"])
def test_garbage_json_is_a_bad_frame_with_close_4400(text: str | bytes) -> None:
    with pytest.raises(BadFrame) as info:
        decode_json(text)
    assert info.value.close_code == 4400


@pytest.mark.parametrize("top", [[], [1, 2], 1, "edge.hello", None, True, 1.5])
def test_a_top_level_value_that_is_not_a_map_is_a_bad_frame(top: Any) -> None:
    for outcome in decode_both_ways(top):
        assert isinstance(outcome, BadFrame)
        assert outcome.close_code == 4400


BAD_ENVELOPES = {
    "q-without-s": {"t": "x", "q": 1},
    "s-without-q": {"t": "x", "s": "cmd"},
    "q-zero": {"t": "x", "s": "cmd", "q": 0},
    "q-negative": {"t": "x", "s": "cmd", "q": -1},
    "q-true": {"t": "x", "s": "cmd", "q": True},
    "q-false": {"t": "x", "s": "cmd", "q": False},
    "q-float": {"t": "x", "s": "cmd", "q": 1.0},
    "q-text": {"t": "x", "s": "cmd", "q": "1"},
    "s-not-text": {"t": "x", "s": 1, "q": 1},
    "t-missing": {"b": {}},
    "t-empty": {"t": ""},
    "t-null": {"t": None},
    "t-int": {"t": 1},
    "t-list": {"t": ["edge.hello"]},
    "t-too-long": {"t": "x" * 65},
    "b-list": {"t": "x", "b": [1]},
    "b-text": {"t": "x", "b": "body"},
    "b-int": {"t": "x", "b": 0},
    "b-false": {"t": "x", "b": False},
    "id-int": {"t": "x", "id": 7},
    "re-too-long": {"t": "x", "re": "r" * 129},
    "k-list": {"t": "x", "k": ["key"]},
}


@pytest.mark.parametrize("envelope", BAD_ENVELOPES.values(), ids=BAD_ENVELOPES.keys())
def test_a_bad_envelope_is_a_bad_frame_with_close_4400_in_both_codecs(
        envelope: dict[str, Any]) -> None:
    for outcome in decode_both_ways(envelope):
        assert isinstance(outcome, BadFrame), outcome
        assert outcome.close_code == 4400
        assert outcome.code == "bad_frame"


def test_a_bad_envelope_built_in_code_is_refused_on_construction() -> None:
    with pytest.raises(BadFrame):
        Frame(t="x", s="cmd")
    with pytest.raises(BadFrame):
        Frame(t="x", b=[])  # type: ignore[arg-type]


def test_a_sequenced_frame_needs_q_at_least_one_and_keeps_it() -> None:
    frame = decode_json('{"t":"cmd.deliver","s":"cmd","q":1,"k":"c-1"}')
    assert (frame.s, frame.q, frame.k) == ("cmd", 1, "c-1")


# --- fuzzing: only BadFrame or FrameTooLarge ever escape -----------------------------------


def assert_decodes_or_refuses(decode: Any, data: Any, **kw: Any) -> None:
    try:
        frame = decode(data, **kw)
    except (BadFrame, FrameTooLarge) as exc:
        assert isinstance(exc, RemoteProtocolError)
        assert exc.close_code == (1009 if isinstance(exc, FrameTooLarge) else 4400)
        return
    # anything that decodes is a valid envelope
    assert isinstance(frame, Frame)
    assert isinstance(frame.t, str) and frame.t
    assert (frame.s is None) == (frame.q is None)
    assert frame.q is None or (type(frame.q) is int and frame.q >= 1)


@FUZZ
@given(st.binary(max_size=300), st.sampled_from([16, 128, MAX_FRAME_BYTES]))
def test_decode_msgpack_raises_nothing_but_bad_frame_or_frame_too_large_for_any_bytes(
        data: bytes, limit: int) -> None:
    assert_decodes_or_refuses(decode_msgpack, data, max_frame_bytes=limit)


@FUZZ
@given(st.text(max_size=300) | st.binary(max_size=300),
       st.sampled_from([16, 128, MAX_FRAME_BYTES]))
def test_decode_json_raises_nothing_but_bad_frame_or_frame_too_large_for_any_text(
        data: str | bytes, limit: int) -> None:
    assert_decodes_or_refuses(decode_json, data, max_frame_bytes=limit)


# Well-formed maps with envelope keys of any type, to get past the syntax layer.
any_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=70) | st.binary(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                max_size=3),
    max_leaves=6,
)
envelope_like = st.fixed_dictionaries(
    {}, optional={key: any_value | st.sampled_from(["cmd", "x", 1, 0])
                  for key in ("t", "id", "re", "s", "q", "k", "b")})


@FUZZ
@given(envelope_like | any_value)
def test_decoding_any_well_formed_map_yields_a_valid_frame_or_a_bad_frame(obj: Any) -> None:
    assert_decodes_or_refuses(decode_msgpack, msgpack.packb(obj, use_bin_type=True))
    assert_decodes_or_refuses(decode_json, json.dumps(obj, default=lambda b: b.hex()))


@FUZZ
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=199))
def test_any_corruption_of_a_valid_msgpack_frame_is_refused_or_still_a_valid_frame(
        noise: bytes, at: int) -> None:
    good = encode_msgpack(Frame(t="cmd.deliver", s="cmd", q=3, id="m-1",
                                b={"command_id": "c", "args": {"argv": ["ls"]}, "n": b"\x00"}))
    at = at % len(good)
    assert_decodes_or_refuses(decode_msgpack, good[:at] + noise + good[at + 1:])


# --- edge.batch (an addition, docs/protocol.md) -------------------------------------------


@PROPERTY
@given(st.lists(frames(), min_size=1, max_size=40))
def test_a_batch_carries_its_frames_unchanged_and_in_order(batch: list[Frame]) -> None:
    data = encode_batch([encode_msgpack(f) for f in batch])
    outer = decode_msgpack(data)
    assert outer.t == BATCH_TYPE
    assert unbatch(outer) == batch
    # spliced bytes are exactly what msgpack itself would have written
    assert data == msgpack.packb({"t": BATCH_TYPE, "b": {"frames": [
        f.to_wire() for f in batch]}}, use_bin_type=True)


def test_a_batch_is_one_to_max_frames_long_and_never_nested() -> None:
    one = encode_msgpack(Frame(t="edge.ack", b={"acks": {"cmd": 1}}))
    with pytest.raises(LocalProtocolError):
        encode_batch([])
    with pytest.raises(LocalProtocolError):
        encode_batch([one] * (MAX_BATCH_FRAMES + 1))
    assert len(unbatch(decode_msgpack(encode_batch([one] * MAX_BATCH_FRAMES)))) == \
        MAX_BATCH_FRAMES
    with pytest.raises(BadFrame, match="1 to 3 frames"):
        unbatch(decode_msgpack(encode_batch([one] * 4)), max_frames=3)
    with pytest.raises(BadFrame, match=r"another edge\.batch"):
        unbatch(decode_msgpack(encode_batch([one, encode_batch([one])])))
    for body in ({}, {"frames": []}, {"frames": {"t": "x"}}, {"frames": [1]}):
        with pytest.raises(BadFrame):
            unbatch(Frame(t=BATCH_TYPE, b=body))


# --- a sequenced frame spliced around a body encoded already -------------------------------


@PROPERTY
@given(t=st.text(min_size=1, max_size=64), s=st.text(min_size=1, max_size=10),
       q=st.integers(min_value=1, max_value=2**64 - 1), body=bodies)
def test_a_frame_spliced_around_its_encoded_body_is_byte_for_byte_the_encoded_frame(
        t: str, s: str, q: int, body: dict[str, Any]) -> None:
    packed = msgpack.packb(body, use_bin_type=True)
    assert encode_sequenced(t, s, q, packed) == encode_msgpack(Frame(t=t, s=s, q=q, b=body))


@pytest.mark.parametrize(("t", "s", "q"), [("", "evt", 1), ("x" * 65, "evt", 1),
                                           ("node.event", "evt", 0), ("node.event", "", 1),
                                           ("node.event", "evt", True)])
def test_a_spliced_frame_keeps_the_envelope_rules(t: str, s: str, q: int) -> None:
    with pytest.raises(LocalProtocolError):
        encode_sequenced(t, s, q, msgpack.packb({}))
