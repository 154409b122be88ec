"""Strict JSON for HTTP bodies (issue 11, item 4), sans I/O: whatever the bytes, the parser
returns a plain value or raises InvalidRequest, never anything else."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.common.bodies import MAX_JSON_DEPTH, loads_strict
from tether.protocol.errors import InvalidRequest
from tether.protocol.values import INT64_MAX, INT64_MIN, plain

_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(1 << 70),
                                                           max_value=1 << 70),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=30)


def _fits(value: Any, depth: int = 0) -> bool:
    """What the strict parser must accept: finite floats, int64, bounded depth."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return True
    if isinstance(value, int):
        return INT64_MIN <= value <= INT64_MAX
    if isinstance(value, float):
        return math.isfinite(value)
    if depth >= MAX_JSON_DEPTH:
        return False
    items = value.values() if isinstance(value, dict) else value
    return all(_fits(v, depth + 1) for v in items)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_are_a_plain_value_or_invalid_request(raw: bytes) -> None:
    try:
        value = loads_strict(raw)
    except InvalidRequest:
        return
    assert plain(value, "v") == value


@settings(max_examples=300, deadline=None)
@given(_values)
def test_a_value_is_accepted_exactly_when_json_and_the_store_can_hold_it(value: Any) -> None:
    raw = json.dumps(value).encode()  # Python writes NaN, Infinity and any integer
    if _fits(value):
        assert loads_strict(raw) == json.loads(raw)
    else:
        with pytest.raises(InvalidRequest):
            loads_strict(raw)


@pytest.mark.parametrize("raw", [b"NaN", b"-Infinity", b"[1e999]", b'{"a": -1e400}',
                                 b"9223372036854775808", b"-9223372036854775809",
                                 b"1" * 4400, b"[" * 100_000 + b"]" * 100_000,
                                 b'"\\udc80"', b'{"\\ud800": 1}', b"\xc3\x28", b""])
def test_hostile_json_is_invalid_request(raw: bytes) -> None:
    with pytest.raises(InvalidRequest):
        loads_strict(raw)


def test_nesting_up_to_the_limit_is_fine_and_one_more_is_not() -> None:
    assert loads_strict(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH) is not None
    with pytest.raises(InvalidRequest, match="nested over"):
        loads_strict(b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1))
