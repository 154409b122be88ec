"""protocol/excerpt.py: a dead letter's excerpt is bounded, never raises, and is text JSON
can hold, whatever the poison frame carried."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tether.protocol.excerpt import MAX_EXCERPT_CHARS, excerpt


def deep(n: int) -> Any:
    value: Any = 1
    for _ in range(n):
        value = [value]
    return value


def test_hostile_values_give_a_short_readable_excerpt() -> None:
    assert excerpt({"x": float("nan")}) == '{"x": nan}'
    assert excerpt({"x": b"\x00\x01"}) == '{"x": <bin 2 bytes: 0001>}'
    assert excerpt(10**5000) == "<int of 16610 bits>"
    assert excerpt("\ud800") == '"\\ud800"'
    assert excerpt(deep(200_000)).startswith("[[[[[[[[[…]")  # no RecursionError
    assert len(excerpt({"k": "x" * 10_000_000})) <= MAX_EXCERPT_CHARS + 1
    assert len(excerpt(list(range(1_000_000)))) <= MAX_EXCERPT_CHARS + 1


@settings(max_examples=300, deadline=None, database=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text()
                    | st.binary(),
                    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
                    max_leaves=50))
def test_any_value_gives_bounded_text_that_json_can_hold(value: Any) -> None:
    out = excerpt(value)
    assert len(out) <= MAX_EXCERPT_CHARS + 1
    json.dumps(out).encode("utf-8")
