"""MessagePack and JSON codecs with hard limits (PROTOCOL.md §1-2).

Invariants:
* nothing larger than ``max_frame_bytes`` is decoded (:class:`FrameTooLarge`, close 1009);
* MessagePack decoding is bounded (string/bin/array/map lengths) and ext types are refused;
* every decode failure is a :class:`BadFrame` (close 4400), never another exception type;
* every text a decoded frame holds is valid Unicode in both codecs (msgpack refuses invalid
  UTF-8; JSON's ``\\ud800`` escapes could produce lone surrogates, which are refused), so
  whatever is echoed back or stored from it can be encoded again.
"""

from __future__ import annotations

import base64
import functools
import json
import re
from typing import Any

import msgpack

from .errors import BadFrame, FrameTooLarge, LocalProtocolError
from .frames import Frame

MAX_FRAME_BYTES = 1 << 20
MAX_CONTAINER_LEN = 65_536  # entries in one array or map
MSGPACK_SUBPROTOCOL = "tether.v1.msgpack"
JSON_SUBPROTOCOL = "tether.v1.json"


def _refuse_ext(code: int, data: bytes) -> Any:
    raise BadFrame(f"msgpack ext type {code} is not allowed")


def encode_msgpack(frame: Frame, *, max_frame_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """Encode one frame. Raises LocalProtocolError if it would exceed the frame limit."""
    try:
        data: bytes = msgpack.packb(frame.to_wire(), use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"frame {frame.t!r} cannot be encoded: {exc}") from exc
    if len(data) > max_frame_bytes:
        raise LocalProtocolError(
            f"frame {frame.t!r} is {len(data)} bytes, over the {max_frame_bytes}-byte limit")
    return data


BATCH_TYPE = "edge.batch"
MAX_BATCH_FRAMES = 1024  # frames in one edge.batch, the most this implementation accepts
# {"t": "edge.batch", "b": {"frames": [...]}} up to the array header, which depends on n
_BATCH_PREFIX: bytes = msgpack.packb({"t": BATCH_TYPE, "b": {"frames": []}})[:-1]
BATCH_OVERHEAD = len(_BATCH_PREFIX) + 3  # bytes a batch adds to the frames it carries


def encode_batch(payloads: list[bytes]) -> bytes:
    """One ``edge.batch`` message carrying frames already encoded by :func:`encode_msgpack`,
    in order. The frames are spliced in as bytes (a msgpack array is its header followed by
    its elements), so none is decoded or encoded again. The caller keeps the result within
    the peer's ``max_frame``."""
    n = len(payloads)
    if not 1 <= n <= MAX_BATCH_FRAMES:
        raise LocalProtocolError(f"a batch carries 1 to {MAX_BATCH_FRAMES} frames, not {n}")
    header = bytes([0x90 | n]) if n < 16 else b"\xdc" + n.to_bytes(2, "big")
    return _BATCH_PREFIX + header + b"".join(payloads)


_EMPTY_MAP = b"\x80"
_KEY_B: bytes = msgpack.packb("b")


@functools.lru_cache(maxsize=64)
def _sequenced_head(t: str, s: str) -> bytes:
    if not isinstance(t, str) or not t or len(t) > 64:
        raise LocalProtocolError("frame type 't' must be a non-empty string of at most 64 chars")
    if not isinstance(s, str) or not s:
        raise LocalProtocolError("a sequenced frame needs a stream name")
    head: bytes = msgpack.packb("t") + msgpack.packb(t) + msgpack.packb("s") \
        + msgpack.packb(s) + msgpack.packb("q")
    return head


def encode_sequenced(t: str, s: str, q: int, body: bytes) -> bytes:
    """The bytes :func:`encode_msgpack` gives for ``Frame(t=t, s=s, q=q, b=...)`` whose body
    MessagePack-encodes (``use_bin_type=True``) to ``body``: the envelope is spliced around
    the body's bytes, which are not decoded or encoded again (a durable outbox keeps its
    bodies encoded). The envelope's rules are checked as :class:`Frame` checks them; the
    body is trusted to be one encoded map, and the size is the caller's to bound."""
    if isinstance(q, bool) or not isinstance(q, int) or q < 1:
        raise LocalProtocolError("sequence 'q' must be an integer >= 1")
    head: bytes = _sequenced_head(t, s) + msgpack.packb(q)
    if body == _EMPTY_MAP:  # to_wire leaves an empty body out
        return b"\x83" + head
    return b"\x84" + head + _KEY_B + body


def unbatch(frame: Frame, *, max_frames: int = MAX_BATCH_FRAMES) -> list[Frame]:
    """The frames an ``edge.batch`` carries, each validated as if it had arrived alone.
    Raises :class:`BadFrame` for a batch that is empty, too long, nested or malformed."""
    frames = frame.b.get("frames")
    if not isinstance(frames, list) or not 1 <= len(frames) <= max_frames:
        raise BadFrame(f"edge.batch needs 'frames': a list of 1 to {max_frames} frames")
    out = [Frame.from_wire(obj) for obj in frames]
    if any(f.t == BATCH_TYPE for f in out):
        raise BadFrame("edge.batch cannot carry another edge.batch")
    return out


def decode_msgpack(data: bytes, *, max_frame_bytes: int = MAX_FRAME_BYTES) -> Frame:
    """Decode one frame from one WebSocket message."""
    if len(data) > max_frame_bytes:
        raise FrameTooLarge(f"frame of {len(data)} bytes exceeds the {max_frame_bytes}-byte limit")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            ext_hook=_refuse_ext,
            max_str_len=max_frame_bytes,
            max_bin_len=max_frame_bytes,
            max_array_len=MAX_CONTAINER_LEN,
            max_map_len=MAX_CONTAINER_LEN,
            max_ext_len=0,
        )
    except BadFrame:
        raise
    except Exception as exc:  # msgpack raises many types (ExtraData, ValueError, ...)
        raise BadFrame(f"frame is not valid msgpack: {type(exc).__name__}") from exc
    return Frame.from_wire(obj)


