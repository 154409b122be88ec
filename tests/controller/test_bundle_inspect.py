"""The controller's check of a bundle file at the boundary (services/bundles.py
inspect_bundle) and of a download's Range (api/bundles.py parse_range): no I/O."""

from __future__ import annotations

import io
import json

import pytest

from tether.controller.api.bundles import RangeNotSatisfiable, parse_range
from tether.controller.services.bundles import BundleRefused, inspect_bundle

from .bundlefiles import make_bundle, members, tar_of


def inspect(raw: bytes):  # type: ignore[no-untyped-def]
    return inspect_bundle(io.BytesIO(raw))


def test_an_honest_bundle_is_read_with_its_name_version_kind_and_key_ids() -> None:
    info = inspect(make_bundle("web", 7, kind="runtime"))
    assert (info.name, info.version, info.kind) == ("web", 7, "runtime")
    assert len(info.key_ids) == 1 and len(info.key_ids[0]) == 16
    assert json.loads(info.manifest)["sha256"] == info.app_sha256


@pytest.mark.parametrize("shuffle", [
    lambda m: m[1:],  # no manifest
    lambda m: [m[1], m[0], m[2]],  # out of order
    lambda m: [*m, ("extra.txt", b"x")],  # something more
    lambda m: [("../manifest.json", m[0][1]), m[1], m[2]],  # a name with ..
    lambda m: [("/manifest.json", m[0][1]), m[1], m[2]],  # absolute
])
def test_a_tar_with_another_layout_is_refused(shuffle) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BundleRefused):
        inspect(tar_of(shuffle(members(make_bundle()))))


def test_something_that_is_not_a_tar_is_refused() -> None:
    for raw in (b"", b"hello", b"\x1f\x8b" + b"\x00" * 2000, b"\x00" * 10240):
        with pytest.raises(BundleRefused):
            inspect(raw)


def test_an_app_that_differs_from_the_manifest_is_refused() -> None:
    m = members(make_bundle())
    app = bytearray(m[2][1])
    app[-1] ^= 1
    with pytest.raises(BundleRefused, match="sha256"):
        inspect(tar_of([m[0], m[1], ("app.tar.gz", bytes(app))]))


@pytest.mark.parametrize("overrides", [
    {"format": 2}, {"name": "Bad_Name"}, {"kind": "driver"}, {"version": 0},
    {"version": True}, {"version": "3"}, {"sha256": "ab"}, {"policy": []},
    {"expires_at": 5},
])
def test_a_manifest_breaking_a_rule_is_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(BundleRefused):
        inspect(make_bundle(**overrides))  # type: ignore[arg-type]


def test_a_manifest_not_in_canonical_form_is_refused() -> None:
    m = members(make_bundle())
    pretty = json.dumps(json.loads(m[0][1]), indent=2).encode()
    with pytest.raises(BundleRefused, match="canonical"):
        inspect(tar_of([("manifest.json", pretty), m[1], m[2]]))


@pytest.mark.parametrize("sigs", [b"[]", b"{}", b"not json",
                                  b'[{"key_id": "zz", "sig": "AA=="}]',
                                  b'[{"key_id": "0123456789abcdef", "sig": "AA=="}]'])
def test_signatures_of_the_wrong_shape_are_refused(sigs: bytes) -> None:
    m = members(make_bundle())
    with pytest.raises(BundleRefused):
        inspect(tar_of([m[0], ("signatures.json", sigs), m[2]]))


@pytest.mark.parametrize(("header", "want"), [
    (None, None), ("bytes=0-0", (0, 0)), ("bytes=0-99", (0, 99)), ("bytes=10-", (10, 99)),
    ("bytes=90-500", (90, 99)), ("bytes=-10", (90, 99)), ("bytes=-500", (0, 99)),
])
def test_a_single_range_is_read_as_rfc_9110_says(header: str | None,
                                                  want: tuple[int, int] | None) -> None:
    assert parse_range(header, 100) == want


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=5-4", "bytes=-0", "bytes=-",
                                    "bytes=0-1,5-6", "items=0-1", "bytes=a-b", "bytes=1",
                                    "bytes=" + "9" * 30 + "-"])
def test_a_bad_range_is_not_satisfiable(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 100)
