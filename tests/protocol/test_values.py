"""Value rules (protocol/values.py): hostile values are refused with a clear BadFrame."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.protocol.errors import BadFrame
from tether.protocol.values import (
    INT64_MAX,
    INT64_MIN,
    Limits,
    int_in,
    number_in,
    plain,
    plain_map,
    plain_size,
    text,
    text_map,
)

HOSTILE = [
    float("nan"), float("inf"), -float("inf"), 1 << 63, -(1 << 63) - 1, 10**30,
    b"\x00\xff", "\ud800", {1: "x"}, {"k": {"k": b"x"}}, [float("nan")], object(),
]


# ids stable across processes (pytest-xdist compares what each worker collected): an
# object()'s repr holds its address
@pytest.mark.parametrize("value", HOSTILE,
                         ids=lambda v: "object()" if type(v) is object else repr(v))
def test_a_value_json_or_the_store_cannot_hold_is_refused(value: object) -> None:
    with pytest.raises(BadFrame):
        plain({"v": value}, "data")


def test_the_edges_of_the_signed_64_bit_range_are_plain() -> None:
    assert plain([INT64_MIN, INT64_MAX], "x") == [INT64_MIN, INT64_MAX]


def test_depth_entries_and_bytes_are_bounded() -> None:
    deep: object = 1
    for _ in range(40):
        deep = [deep]
    with pytest.raises(BadFrame, match="nested"):
        plain(deep, "d")
    with pytest.raises(BadFrame, match="entries"):
        plain(list(range(5000)), "d")
    with pytest.raises(BadFrame, match="bytes"):
        plain({"s": "x" * 70_000}, "d")
    assert plain({"s": "x" * 1000}, "d", Limits(max_bytes=2000)) == {"s": "x" * 1000}


def test_bytes_only_where_allowed() -> None:
    assert plain({"b": b"\x01"}, "d", Limits(allow_bytes=True)) == {"b": b"\x01"}


def test_plain_map_needs_a_map() -> None:
    with pytest.raises(BadFrame, match="map"):
        plain_map([1], "data")


def test_scalar_helpers_name_the_field_and_the_range() -> None:
    assert int_in(5, "n", 0, 10) == 5
    for bad in (True, 11, -1, 1.5, "5"):
        with pytest.raises(BadFrame, match="'n'"):
            int_in(bad, "n", 0, 10)
    assert number_in(2, "x", 0, 3) == 2.0
    for bad in (math.nan, math.inf, False, 4, "1"):
        with pytest.raises(BadFrame):
            number_in(bad, "x", 0, 3)
    assert text("ab", "t", max_len=2) == "ab"
    for bad in ("abc", b"ab", "\udfff", 1):
        with pytest.raises(BadFrame):
            text(bad, "t", max_len=2)
    assert text_map({"a": "b"}, "labels") == {"a": "b"}
    for bad in ({"a": 1}, {"a": "\ud800"}, {f"k{i}": "v" for i in range(65)}, ["a"]):
        with pytest.raises(BadFrame):
            text_map(bad, "labels")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(INT64_MIN, INT64_MAX)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)


@given(json_values)
def test_every_plain_value_encodes_as_strict_json_within_its_counted_size(value: object
                                                                          ) -> None:
    checked = plain(value, "v", Limits(max_bytes=1 << 20))
    encoded = json.dumps(checked, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    assert json.loads(encoded) == checked
    assert len(encoded.encode()) <= plain_size(checked)


@given(st.recursive(st.none() | st.integers() | st.floats() | st.binary() | st.text(),
                    lambda c: st.lists(c, max_size=4)
                    | st.dictionaries(st.integers() | st.text(), c, max_size=4),
                    max_leaves=20))
def test_plain_either_refuses_with_badframe_or_returns_strict_json(value: object) -> None:
    try:
        checked = plain(value, "v")
    except BadFrame:
        return
    json.dumps(checked, allow_nan=False, ensure_ascii=False)