def _json_default(value: object) -> Any:
    if isinstance(value, bytes):
        return base64.urlsafe_b64encode(value).rstrip(b"=").decode("ascii")
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def to_json_value(obj: Any) -> Any:
    """A JSON-ready copy of ``obj`` with bytes as base64url text (PROTOCOL.md §2)."""
    return json.loads(json.dumps(obj, default=_json_default))


def encode_json(frame: Frame, *, max_frame_bytes: int = MAX_FRAME_BYTES) -> str:
    """Encode one frame as JSON text; bytes become base64url without padding, except
    ``log.chunk`` data, which JSON carries as UTF-8 text (PROTOCOL.md §6). Non-finite
    floats and text that is not valid Unicode are refused (LocalProtocolError)."""
    wire = frame.to_wire()
    body = wire.get("b")
    if frame.t == "log.chunk" and body and isinstance(body.get("data"), bytes):
        wire["b"] = {**body, "data": body["data"].decode("utf-8", errors="replace")}
    try:
        text = json.dumps(wire, default=_json_default, separators=(",", ":"),
                          ensure_ascii=False, allow_nan=False)
        size = len(text.encode())
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError
        raise LocalProtocolError(f"frame {frame.t!r} cannot be encoded: {exc}") from exc
    if size > max_frame_bytes:
        raise LocalProtocolError(f"frame {frame.t!r} is over the {max_frame_bytes}-byte limit")
    return text


# A \\uD800-\\uDFFF escape: the only way JSON text that is valid UTF-8 yields a lone surrogate.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _check_unicode(obj: Any) -> None:
    """Raise BadFrame if any text (value or key) in ``obj`` is not valid Unicode. Iterative:
    ``obj`` may be nested as deep as the JSON decoder allows."""
    stack = [obj]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise BadFrame("frame holds text that is not valid Unicode (a lone "
                               "surrogate)") from None
        elif isinstance(value, dict):
            stack.extend(value)
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


def decode_json(text: str | bytes, *, max_frame_bytes: int = MAX_FRAME_BYTES) -> Frame:
    """Decode one frame from one JSON WebSocket message (UTF-8, PROTOCOL.md §2). Bytes that
    are not UTF-8 and text that is not valid Unicode (a lone surrogate, raw or escaped) are
    a BadFrame, as they are in msgpack."""
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
    if size > max_frame_bytes:
        raise FrameTooLarge(f"frame of {size} bytes exceeds the {max_frame_bytes}-byte limit")
    try:
        # json.loads would guess UTF-16 or UTF-32 for some bytes: only UTF-8 is JSON here
        text = text.decode("utf-8") if isinstance(text, bytes) else text
        text.encode("utf-8")
    except UnicodeError:
        raise BadFrame("frame is not valid UTF-8 text") from None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise BadFrame("frame is not valid JSON") from exc
    if _SURROGATE_ESCAPE.search(text):  # only then can a decoded text hold a lone surrogate
        _check_unicode(obj)
    return Frame.from_wire(obj)
