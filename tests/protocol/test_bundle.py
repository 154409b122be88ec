"""protocol/bundle.py and protocol/appspec.py: the manifest's rules, its canonical form, the
signatures (k of n), the bundle file's tar layout, app.tar.gz's members and the activation
checks, on bytes built here (no disk, no clock)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.protocol.appspec import parse_app_toml
from tether.protocol.bundle import (
    MAX_FILES,
    REJECT_CODES,
    SIGNATURE_CONTEXT,
    BundleError,
    FileEntry,
    Manifest,
    Policy,
    Signature,
    TrustedPublishers,
    canonical,
    check_activation,
    check_payload,
    compare_versions,
    key_id,
    make_manifest,
    manifest_dict,
    open_payload,
    parse_manifest,
    parse_signatures,
    parse_trusted_publishers,
    policy_mismatch,
    read_bundle,
    signatures_json,
    signed_message,
    trusted_publishers_json,
    verify_payload,
    verify_signatures,
)
from tether.protocol.signing import public_key_raw

T0 = datetime(2026, 1, 1, tzinfo=UTC)
APP_TOML = b'argv = ["bin/run"]\nrestart = "on-failure"\n'
FILES = {"tether-app.toml": APP_TOML, "bin/run": b"#!/bin/sh\necho hi\n"}


def member(name: str, data: bytes = b"", *, kind: bytes = tarfile.REGTYPE, size: int | None = None,
           linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode, info.linkname = kind, len(data), 0o644, linkname
    if size is not None:
        info.size = size
    return info, data


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes]], *, gz: bool = False,
              fmt: int = tarfile.USTAR_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=0) if gz else raw


def entries(files: dict[str, bytes]) -> dict[str, FileEntry]:
    return {n: FileEntry(hashlib.sha256(d).hexdigest(), len(d), 0o644) for n, d in files.items()}


def manifest_for(payload: bytes, files: dict[str, bytes] = FILES, **over: Any) -> Manifest:
    fields: dict[str, Any] = dict(
        name="hello", kind="app", version=3, sha256=hashlib.sha256(payload).hexdigest(),
        size=len(payload), files=entries(files), min_runner_version="0.1.0",
        policy=Policy(("exec",), ("bin/run",), {"max_memory_bytes": 1 << 28}),
        created_at=T0, expires_at=T0 + timedelta(days=30))
    fields.update(over)
    return make_manifest(**fields)


def app_tar(files: dict[str, bytes] = FILES) -> bytes:
    return tar_bytes([member(n, d) for n, d in files.items()], gz=True)


def sign(key: Ed25519PrivateKey, manifest: Manifest) -> Signature:
    return Signature(key_id(public_key_raw(key)), key.sign(signed_message(manifest)))


def bundle_bytes(manifest_bytes: bytes, sigs: bytes, payload: bytes) -> bytes:
    return tar_bytes([member("manifest.json", manifest_bytes),
                      member("signatures.json", sigs), member("app.tar.gz", payload)])


@pytest.fixture(scope="module")
def keys() -> list[Ed25519PrivateKey]:
    return [Ed25519PrivateKey.generate() for _ in range(3)]


@pytest.fixture
def good(keys: list[Ed25519PrivateKey]) -> tuple[bytes, Manifest, bytes]:
    payload = app_tar()
    manifest = manifest_for(payload)
    raw = bundle_bytes(canonical(manifest), signatures_json([sign(keys[0], manifest)]), payload)
    return raw, manifest, payload


def code_of(exc: pytest.ExceptionInfo[BundleError]) -> str:
    return exc.value.code


# --- the manifest ---------------------------------------------------------------------------


def test_the_canonical_form_is_sorted_compact_utf8_json_and_parses_back_to_the_same() -> None:
    m = manifest_for(b"x", policy=Policy(executables=("/opt/caf\u00e9",)))
    raw = canonical(m)
    assert "/opt/caf\u00e9".encode() in raw  # UTF-8 as is, not \u escapes
    assert raw == json.dumps(manifest_dict(m), sort_keys=True, separators=(",", ":"),
                             ensure_ascii=False).encode()
    assert parse_manifest(raw) == m and canonical(parse_manifest(raw)) == raw
    assert json.loads(raw)["created_at"] == "2026-01-01T00:00:00Z"


def test_the_signed_message_is_the_context_then_the_canonical_manifest() -> None:
    m = manifest_for(b"x")
    assert signed_message(m) == b"tether.v1.bundle\x00" + canonical(m) == SIGNATURE_CONTEXT \
        + canonical(m)


def _hostile(mutate: Any) -> bytes:
    obj = json.loads(canonical(manifest_for(b"x")))
    mutate(obj)
    return json.dumps(obj).encode()


HOSTILE: dict[str, Any] = {
    "a name with a capital": lambda o: o.update(name="Hello"),
    "a name too long": lambda o: o.update(name="a" * 64),
    "a name starting with a dash": lambda o: o.update(name="-x"),
    "version zero": lambda o: o.update(version=0),
    "version past 2^53": lambda o: o.update(version=2**53 + 1),
    "version a boolean": lambda o: o.update(version=True),
    "version a string": lambda o: o.update(version="3"),
    "an uppercase sha256": lambda o: o.update(sha256="A" * 64),
    "a short sha256": lambda o: o.update(sha256="a" * 63),
    "a negative size": lambda o: o.update(size=-1),
    "no files": lambda o: o.update(files={}),
    "a path climbing out": lambda o: o["files"].update({"../evil": o["files"]["bin/run"]}),
    "a path climbing in the middle": lambda o: o["files"].update(
        {"bin/../../evil": o["files"]["bin/run"]}),
    "an absolute path": lambda o: o["files"].update({"/etc/passwd": o["files"]["bin/run"]}),
    "a NUL in a path": lambda o: o["files"].update({"bin/r\x00un": o["files"]["bin/run"]}),
    "a backslash path": lambda o: o["files"].update({"bin\\run": o["files"]["bin/run"]}),
    "an empty part": lambda o: o["files"].update({"bin//run2": o["files"]["bin/run"]}),
    "a dot part": lambda o: o["files"].update({"./run2": o["files"]["bin/run"]}),
    "a path not NFC": lambda o: o["files"].update({"cafe\u0301": o["files"]["bin/run"]}),
    "a path too long": lambda o: o["files"].update({"a" * 241: o["files"]["bin/run"]}),
    "a file that is also a directory": lambda o: o["files"].update(
        {"bin/run/x": o["files"]["bin/run"]}),
    "a setuid mode": lambda o: o["files"]["bin/run"].update(mode=0o4755),
    "a file entry with an extra key": lambda o: o["files"]["bin/run"].update(x=1),
    "no tether-app.toml": lambda o: o["files"].pop("tether-app.toml"),
    "an unknown key": lambda o: o.update(extra=1),
    "a missing key": lambda o: o.pop("expires_at"),
    "format 2": lambda o: o.update(format=2),
    "an unknown kind": lambda o: o.update(kind="driver"),
    "a min_runner_version without patch": lambda o: o.update(min_runner_version="1.0"),
    "a min_runner_version with a leading zero": lambda o: o.update(min_runner_version="01.0.0"),
    "a pre-release with a leading zero": lambda o: o.update(min_runner_version="1.0.0-01"),
    "a time with an offset": lambda o: o.update(created_at="2026-01-01T00:00:00+01:00"),
    "a time that does not exist": lambda o: o.update(created_at="2026-02-30T00:00:00Z"),
    "expiry before creation": lambda o: o.update(expires_at="2025-01-01T00:00:00Z"),
    "policy kinds not a list": lambda o: o["policy"].update(kinds="exec"),
    "policy kinds repeated": lambda o: o["policy"].update(kinds=["exec", "exec"]),
    "too many executables": lambda o: o["policy"].update(
        executables=[f"/bin/x{i}" for i in range(257)]),
    "an executable with a newline": lambda o: o["policy"].update(executables=["a\nb"]),
    "a negative limit": lambda o: o["policy"]["limits"].update(max_memory_bytes=-1),
    "a fractional limit": lambda o: o["policy"]["limits"].update(max_cpu=0.5),
    "a policy with an unknown key": lambda o: o["policy"].update(allow_all=True),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_manifest_is_refused_as_bad_manifest(case: str) -> None:
    with pytest.raises(BundleError) as exc:
        parse_manifest(_hostile(HOSTILE[case]))
    assert code_of(exc) == "bad_manifest"


@pytest.mark.parametrize("raw", [
    b"", b"[]", b"null", b"\xff\xfe", b'{"a":1,"a":2}', b'{"version": NaN}',
    b"[" * 100_000, b" " * (4 << 20) + b"{}"])
def test_malformed_json_is_a_bad_manifest_not_a_crash(raw: bytes) -> None:
    with pytest.raises(BundleError) as exc:
        parse_manifest(raw)
    assert code_of(exc) == "bad_manifest"


def test_a_duplicate_key_is_refused_even_when_both_values_agree() -> None:
    raw = canonical(manifest_for(b"x"))
    with pytest.raises(BundleError, match="twice"):
        parse_manifest(raw[:-1] + b',"version":3}')


def test_at_most_ten_thousand_files() -> None:
    files = {"tether-app.toml": b""} | {f"f{i}": b"" for i in range(MAX_FILES)}
    with pytest.raises(BundleError, match="files"):
        manifest_for(b"x", files=files)
    assert len(manifest_for(b"x", files=dict(list(files.items())[:MAX_FILES])).files) \
        == MAX_FILES


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_any_bytes_parse_to_a_manifest_or_a_bad_manifest(raw: bytes) -> None:
    try:
        parse_manifest(raw)
    except BundleError as exc:
        assert exc.code == "bad_manifest"


JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                       lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(json.loads(canonical(manifest_for(b"x"))))), JSONISH)
def test_any_field_replaced_by_any_json_value_is_refused_or_round_trips(
        key: str, value: object) -> None:
    obj = json.loads(canonical(manifest_for(b"x")))
    obj[key] = value
    raw = json.dumps(obj).encode()
    try:
        m = parse_manifest(raw)
    except BundleError as exc:
        assert exc.code == "bad_manifest"
    else:
        assert parse_manifest(canonical(m)) == m


# --- versions -------------------------------------------------------------------------------


@pytest.mark.parametrize(("low", "high"), [
    ("0.1.0", "0.1.1"), ("0.9.0", "0.10.0"), ("1.0.0-rc.1", "1.0.0"),
    ("1.0.0-alpha", "1.0.0-alpha.1"), ("1.0.0-alpha.1", "1.0.0-alpha.beta"),
    ("1.0.0-2", "1.0.0-11"), ("1.0.0-rc.11", "1.0.0-rc.2a"), ("2.0.0", "10.0.0")])
def test_versions_compare_as_semver_says(low: str, high: str) -> None:
    assert compare_versions(low, high) == -1
    assert compare_versions(high, low) == 1
    assert compare_versions(low, low) == 0


# --- signatures -----------------------------------------------------------------------------


def test_a_bundle_signed_by_a_trusted_key_verifies(
        keys: list[Ed25519PrivateKey], good: tuple[bytes, Manifest, bytes]) -> None:
    raw, manifest, _ = good
    parts = read_bundle(raw)
    assert parts.manifest == manifest and parts.manifest_bytes == canonical(manifest)
    result = verify_signatures(parts.manifest_bytes, parts.signatures,
                               [public_key_raw(keys[0])])
    assert result.ok and result.code is None and result.valid == (key_id(public_key_raw(keys[0])),)


def test_one_byte_of_the_manifest_changed_breaks_the_signature(
        keys: list[Ed25519PrivateKey], good: tuple[bytes, Manifest, bytes]) -> None:
    _raw, manifest, payload = good
    tampered = canonical(manifest).replace(b'"version":3', b'"version":4')
    parts = read_bundle(bundle_bytes(tampered, signatures_json([sign(keys[0], manifest)]),
                                     payload))
    result = verify_signatures(parts.manifest_bytes, parts.signatures,
                               [public_key_raw(keys[0])])
    assert not result.ok and result.code == "bad_signature"
    assert result.invalid == (key_id(public_key_raw(keys[0])),)


def test_a_signature_by_a_key_the_node_does_not_trust_is_untrusted_key(
        keys: list[Ed25519PrivateKey], good: tuple[bytes, Manifest, bytes]) -> None:
    parts = read_bundle(good[0])
    result = verify_signatures(parts.manifest_bytes, parts.signatures,
                               [public_key_raw(keys[1])])
    assert not result.ok and result.code == "untrusted_key"
    assert result.unknown == (key_id(public_key_raw(keys[0])),)


def test_two_of_three_holds_with_one_bad_signature_and_three_of_three_does_not(
        keys: list[Ed25519PrivateKey]) -> None:
    manifest = manifest_for(b"x")
    bad = replace(sign(keys[2], manifest), sig=sign(keys[2], manifest_for(b"y")).sig)
    sigs = [sign(keys[0], manifest), sign(keys[1], manifest), bad]
    trusted = [public_key_raw(k) for k in keys]
    two = verify_signatures(canonical(manifest), sigs, trusted, 2)
    assert two.ok and len(two.valid) == 2 and two.invalid == (bad.key_id,)
    three = verify_signatures(canonical(manifest), sigs, trusted, 3)
    assert not three.ok and three.code == "bad_signature"


def test_one_key_signing_twice_counts_once(keys: list[Ed25519PrivateKey]) -> None:
    manifest = manifest_for(b"x")
    sigs = [sign(keys[0], manifest)] * 2
    result = verify_signatures(canonical(manifest), sigs, [public_key_raw(keys[0])], 2)
    assert not result.ok and result.code == "threshold_not_met" and len(result.valid) == 1
    with pytest.raises(BundleError, match="once"):
        parse_signatures(signatures_json(sigs[:1]).replace(b"]", b",") + signatures_json(
            sigs[:1])[1:])


def test_a_small_order_key_trusted_by_mistake_verifies_nothing() -> None:
    manifest = manifest_for(b"x")
    zero_key = bytes(32)  # y = 0: a point of order 4
    forged = Signature(key_id(zero_key), bytes(64))
    result = verify_signatures(canonical(manifest), [forged], [zero_key])
    assert not result.ok and result.code == "bad_signature"


@pytest.mark.parametrize("raw", [
    b"[]", b"{}", b'[{"key_id":"00","sig":""}]', b'[{"key_id":"' + b"0" * 16 + b'","sig":"@@"}]',
    b'[{"key_id":"' + b"0" * 16 + b'","sig":"AAAA"}]',
    b'[{"key_id":"' + b"0" * 16 + b'","sig":"' + b"A" * 88 + b'","x":1}]'])
def test_malformed_signatures_are_refused(raw: bytes) -> None:
    with pytest.raises(BundleError) as exc:
        parse_signatures(raw)
    assert code_of(exc) == "bad_manifest"


def test_the_threshold_is_at_least_one() -> None:
    with pytest.raises(ValueError):
        verify_signatures(b"{}", [], [], 0)


# --- the bundle file ------------------------------------------------------------------------


def test_one_byte_of_app_tar_gz_changed_is_a_sha256_mismatch(
        good: tuple[bytes, Manifest, bytes]) -> None:
    raw, _manifest, payload = good
    tampered = bytearray(raw)
    parts = read_bundle(raw)
    tampered[parts.payload_offset + 20] ^= 0x01
    parts = read_bundle(bytes(tampered))
    body = open_payload(bytes(tampered), parts).read()
    assert len(body) == len(payload) and body != payload
    with pytest.raises(BundleError) as exc:
        check_payload(len(body), hashlib.sha256(body).hexdigest(), parts.manifest)
    assert code_of(exc) == "sha256_mismatch"


def test_app_tar_gz_of_another_size_than_the_manifest_is_a_size_mismatch(
        keys: list[Ed25519PrivateKey], good: tuple[bytes, Manifest, bytes]) -> None:
    _, manifest, payload = good
    with pytest.raises(BundleError) as exc:
        read_bundle(bundle_bytes(canonical(manifest), signatures_json(
            [sign(keys[0], manifest)]), payload + b"\x00"))
    assert code_of(exc) == "size_mismatch"


def test_a_manifest_not_in_canonical_form_is_refused(
        keys: list[Ed25519PrivateKey], good: tuple[bytes, Manifest, bytes]) -> None:
    _, manifest, payload = good
    spaced = json.dumps(manifest_dict(manifest), sort_keys=True).encode()
    with pytest.raises(BundleError, match="canonical") as exc:
        read_bundle(bundle_bytes(spaced, signatures_json([sign(keys[0], manifest)]), payload))
    assert code_of(exc) == "bad_manifest"


def _outer(good: tuple[bytes, Manifest, bytes],
           keys: list[Ed25519PrivateKey]) -> list[tuple[tarfile.TarInfo, bytes]]:
    _, manifest, payload = good
    return [member("manifest.json", canonical(manifest)),
            member("signatures.json", signatures_json([sign(keys[0], manifest)])),
            member("app.tar.gz", payload)]


@pytest.mark.parametrize("attack", [
    "extra member", "reordered", "missing member", "symlink member", "climbing name",
    "duplicate member", "directory member", "pax header"])
def test_the_bundle_file_holds_exactly_its_three_members_in_order(
        attack: str, good: tuple[bytes, Manifest, bytes], keys: list[Ed25519PrivateKey]) -> None:
    m = _outer(good, keys)
    fmt = tarfile.USTAR_FORMAT
    if attack == "extra member":
        m.append(member("run.sh", b"evil"))
    elif attack == "reordered":
        m[1], m[2] = m[2], m[1]
    elif attack == "missing member":
        m.pop(1)
    elif attack == "symlink member":
        m[2] = member("app.tar.gz", kind=tarfile.SYMTYPE, linkname="/etc/passwd")
    elif attack == "climbing name":
        m[0] = member("../manifest.json", m[0][1])
    elif attack == "duplicate member":
        m.insert(1, m[0])
    elif attack == "directory member":
        m.insert(0, member("manifest.json", kind=tarfile.DIRTYPE))
    elif attack == "pax header":
        m[0][0].pax_headers = {"comment": "hidden"}
        fmt = tarfile.PAX_FORMAT
    with pytest.raises(BundleError) as exc:
        read_bundle(tar_bytes(m, fmt=fmt))
    assert code_of(exc) == "bad_layout"


@pytest.mark.parametrize("raw", [b"", b"not a tar" * 100, bytes(512), gzip.compress(b"x")],
                         ids=["empty", "text", "zeros", "a-gzip"])
def test_something_that_is_not_a_tar_is_a_bad_layout(raw: bytes) -> None:
    with pytest.raises(BundleError) as exc:
        read_bundle(raw)
    assert code_of(exc) == "bad_layout"


def test_a_bundle_reads_from_a_file_object_as_from_bytes(
        good: tuple[bytes, Manifest, bytes]) -> None:
    raw, _, payload = good
    f = io.BytesIO(raw)
    parts = read_bundle(f)
    assert parts == read_bundle(raw)
    assert open_payload(f, parts).read() == payload


# --- app.tar.gz's members -------------------------------------------------------------------


def test_every_file_is_checked_and_handed_to_the_sink_in_order(
        good: tuple[bytes, Manifest, bytes]) -> None:
    _, manifest, payload = good
    got: dict[str, bytes] = {}

    def sink(name: str, entry: FileEntry, chunk: bytes) -> None:
        got[name] = got.get(name, b"") + chunk

    verify_payload(io.BytesIO(payload), manifest, sink=sink)
    assert got == FILES


def _inner_attack(attack: str) -> tuple[bytes, dict[str, bytes]]:
    members = [member(n, d) for n, d in FILES.items()]
    listed = dict(FILES)
    if attack == "extra member":
        members.append(member("bin/extra", b"x"))
    elif attack == "climbing name":
        members.append(member("../evil", b"x"))
        listed["evil"] = b"x"
    elif attack == "absolute name":
        members.append(member("/etc/cron.d/evil", b"x"))
    elif attack == "symlink member":
        members[1] = member("bin/run", kind=tarfile.SYMTYPE, linkname="/bin/sh")
    elif attack == "hardlink member":
        members[1] = member("bin/run", kind=tarfile.LNKTYPE, linkname="tether-app.toml")
    elif attack == "device member":
        members[1] = member("bin/run", kind=tarfile.CHRTYPE)
    elif attack == "duplicate member":
        members.append(member("bin/run", FILES["bin/run"]))
    elif attack == "missing member":
        members.pop(1)
    elif attack == "directory named as a file":
        members.append(member("bin/run", kind=tarfile.DIRTYPE))
    return tar_bytes(members, gz=True), listed


@pytest.mark.parametrize("attack", [
    "extra member", "climbing name", "absolute name", "symlink member", "hardlink member",
    "device member", "duplicate member", "missing member", "directory named as a file"])
def test_app_tar_gz_holds_only_the_listed_regular_files(attack: str) -> None:
    payload, listed = _inner_attack(attack)
    manifest = manifest_for(payload, files=listed)
    with pytest.raises(BundleError) as exc:
        verify_payload(io.BytesIO(payload), manifest)
    assert code_of(exc) == "bad_layout"


def test_a_file_with_other_bytes_than_listed_is_a_sha256_mismatch() -> None:
    payload = app_tar({**FILES, "bin/run": b"#!/bin/sh\necho HI\n"})
    with pytest.raises(BundleError) as exc:
        verify_payload(io.BytesIO(payload), manifest_for(payload))
    assert code_of(exc) == "sha256_mismatch"


def test_a_huge_member_declared_is_refused_from_its_header_before_any_byte_is_read() -> None:
    toml = member("tether-app.toml", APP_TOML)[0].tobuf(tarfile.USTAR_FORMAT) + APP_TOML
    toml += b"\x00" * (-len(toml) % 512)
    huge = member("bin/run", size=1 << 40)[0].tobuf(tarfile.GNU_FORMAT)  # base-256 size
    # a header alone, then far short of a terabyte: a reader that tried would fail
    payload = gzip.compress(toml + huge + b"\x00" * 4096, mtime=0)
    with pytest.raises(BundleError) as exc:
        verify_payload(io.BytesIO(payload), manifest_for(payload))
    assert code_of(exc) == "size_mismatch"


@pytest.mark.parametrize("raw", [b"", b"garbage", gzip.compress(b"garbage" * 100, mtime=0)],
                         ids=["empty", "garbage", "a-gzip"])
def test_an_app_tar_gz_that_is_not_one_is_a_bad_layout(raw: bytes) -> None:
    with pytest.raises(BundleError) as exc:
        verify_payload(io.BytesIO(raw), manifest_for(b"x"))
    assert code_of(exc) == "bad_layout"


# --- activation -----------------------------------------------------------------------------


def _activation(manifest: Manifest, now: datetime = T0 + timedelta(days=1),
                runner: str = "0.1.0", highest: int | None = None,
                rollback: bool = False) -> str | None:
    return check_activation(manifest, now, runner, highest, rollback)


def test_a_valid_bundle_may_activate_and_so_may_the_same_version_again() -> None:
    m = manifest_for(b"x")
    assert _activation(m) is None
    assert _activation(m, highest=3) is None


def test_an_expired_manifest_is_refused_from_its_expiry_on() -> None:
    m = manifest_for(b"x")
    assert _activation(m, now=m.expires_at) == "bundle_expired"
    assert _activation(m, now=m.expires_at - timedelta(seconds=1)) is None


def test_a_manifest_from_the_future_is_refused_past_the_clock_skew_allowed() -> None:
    m = manifest_for(b"x")
    assert _activation(m, now=T0 - timedelta(minutes=59)) is None
    assert _activation(m, now=T0 - timedelta(hours=2)) == "bundle_not_yet_valid"


def test_a_min_runner_version_above_the_runner_is_refused() -> None:
    m = manifest_for(b"x", min_runner_version="0.2.0")
    assert _activation(m, runner="0.1.9") == "runner_too_old"
    assert _activation(m, runner="0.2.0-rc.1") == "runner_too_old"
    assert _activation(m, runner="0.2.0") is None


def test_a_downgrade_is_refused_unless_the_rollout_carries_an_explicit_rollback() -> None:
    m = manifest_for(b"x")
    assert _activation(m, highest=4) == "downgrade"
    assert _activation(m, highest=4, rollback=True) is None


def test_the_first_reason_is_reported_when_several_hold() -> None:
    m = manifest_for(b"x", min_runner_version="9.0.0")
    assert _activation(m, now=m.expires_at, highest=9) == "bundle_expired"
    assert check_activation(m, T0, "0.1.0", None, False, expected_kind="runtime") \
        == "wrong_kind"


# --- tether-app.toml and trusted publishers -------------------------------------------------


def test_a_full_app_toml_parses_into_its_typed_value() -> None:
    spec = parse_app_toml(b'argv = ["bin/run", "--port", "8080"]\nrestart = "always"\n'
                          b'[env]\nLOG = "info"\n[health]\nargv = ["bin/check"]\n'
                          b'interval_s = 2.5\n[policy]\nkinds = ["exec"]\n'
                          b'limits = { max_memory_bytes = 1024 }\n')
    assert spec.argv == ("bin/run", "--port", "8080") and spec.restart == "always"
    assert dict(spec.env) == {"LOG": "info"}
    assert spec.health is not None and spec.health.interval_s == 2.5
    assert spec.policy.kinds == ("exec",) and dict(spec.policy.limits) == {
        "max_memory_bytes": 1024}
    assert parse_app_toml(b'argv = ["x"]').restart == "on-failure"


@pytest.mark.parametrize("raw", [
    b"", b'argv = "bin/run"', b"argv = []", b'argv = [""]', b'argv = ["a\\u0000b"]',
    b'argv = [1]', b'argv = ["x"]\nrestart = "sometimes"', b'argv = ["x"]\nport = 1',
    b'argv = ["x"]\n[env]\n"1X" = "a"', b'argv = ["x"]\n[env]\nA = 1',
    b'argv = ["x"]\n[health]\nargv = ["y"]\ninterval_s = 0',
    b'argv = ["x"]\n[health]\nargv = ["y"]\ninterval_s = true',
    b'argv = ["x"]\n[health]\ninterval_s = 5', b'argv = ["x"]\n[policy]\nkinds = [1]',
    b"argv = [", b"\xff", b'argv = ["x"]\n#' + b"x" * (64 << 10)])
def test_a_hostile_app_toml_is_refused_as_bad_app(raw: bytes) -> None:
    with pytest.raises(BundleError) as exc:
        parse_app_toml(raw)
    assert code_of(exc) == "bad_app"


def test_trusted_publishers_round_trip_and_refuse_a_bad_key(
        keys: list[Ed25519PrivateKey]) -> None:
    trusted = TrustedPublishers(tuple(public_key_raw(k) for k in keys), 2)
    raw = trusted_publishers_json(trusted)
    assert parse_trusted_publishers(raw) == trusted
    obj = json.loads(raw)
    obj["keys"][0]["key_id"] = "0" * 16
    with pytest.raises(BundleError, match="key_id"):
        parse_trusted_publishers(json.dumps(obj).encode())
    obj = {"threshold": 1, "keys": [{"key_id": key_id(bytes(32)), "public_key": "A" * 43 + "="}]}
    with pytest.raises(BundleError, match="small order"):
        parse_trusted_publishers(json.dumps(obj).encode())
    with pytest.raises(BundleError, match="threshold"):
        parse_trusted_publishers(b'{"threshold": 0, "keys": []}')


def test_every_code_a_bundle_is_refused_with_is_a_stable_code_the_docs_name() -> None:
    root = Path(__file__).resolve().parents[2]
    source = "".join((root / "protocol" / f).read_text() for f in ("bundle.py", "appspec.py"))
    raised = set(re.findall(r'BundleError\(\s*"([a-z_]+)"', source))
    returned = set(re.findall(r'return "([a-z_]+)"', source))
    assert raised | returned <= REJECT_CODES
    assert returned == {"wrong_kind", "bundle_expired", "bundle_not_yet_valid",
                        "runner_too_old", "downgrade"}
    assert "policy_mismatch" in REJECT_CODES  # the node raises it with policy_mismatch()
    docs = (root / "docs" / "protocol.md").read_text().split("## Bundles", 1)[1]
    assert [c for c in sorted(REJECT_CODES) if f"`{c}`" not in docs] == []


def _checked(raw: bytes, trusted: list[bytes]) -> tuple[bytes, bytes]:
    """The whole pipeline a node runs; (manifest bytes, app.tar.gz) or BundleError."""
    parts = read_bundle(raw)
    result = verify_signatures(parts.manifest_bytes, parts.signatures, trusted)
    if not result.ok:
        raise BundleError(result.code or "bad_signature", result.message)
    payload = open_payload(raw, parts).read()
    check_payload(len(payload), hashlib.sha256(payload).hexdigest(), parts.manifest)
    verify_payload(io.BytesIO(payload), parts.manifest)
    return parts.manifest_bytes, payload


_GOOD_KEY = Ed25519PrivateKey.generate()
_GOOD_PAYLOAD = app_tar()
_GOOD_MANIFEST = manifest_for(_GOOD_PAYLOAD)
_GOOD = bundle_bytes(canonical(_GOOD_MANIFEST), signatures_json(
    [sign(_GOOD_KEY, _GOOD_MANIFEST)]), _GOOD_PAYLOAD)


@settings(max_examples=400, deadline=None)
@given(st.integers(0, len(_GOOD) - 1), st.integers(1, 255))
def test_any_byte_of_a_bundle_changed_is_refused_or_changes_nothing_that_runs(
        position: int, xor: int) -> None:
    """Integrity end to end: a flipped byte either fails a check with a stable code, or
    lands where nothing is read (tar padding), and what the node would run is unchanged."""
    raw = bytearray(_GOOD)
    raw[position] ^= xor
    try:
        got = _checked(bytes(raw), [public_key_raw(_GOOD_KEY)])
    except BundleError as exc:
        assert exc.code in REJECT_CODES
    else:
        assert got == (canonical(_GOOD_MANIFEST), _GOOD_PAYLOAD)


def test_a_refused_bundle_answers_400_over_http_with_its_own_code() -> None:
    exc = BundleError("sha256_mismatch", "x")
    assert exc.code == "sha256_mismatch" and exc.http_status == 400


def test_a_policy_mismatch_names_the_first_kind_or_executable_the_node_refuses() -> None:
    policy = manifest_for(b"x").policy  # kinds ("exec",), executables ("bin/run",)
    assert policy_mismatch(policy, kind_allowed=lambda k: True,
                           executable_allowed=lambda e: True) is None
    why = policy_mismatch(policy, kind_allowed=lambda k: k != "exec",
                          executable_allowed=lambda e: True)
    assert why is not None and "'exec'" in why
    why = policy_mismatch(policy, kind_allowed=lambda k: True,
                          executable_allowed=lambda e: e.startswith("/"))
    assert why is not None and "'bin/run'" in why
