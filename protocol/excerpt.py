"""A bounded, printable excerpt of whatever a peer sent, for dead letters and logs.

Pure. Rule: :func:`excerpt` never raises and never does work proportional to more than
``max_chars`` of output (plus the containers it walks to produce them): it stops walking
once the excerpt is full, renders at most ``MAX_DEPTH`` levels, and shows values JSON cannot
hold (NaN, Infinity, bytes, huge integers, lone surrogates) in a readable form instead of
refusing them. The result is valid Unicode text that JSON can always hold.
"""

from __future__ import annotations

from collections.abc import Mapping

MAX_DEPTH = 8
MAX_EXCERPT_CHARS = 512
_ELLIPSIS = "…"


class _Full(Exception):
    pass


class _Out:
    __slots__ = ("left", "parts")

    def __init__(self, max_chars: int) -> None:
        self.parts: list[str] = []
        self.left = max_chars

    def put(self, s: str) -> None:
        if len(s) > self.left:
            self.parts.append(s[: self.left])
            self.left = 0
            raise _Full
        self.parts.append(s)
        self.left -= len(s)


def _scalar(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        digits = value.bit_length()
        if digits > 256:  # repr of a huge int is slow and long: say how big it is
            return f"<int of {digits} bits>"
        return str(value)
    if isinstance(value, float):
        return repr(value)  # nan, inf, -inf shown as such
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value[:32])
        more = "…" if len(value) > 32 else ""
        return f"<bin {len(value)} bytes: {raw.hex()}{more}>"
    if isinstance(value, str):
        return '"' + value[:MAX_EXCERPT_CHARS].encode("utf-8", "backslashreplace").decode(
            "utf-8") + '"'
    return f"<{type(value).__name__}>"


def _walk(value: object, out: _Out, depth: int) -> None:
    if isinstance(value, Mapping):
        if depth >= MAX_DEPTH:
            out.put("{…}")
            return
        out.put("{")
        for i, (key, item) in enumerate(value.items()):
            if i:
                out.put(", ")
            out.put(_scalar(key) if isinstance(key, str) else f"<key {_scalar(key)}>")
            out.put(": ")
            _walk(item, out, depth + 1)
        out.put("}")
    elif isinstance(value, list | tuple):
        if depth >= MAX_DEPTH:
            out.put("[…]")
            return
        out.put("[")
        for i, item in enumerate(value):
            if i:
                out.put(", ")
            _walk(item, out, depth + 1)
        out.put("]")
    else:
        out.put(_scalar(value))


def excerpt(value: object, max_chars: int = MAX_EXCERPT_CHARS) -> str:
    """At most ``max_chars`` characters (plus a trailing ellipsis when cut) showing
    ``value``."""
    out = _Out(max_chars)
    try:
        _walk(value, out, 0)
    except _Full:
        return "".join(out.parts) + _ELLIPSIS
    return "".join(out.parts)
