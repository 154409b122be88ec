"""Hypothesis strategies for what a hostile peer can put on the wire, and the settings the
fuzz properties share.

Settings (decided for CI): ``derandomize=True`` and ``database=None``. Every run tries the
same examples, so a red CI run is reproduced by running the test again, nothing is written
under ``.hypothesis/``, and no run fails because of what an earlier one found. Exploration
over time is the atheris harnesses' job (coverage-guided, ``test_atheris.py``). For a
longer local run: ``TETHER_FUZZ_EXAMPLES=10`` multiplies every ``max_examples``, and
``TETHER_FUZZ_RANDOM=1`` draws fresh examples each run.
"""

from __future__ import annotations

import os
from typing import Any

import msgpack
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

_SCALE = float(os.environ.get("TETHER_FUZZ_EXAMPLES", "1"))
_RANDOM = os.environ.get("TETHER_FUZZ_RANDOM", "") not in ("", "0")


def fuzz_settings(max_examples: int) -> settings:
    """Deterministic, database-free settings sized for the CI time budget."""
    return settings(max_examples=max(1, int(max_examples * _SCALE)), deadline=None,
                    database=None, derandomize=not _RANDOM,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# --- scalars a peer can send ---------------------------------------------------------------

SURROGATES = st.sampled_from(["\ud800", "\udfff", "a\udc00b"])
# Text as a JSON peer can send it: any code point, lone surrogates included ("\ud800").
json_text = st.text(max_size=12) | SURROGATES
hostile_ints = (st.integers(min_value=-(2**63), max_value=2**64 - 1)
                | st.sampled_from([2**63, 2**64 - 1, -(2**63) - 1, 2**64, 10**30, -(10**30)])
                | st.integers(-3, 3))
hostile_floats = st.floats() | st.sampled_from([float("nan"), float("inf"), -float("inf")])

# msgpack carries: nil, bool, int64/uint64, float, valid UTF-8 text, bin.
msgpack_scalars = (st.none() | st.booleans()
                   | st.integers(min_value=-(2**63), max_value=2**64 - 1)
                   | hostile_floats | st.text(max_size=12) | st.binary(max_size=24))
# JSON carries: null, bool, integers of any size, NaN/Infinity (Python's json reads them),
# text with lone surrogates.
json_scalars = st.none() | st.booleans() | hostile_ints | hostile_floats | json_text


def nested(scalars: st.SearchStrategy[Any], keys: st.SearchStrategy[str],
           max_leaves: int = 12) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
        max_leaves=max_leaves)


msgpack_values = nested(msgpack_scalars, st.text(max_size=10))
# The values the issue names (NaN, Infinity, outside int64, bin where text belongs), often:
# mixed into valid bodies, they reach the rules a random map rarely gets past.
POISON = [float("nan"), float("inf"), -float("inf"), 2**63, 2**64 - 1, -(2**63),
          b"\x00\xff", 1.5, -1, ""]
poison = st.sampled_from(POISON)
poison_values = (poison | st.lists(poison, min_size=1, max_size=2)
                 | st.dictionaries(st.text(max_size=4), poison, min_size=1, max_size=2)
                 | msgpack_values)
json_values = nested(json_scalars, json_text)


# JSON text nested deep, as bytes (a Python value that deep cannot even be printed)
deep_json = st.tuples(st.integers(20, 200_000), st.sampled_from("[{")).map(
    lambda nc: (nc[1] * nc[0] if nc[1] == "[" else '{"a":' * nc[0]).encode())


def fields_of(body_types: dict[str, type]) -> list[str]:
    """Every field name any typed body declares: hostile maps use them as keys so the
    fuzzed values land where the parsers look."""
    names: set[str] = set()
    for cls in body_types.values():
        names.update(getattr(cls, "__dataclass_fields__", {}))
    return sorted(n for n in names if not n.isupper())


def packb(value: Any) -> bytes | None:
    """msgpack bytes of ``value``, or None when msgpack cannot carry it."""
    try:
        data: bytes = msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        return None
    return data


@st.composite
def mutated_body(draw: st.DrawFn, sample: dict[str, Any], fields: list[str],
                 values: st.SearchStrategy[Any]) -> dict[str, Any]:
    """A valid ``sample`` body with one to three mutations: a hostile entry added inside a
    map-valued field (most often: that is where free-form data hides), a field replaced,
    or a field of some other body added. Hostile values land where the parsers and the
    store look, past the checks a random map fails first."""
    body = dict(sample)
    for _ in range(draw(st.integers(1, 3))):
        maps = sorted(k for k, v in body.items() if isinstance(v, dict))
        how = draw(st.sampled_from(["inside", "inside", "replace", "add"]))
        if how == "inside" and maps:
            key = draw(st.sampled_from(maps))
            body[key] = {**body[key], draw(st.text(max_size=6)): draw(values)}
        elif how == "replace" and body:
            body[draw(st.sampled_from(sorted(body)))] = draw(values)
        else:
            body[draw(st.sampled_from(fields))] = draw(values)
    return body
