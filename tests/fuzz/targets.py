"""The checks the fuzzers run: one function per pure target, shared by the atheris harnesses
(``fuzz_*.py``, run as subprocesses) and the pytest regression tests (which replay a crash
input through the same function).

Contract of every ``check_*``: it returns None for any input the target handles as the
contract says, and raises anything else (an AssertionError for a broken property, the
target's own exception for a crash). "Handled" means the target either accepted the input
or refused it with a :class:`RemoteProtocolError` (BadFrame, FrameTooLarge: close 4400 or
1009), the errors the protocol documents for what a peer sends.

Generic over :data:`BODY_TYPES`: a body type added later is fuzzed without a change here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import msgpack

from tether.protocol.codec import (
    BATCH_TYPE,
    MAX_FRAME_BYTES,
    decode_json,
    decode_msgpack,
    encode_msgpack,
    unbatch,
)
from tether.protocol.errors import RemoteProtocolError
from tether.protocol.frames import BODY_TYPES, Frame, parse_body
from tether.protocol.local import LocalDecoder
from tether.protocol.values import Limits, plain, plain_size

# A harness's first input byte picks the target (the rest is the target's input): one
# corpus and one coverage map explore every decoder.
MODES = ("msgpack", "json_bytes", "json_text", "local")
BODY_CODECS = ("msgpack", "json")
HUGE = 1 << 40  # a frame limit that never binds (re-encoding checks)


def body_types() -> list[str]:
    """Every typed body, in a stable order (the fuzzers' input byte indexes it)."""
    return sorted(BODY_TYPES)


# --- decoders ------------------------------------------------------------------------------

def check_codec(data: bytes) -> None:
    """One decoder, chosen by the first byte, over the rest; then what a receiver does next
    with a decoded frame (:func:`check_frame`)."""
    if not data:
        return
    mode, rest = MODES[data[0] % len(MODES)], data[1:]
    if mode == "msgpack":
        frame = _refused_or(decode_msgpack, rest)
        if frame is not None:
            check_frame(frame)
            check_msgpack_round_trip(frame)
    elif mode == "json_bytes":
        frame = _refused_or(decode_json, rest)
        if frame is not None:
            check_frame(frame)
    elif mode == "json_text":
        # a WebSocket text message is any str the server's UTF-8 decoder produced
        frame = _refused_or(decode_json, rest.decode("utf-8", "replace"))
        if frame is not None:
            check_frame(frame)
    else:
        check_local(rest)


def _refused_or(decode: Any, data: bytes | str) -> Frame | None:
    try:
        frame = decode(data)
    except RemoteProtocolError:
        return None
    assert isinstance(frame, Frame), frame
    return frame


def check_frame(frame: Frame) -> None:
    """A decoded frame: its batch unpacks or is refused, its body parses as its own type
    and as every other type or is refused, and :func:`check_plain` holds for its body."""
    frames = [frame]
    if frame.t == BATCH_TYPE:
        try:
            frames += unbatch(frame)
        except RemoteProtocolError:
            pass
    for each in frames:
        check_body_map(each.t, each.b)
        check_plain(each.b)


def check_msgpack_round_trip(frame: Frame) -> None:
    """A frame msgpack decoded re-encodes, and decodes again to the same bytes (what a
    relay that re-encodes does; NaN is compared by its encoding, not by ``==``)."""
    once = encode_msgpack(frame, max_frame_bytes=HUGE)
    again = encode_msgpack(decode_msgpack(once, max_frame_bytes=HUGE), max_frame_bytes=HUGE)
    assert again == once, (once, again)


def check_local(data: bytes) -> None:
    """The local link's framing: fed in pieces (split where the first bytes say) or whole,
    the same frames come out, or both refuse. After a refusal the link is closed, so
    nothing more is fed."""
    cuts = sorted({c % (len(data) + 1) for c in data[:3]})
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    whole = _local_frames([data])
    split = _local_frames(pieces)
    if whole is None or split is None:
        assert whole is None or split is None
        return
    # a split feed may stop earlier only by being refused; here neither was
    assert [p for _, p in whole] == [p for _, p in split]
    for frame, payload in split:
        assert decode_msgpack(payload, max_frame_bytes=HUGE) == frame or _has_nan(frame.b)
        check_frame(frame)


def _local_frames(pieces: list[bytes]) -> list[tuple[Frame, bytes]] | None:
    decoder = LocalDecoder(max_frame_bytes=MAX_FRAME_BYTES)
    out: list[tuple[Frame, bytes]] = []
    try:
        for piece in pieces:
            out += decoder.feed_raw(piece)
    except RemoteProtocolError:
        return None
    assert decoder.buffered <= sum(map(len, pieces))
    return out


def _has_nan(value: object) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, dict):
        return any(_has_nan(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_nan(v) for v in value)
    return False


# --- typed bodies --------------------------------------------------------------------------

def check_body_map(own_type: str, body: Any) -> None:
    """Parse ``body`` as its own type and as every body type: each parse accepts or raises
    a RemoteProtocolError; an accepted body converts back with ``to_body()``."""
    for t in {own_type, *BODY_TYPES}:
        try:
            parsed = parse_body(Frame(t=t, b=body)) if isinstance(t, str) and t else None
        except RemoteProtocolError:
            continue
        if parsed is not None:
            parsed.to_body()


def check_bodies(data: bytes) -> None:
    """First byte: which body type and which codec; the rest: the body map, decoded the way
    that codec's peer would send it (msgpack: bin, NaN and uint64; JSON: big integers,
    NaN and lone surrogates)."""
    if not data:
        return
    types = body_types()
    pick = data[0]
    t = types[(pick >> 1) % len(types)]
    codec = BODY_CODECS[pick & 1]
    obj: Any
    if codec == "msgpack":
        try:
            obj = msgpack.unpackb(data[1:], raw=False, strict_map_key=False,
                                  max_array_len=4096, max_map_len=4096)
        except (ValueError, RecursionError, TypeError, msgpack.UnpackException):
            return  # not a body: the codec refuses it before any body is parsed
    else:
        # the body as the real JSON decoder hands it over (it refuses lone surrogates)
        try:
            obj = decode_json(b'{"t":"x","b":' + data[1:] + b"}").b
        except RemoteProtocolError:
            return
    if not isinstance(obj, dict):
        return
    check_body_map(t, obj)
    check_plain(obj)


# --- values --------------------------------------------------------------------------------

LIMITS = (Limits(), Limits(max_depth=3, max_entries=8, max_bytes=64, max_key_len=4),
          Limits(allow_bytes=True))


def check_plain(value: object) -> None:
    """:func:`plain` raises only BadFrame; what it returns is JSON without NaN, survives a
    msgpack round trip unchanged, and keeps to the limits it was given."""
    for limits in LIMITS:
        try:
            out = plain(value, "fuzz", limits)
        except RemoteProtocolError:
            continue
        packed = msgpack.packb(out, use_bin_type=True)
        assert msgpack.unpackb(packed, raw=False, strict_map_key=False) == out
        size = plain_size(out)
        if limits.allow_bytes:
            continue
        text = json.dumps(out, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
        actual = len(text.encode("utf-8"))
        assert actual <= limits.max_bytes, (actual, limits.max_bytes)
        assert actual <= size, (actual, size)
        assert _depth(out) <= limits.max_depth


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


def walk(value: object) -> Iterator[object]:
    """Every value inside ``value``, itself included."""
    yield value
    if isinstance(value, dict):
        for v in value.values():
            yield from walk(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from walk(v)
