"""Value rules for what a peer sends: the one place that decides what a stored or pushed
value may be (DESIGN.md "Boundary").

Pure: no I/O. Every function raises :class:`BadFrame` (close 4400, HTTP 400 through
``InvalidRequest`` at REST) naming the field and the rule it broke.

Rule 1: a *plain* value (:func:`plain`) is what JSON and the store can hold without loss:
``None``, ``bool``, an integer in the signed 64-bit range, a finite float, text that is
valid Unicode (no lone surrogates), a list, or a map with text keys. Bytes are refused
unless the caller allows them (then they count at their length).
Rule 2: a plain value is bounded in depth, in entries (all containers together) and in
bytes (its compact JSON size, counted while it is walked, so a hostile value is refused
before it is copied whole).
Rule 3: :func:`plain` returns a fresh copy made of ``dict`` / ``list`` / scalars, so nothing
the decoder produced (tuples, subclasses) travels inward.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring as _json_text
from typing import Any

from .errors import BadFrame

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
UINT64_MAX = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds for one plain value. ``max_bytes`` is its compact JSON size."""

    max_depth: int = 16
    max_entries: int = 4096
    max_bytes: int = 64 * 1024
    max_key_len: int = 256
    allow_bytes: bool = False


DEFAULT_LIMITS = Limits()


class _Walk:
    __slots__ = ("budget", "entries", "limits", "name")

    def __init__(self, name: str, limits: Limits) -> None:
        self.name = name
        self.limits = limits
        self.budget = limits.max_bytes
        self.entries = 0

    def spend(self, n: int) -> None:
        self.budget -= n
        if self.budget < 0:
            raise BadFrame(f"field {self.name!r} is over {self.limits.max_bytes} bytes")

    def count(self, n: int) -> None:
        self.entries += n
        if self.entries > self.limits.max_entries:
            raise BadFrame(f"field {self.name!r} has over {self.limits.max_entries} entries")

    def text(self, value: str) -> str:
        self.spend(len(value) + 2)  # a lower bound, before the text is copied
        try:  # the exact size as compact JSON, escapes included
            size = len(_json_text(value).encode("utf-8"))
        except UnicodeEncodeError:
            raise BadFrame(f"field {self.name!r} holds text that is not valid Unicode"
                           ) from None
        self.spend(size - len(value) - 2)
        return value

    def walk(self, value: object, depth: int) -> Any:
        if value is None or isinstance(value, bool):
            self.spend(5)
            return value
        if isinstance(value, int):
            if not INT64_MIN <= value <= INT64_MAX:
                raise BadFrame(f"field {self.name!r} holds an integer outside the signed "
                               "64-bit range")
            self.spend(20)
            return int(value)
        if isinstance(value, float):
            if not math.isfinite(value):
                raise BadFrame(f"field {self.name!r} holds a number that is not finite")
            self.spend(24)
            return float(value)
        if isinstance(value, str):
            return str(self.text(value))
        if isinstance(value, bytes | bytearray | memoryview):
            if not self.limits.allow_bytes:
                raise BadFrame(f"field {self.name!r} holds bytes where text or numbers "
                               "belong")
            self.spend(len(value) * 4 // 3 + 2)
            return bytes(value)
        if depth >= self.limits.max_depth:
            raise BadFrame(f"field {self.name!r} is nested over {self.limits.max_depth} "
                           "levels")
        if isinstance(value, list | tuple):
            self.count(len(value))
            self.spend(2 + len(value))  # brackets and commas
            return [self.walk(item, depth + 1) for item in value]
        if isinstance(value, Mapping):
            self.count(len(value))
            self.spend(2 + 2 * len(value))  # braces, colons and commas
            out: dict[str, Any] = {}
            for key, item in value.items():
                if not isinstance(key, str):
                    raise BadFrame(f"field {self.name!r} has a map key that is not text")
                if len(key) > self.limits.max_key_len:
                    raise BadFrame(f"field {self.name!r} has a map key over "
                                   f"{self.limits.max_key_len} characters")
                out[self.text(key)] = self.walk(item, depth + 1)
            return out
        raise BadFrame(f"field {self.name!r} holds a {type(value).__name__}, which is not "
                       "plain data")


def plain(value: object, name: str, limits: Limits = DEFAULT_LIMITS) -> Any:
    """A checked copy of ``value`` (Rules 1-3). Raises BadFrame naming ``name``."""
    return _Walk(name, limits).walk(value, 0)


def plain_map(value: object, name: str, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """As :func:`plain`, for a value that must be a map."""
    if not isinstance(value, Mapping):
        raise BadFrame(f"field {name!r} must be a map")
    out: dict[str, Any] = plain(value, name, limits)
    return out


def plain_size(value: object) -> int:
    """An upper bound of the compact JSON size of a value already checked by :func:`plain`
    (for byte budgets); never raises for such a value."""
    walk = _Walk("", Limits(max_depth=1 << 30, max_entries=1 << 62, max_bytes=1 << 62,
                            max_key_len=1 << 62, allow_bytes=True))
    walk.walk(value, 0)
    return (1 << 62) - walk.budget


def int_in(value: object, name: str, lo: int = INT64_MIN, hi: int = INT64_MAX) -> int:
    """An integer (not a bool) with ``lo <= value <= hi``."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise BadFrame(f"field {name!r} must be an integer from {lo} to {hi}")
    return int(value)


def number_in(value: object, name: str, lo: float, hi: float) -> float:
    """A finite number (int or float, not a bool) with ``lo <= value <= hi``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadFrame(f"field {name!r} must be a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise BadFrame(f"field {name!r} must be a finite number")
    if not lo <= value <= hi:
        raise BadFrame(f"field {name!r} must be from {lo:g} to {hi:g}")
    return float(value)


def text(value: object, name: str, *, max_len: int, min_len: int = 0) -> str:
    """Text of ``min_len`` to ``max_len`` characters that is valid Unicode."""
    if not isinstance(value, str):
        raise BadFrame(f"field {name!r} must be text")
    if not min_len <= len(value) <= max_len:
        raise BadFrame(f"field {name!r} must be {min_len} to {max_len} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadFrame(f"field {name!r} is not valid Unicode") from None
    return str(value)


def text_map(value: object, name: str, *, max_entries: int = 64, max_key_len: int = 64,
             max_value_len: int = 256) -> dict[str, str]:
    """A map of text to text, bounded in entries and in each key's and value's length."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or len(value) > max_entries:
        raise BadFrame(f"field {name!r} must be a map of at most {max_entries} text keys to "
                       "text values")
    return {text(k, name, max_len=max_key_len): text(v, name, max_len=max_value_len)
            for k, v in value.items()}
