"""Signed bundles (issue 15; docs/protocol.md "Bundles"): the manifest, its canonical form,
its signatures, the bundle file's tar layout and the checks a node runs before activation.
Pure: no disk, no clock (``now`` is passed in); file objects are read, never opened.

A bundle FILE is an uncompressed POSIX tar with exactly :data:`MEMBERS`, in that order:
``manifest.json`` (the canonical manifest), ``signatures.json`` and ``app.tar.gz``.

Rule 1: a manifest is parsed once into a frozen :class:`Manifest` with every rule checked
(:func:`parse_manifest`); ``manifest.json`` must be byte-equal to ``canonical()`` of what it
parses to, so there is one encoding of each manifest and what is signed is what is read.
Rule 2: a signature signs ``SIGNATURE_CONTEXT + canonical(manifest)``; a key counts once
(by key id), only when it is trusted and its signature passes the strict checks of
:mod:`.keys`; at least ``threshold`` distinct trusted keys must count.
Rule 3: nothing in ``app.tar.gz`` is trusted before its size and sha256 match the signed
manifest; inside it, only regular files and directories under safe relative paths, each
file listed in the manifest with its size and sha256, each listed file present once.
Rule 4: every refusal is a :class:`BundleError` whose ``code`` is one of
:data:`REJECT_CODES`, stable: the node reports it in ``bundle.status rejected``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import re
import tarfile
import unicodedata
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import IO, Any, NamedTuple

from .errors import ERROR_TABLE, BadFrame, ErrorSpec, TetherError
from .keys import check_ed25519_public_key
from .signing import verify_strict

FORMAT = 1
SIGNATURE_CONTEXT = b"tether.v1.bundle\x00"
MANIFEST_MEMBER, SIGNATURES_MEMBER, PAYLOAD_MEMBER = MEMBERS = (
    "manifest.json", "signatures.json", "app.tar.gz")
APP_TOML = "tether-app.toml"
KINDS = ("app", "runtime")

MAX_MANIFEST_BYTES = 4 << 20  # 10,000 files of 240-byte paths fit with room to spare
MAX_SIGNATURES_BYTES = 16 << 10
MAX_SIGNATURES = 32
MAX_FILES = 10_000
MAX_DIRS = 10_000
MAX_PATH_BYTES = 240
MAX_PATH_DEPTH = 32
MAX_VERSION = 2**53  # a JSON number every reader holds exactly
MAX_PAYLOAD_BYTES = 4 << 30  # app.tar.gz
MAX_FILE_BYTES = 4 << 30
MAX_UNPACKED_BYTES = 16 << 30  # the sum of the files' sizes: the node's disk, not a bomb
MAX_POLICY_KINDS = 64
MAX_POLICY_EXECUTABLES = 256
MAX_EXECUTABLE_CHARS = 1024
MAX_POLICY_LIMITS = 32
MAX_VERSION_STRING = 64
_CHUNK = 1 << 16
KEY_ID_CHARS = 16

REJECT_CODES = frozenset({
    "bad_manifest",  # the manifest or signatures.json breaks a rule (Rule 1)
    "bad_layout",  # the bundle file or app.tar.gz breaks the tar rules (Rule 3)
    "bad_signature",  # a trusted key's signature does not verify, too few left (Rule 2)
    "untrusted_key",  # no trusted key signed at all (Rule 2)
    "threshold_not_met",  # some trusted keys signed, fewer than k (Rule 2)
    "sha256_mismatch",  # app.tar.gz or a file in it has another sha256 than the manifest
    "size_mismatch",  # ... or another size
    "bundle_expired",  # now >= expires_at
    "bundle_not_yet_valid",  # created_at lies ahead of now by more than the allowed skew
    "runner_too_old",  # min_runner_version > the node's version
    "downgrade",  # version below the highest activated, without an explicit rollback
    "wrong_kind",  # e.g. a runtime bundle offered as an app
    "bad_app",  # tether-app.toml breaks a rule (protocol/appspec.py)
    "policy_mismatch",  # the node's policy refuses a kind or executable it needs
})

_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_KEY_ID = re.compile(r"[0-9a-f]{16}")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_KIND_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
_LIMIT_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_VERSION = re.compile(r"(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})"
                      r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?")
_MANIFEST_KEYS = frozenset({"format", "name", "kind", "version", "sha256", "size", "files",
                            "min_runner_version", "policy", "created_at", "expires_at"})


class BundleError(TetherError):
    """A bundle refused, with a stable ``code`` from :data:`REJECT_CODES` (Rule 4). Over
    HTTP it answers 400 like ``invalid_request`` (the code itself stays in the body)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)

    @property
    def spec(self) -> ErrorSpec:
        return ERROR_TABLE["invalid_request"]


# --- the manifest ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One regular file of app.tar.gz: its sha256 (hex), size in bytes and mode (0..0o777:
    no setuid, setgid or sticky bit)."""

    sha256: str
    size: int
    mode: int


@dataclass(frozen=True, slots=True)
class Policy:
    """What the app needs from the node's policy: command kinds, executables, and resource
    limits (name -> non-negative integer). Lists are kept in the order given."""

    kinds: tuple[str, ...] = ()
    executables: tuple[str, ...] = ()
    limits: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class Manifest:
    """A parsed manifest (Rule 1). Build one with :func:`parse_manifest` or
    :func:`make_manifest`, which check every rule; ``files`` and ``policy.limits`` are
    read-only mappings."""

    name: str
    kind: str
    version: int
    sha256: str
    size: int
    files: Mapping[str, FileEntry]
    min_runner_version: str
    policy: Policy
    created_at: datetime
    expires_at: datetime
    format: int = FORMAT


def _bad(message: str) -> BundleError:
    return BundleError("bad_manifest", message)


def _int(value: object, what: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise _bad(f"{what} must be an integer in {low}..{high}")
    return value


def _str(value: object, what: str, pattern: re.Pattern[str]) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise _bad(f"{what} must match {pattern.pattern}")
    return value


def _time(value: object, what: str) -> datetime:
    if not isinstance(value, str) or not _TIME.fullmatch(value):
        raise _bad(f"{what} must be an ISO 8601 UTC time like 2026-01-31T12:00:00Z")
    try:
        return datetime.strptime(value, _TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise _bad(f"{what} is not a real date and time") from None


def format_time(when: datetime) -> str:
    """``when`` (aware) as the manifest writes it: UTC, whole seconds, ``Z``."""
    return when.astimezone(UTC).strftime(_TIME_FORMAT)


def check_path(path: object) -> str:
    """``path`` when it is a safe relative path inside app.tar.gz: non-empty ``/``-separated
    parts, none empty, ``.`` or ``..``; no NUL, control or format characters, no backslash;
    NFC as given; at most :data:`MAX_PATH_BYTES` UTF-8 bytes and :data:`MAX_PATH_DEPTH`
    parts. Raises ``bad_manifest``."""
    if not isinstance(path, str) or not path:
        raise _bad("a file path must be a non-empty string")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise _bad(f"a file path is at most {MAX_PATH_BYTES} bytes")
    if any(unicodedata.category(c) in ("Cc", "Cs", "Cf") for c in path) or "\\" in path:
        raise _bad(f"the file path {path!r} has a control character or a backslash")
    if unicodedata.normalize("NFC", path) != path:
        raise _bad(f"the file path {path!r} must be NFC-normalised")
    parts = path.split("/")
    if len(parts) > MAX_PATH_DEPTH or any(p in ("", ".", "..") for p in parts):
        raise _bad(f"the file path {path!r} must be relative, without empty, . or .. parts")
    return path


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _bad(f"the key {key!r} appears twice")
        out[key] = value
    return out


def _no_constant(name: str) -> object:
    raise _bad(f"{name} is not JSON")


def _load_json(raw: bytes, what: str, max_bytes: int) -> object:
    if not isinstance(raw, bytes | bytearray) or len(raw) > max_bytes:
        raise _bad(f"{what} is at most {max_bytes} bytes")
    try:
        return json.loads(bytes(raw).decode("utf-8"), object_pairs_hook=_strict_object,
                          parse_constant=_no_constant, parse_float=_reject_float)
    except BundleError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _bad(f"{what} is not UTF-8 JSON") from None


def _reject_float(text: str) -> object:
    raise _bad(f"{text} is not an integer (the manifest has no fractions)")


def parse_policy(value: object) -> Policy:
    """A manifest's ``policy`` object (also ``[policy]`` of tether-app.toml), every list
    bounded, each entry once. Raises ``bad_manifest``."""
    if not isinstance(value, dict) or not set(value) <= {"kinds", "executables", "limits"}:
        raise _bad("policy is an object with kinds, executables and limits")
    kinds = value.get("kinds", [])
    if not isinstance(kinds, list) or len(kinds) > MAX_POLICY_KINDS:
        raise _bad(f"policy.kinds is a list of at most {MAX_POLICY_KINDS} kinds")
    execs = value.get("executables", [])
    if not isinstance(execs, list) or len(execs) > MAX_POLICY_EXECUTABLES:
        raise _bad(f"policy.executables is a list of at most {MAX_POLICY_EXECUTABLES}")
    for e in execs:
        if (not isinstance(e, str) or not 0 < len(e) <= MAX_EXECUTABLE_CHARS
                or any(unicodedata.category(c) in ("Cc", "Cs") for c in e)):
            raise _bad("an executable is 1-1024 characters with no control character")
    limits = value.get("limits", {})
    if not isinstance(limits, dict) or len(limits) > MAX_POLICY_LIMITS:
        raise _bad(f"policy.limits is an object of at most {MAX_POLICY_LIMITS} limits")
    checked = {_str(k, "a limit name", _LIMIT_NAME): _int(v, f"limit {k}", 0, MAX_VERSION)
               for k, v in limits.items()}
    if len(set(kinds)) != len(kinds) or len(set(execs)) != len(execs):
        raise _bad("policy.kinds and policy.executables list each entry once")
    return Policy(tuple(_str(k, "a policy kind", _KIND_NAME) for k in kinds), tuple(execs),
                  MappingProxyType(checked))


def _files(value: object) -> Mapping[str, FileEntry]:
    if not isinstance(value, dict) or not 0 < len(value) <= MAX_FILES:
        raise _bad(f"files is an object of 1..{MAX_FILES} paths")
    out: dict[str, FileEntry] = {}
    total = 0
    for path, entry in value.items():
        check_path(path)
        if not isinstance(entry, dict) or set(entry) != {"sha256", "size", "mode"}:
            raise _bad(f"files[{path!r}] is exactly {{sha256, size, mode}}")
        out[path] = FileEntry(_str(entry["sha256"], "a file's sha256", _SHA256),
                              _int(entry["size"], "a file's size", 0, MAX_FILE_BYTES),
                              _int(entry["mode"], "a file's mode", 0, 0o777))
        total += out[path].size
    if total > MAX_UNPACKED_BYTES:
        raise _bad(f"the files add up to more than {MAX_UNPACKED_BYTES} bytes")
    for path in out:  # a file may not also be a directory of another file
        parts = path.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in out:
                raise _bad(f"{'/'.join(parts[:i])!r} is a file and a directory")
    if APP_TOML not in out:
        raise _bad(f"files must include {APP_TOML}")
    return MappingProxyType(dict(sorted(out.items())))


def check_version_string(value: object, what: str = "min_runner_version") -> str:
    """``value`` when it is ``X.Y.Z`` with an optional ``-pre.release`` (SemVer 2 order,
    no build metadata), at most 64 characters; raises ``bad_manifest``."""
    if (not isinstance(value, str) or len(value) > MAX_VERSION_STRING
            or not _VERSION.fullmatch(value)):
        raise _bad(f"{what} must be a version X.Y.Z or X.Y.Z-pre (SemVer)")
    pre = _VERSION.fullmatch(value).group(4)  # type: ignore[union-attr]
    if pre and any(p.isdigit() and len(p) > 1 and p[0] == "0" for p in pre.split(".")):
        raise _bad(f"{what} has a numeric pre-release part with a leading zero")
    return value


def version_key(version: str) -> tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]:
    """A sort key for a version string (SemVer 2 precedence: a pre-release sorts before its
    release; numeric identifiers numerically and before alphanumeric ones). Raises
    ``bad_manifest`` for a string :func:`check_version_string` refuses."""
    check_version_string(version, "a version")
    m = _VERSION.fullmatch(version)
    assert m is not None
    pre = m.group(4)
    ids = tuple((0, int(p), "") if p.isdigit() else (1, 0, p)
                for p in (pre.split(".") if pre else ()))
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), 0 if pre else 1, ids


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as ``a`` is below, equal to or above ``b`` (see :func:`version_key`)."""
    ka, kb = version_key(a), version_key(b)
    return (ka > kb) - (ka < kb)


def parse_manifest(raw: bytes) -> Manifest:
    """The manifest in ``raw`` (JSON, at most :data:`MAX_MANIFEST_BYTES`), every rule checked;
    unknown keys are refused (a new field comes with a new ``format``). Raises
    :class:`BundleError` ``bad_manifest``. Does not require canonical bytes: see
    :func:`read_bundle`, which does."""
    obj = _load_json(raw, "the manifest", MAX_MANIFEST_BYTES)
    if not isinstance(obj, dict):
        raise _bad("the manifest is a JSON object")
    if set(obj) != _MANIFEST_KEYS:
        missing, extra = sorted(_MANIFEST_KEYS - set(obj)), sorted(set(obj) - _MANIFEST_KEYS)
        raise _bad(f"the manifest's keys are wrong (missing {missing}, unknown {extra})")
    if obj["format"] != FORMAT or type(obj["format"]) is not int:
        raise _bad(f"format must be {FORMAT}")
    if obj["kind"] not in KINDS:
        raise _bad(f"kind must be one of {list(KINDS)}")
    return _checked(Manifest(
        name=_str(obj["name"], "name", _NAME), kind=obj["kind"],
        version=_int(obj["version"], "version", 1, MAX_VERSION),
        sha256=_str(obj["sha256"], "sha256", _SHA256),
        size=_int(obj["size"], "size", 1, MAX_PAYLOAD_BYTES), files=_files(obj["files"]),
        min_runner_version=check_version_string(obj["min_runner_version"]),
        policy=parse_policy(obj["policy"]), created_at=_time(obj["created_at"], "created_at"),
        expires_at=_time(obj["expires_at"], "expires_at")))


def _checked(manifest: Manifest) -> Manifest:
    if manifest.expires_at <= manifest.created_at:
        raise _bad("expires_at must be after created_at")
    return manifest


def manifest_dict(manifest: Manifest) -> dict[str, Any]:
    """The manifest as the JSON object the wire carries."""
    return {
        "format": manifest.format, "name": manifest.name, "kind": manifest.kind,
        "version": manifest.version, "sha256": manifest.sha256, "size": manifest.size,
        "files": {p: {"sha256": f.sha256, "size": f.size, "mode": f.mode}
                  for p, f in manifest.files.items()},
        "min_runner_version": manifest.min_runner_version,
        "policy": {"kinds": list(manifest.policy.kinds),
                   "executables": list(manifest.policy.executables),
                   "limits": dict(manifest.policy.limits)},
        "created_at": format_time(manifest.created_at),
        "expires_at": format_time(manifest.expires_at),
    }


def canonical(manifest: Manifest) -> bytes:
    """The one encoding of ``manifest`` (what ``manifest.json`` holds and keys sign)."""
    return json.dumps(manifest_dict(manifest), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


def make_manifest(**fields: Any) -> Manifest:
    """A manifest from keyword fields (as :class:`Manifest`'s, times as aware datetimes),
    put through :func:`parse_manifest` so that a publisher cannot build one a node refuses."""
    draft = Manifest(**fields)
    return parse_manifest(canonical(draft))


def signed_message(manifest: Manifest | bytes) -> bytes:
    """What each publisher key signs: ``SIGNATURE_CONTEXT + canonical(manifest)`` (given
    bytes, they are taken as the canonical form already)."""
    body = manifest if isinstance(manifest, bytes) else canonical(manifest)
    return SIGNATURE_CONTEXT + body


# --- signatures -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Signature:
    key_id: str
    sig: bytes


def key_id(public_key_raw: bytes) -> str:
    """The id of a raw 32-byte Ed25519 public key: its sha256, first 16 hex characters."""
    return hashlib.sha256(public_key_raw).hexdigest()[:KEY_ID_CHARS]


def parse_signatures(raw: bytes) -> tuple[Signature, ...]:
    """``signatures.json``: a list of 1..:data:`MAX_SIGNATURES` objects ``{key_id, sig}``
    (sig: standard base64 of 64 bytes), each key id once. Raises ``bad_manifest``."""
    obj = _load_json(raw, "signatures.json", MAX_SIGNATURES_BYTES)
    if not isinstance(obj, list) or not 0 < len(obj) <= MAX_SIGNATURES:
        raise _bad(f"signatures.json is a list of 1..{MAX_SIGNATURES} signatures")
    out: list[Signature] = []
    for item in obj:
        if not isinstance(item, dict) or set(item) != {"key_id", "sig"}:
            raise _bad("a signature is exactly {key_id, sig}")
        kid = _str(item["key_id"], "key_id", _KEY_ID)
        try:
            sig = base64.b64decode(item["sig"], validate=True) if isinstance(
                item["sig"], str) else b""
        except (binascii.Error, ValueError):
            sig = b""
        if len(sig) != 64:
            raise _bad("sig must be the standard base64 of a 64-byte Ed25519 signature")
        out.append(Signature(kid, sig))
    if len({s.key_id for s in out}) != len(out):
        raise _bad("each key_id signs once")
    return tuple(out)


def signatures_json(signatures: Iterable[Signature]) -> bytes:
    """``signatures.json`` for ``signatures`` (sorted by key id: the file is deterministic)."""
    return json.dumps([{"key_id": s.key_id, "sig": base64.b64encode(s.sig).decode()}
                       for s in sorted(signatures, key=lambda s: s.key_id)],
                      separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The verdict of :func:`verify_signatures`. ``code`` is None when ``ok``; ``valid``
    are trusted key ids whose signature verified, ``invalid`` trusted ones whose signature
    did not, ``unknown`` key ids the node does not trust (never verified)."""

    ok: bool
    code: str | None
    message: str
    threshold: int
    valid: tuple[str, ...]
    invalid: tuple[str, ...]
    unknown: tuple[str, ...]


def verify_signatures(manifest_bytes: bytes, signatures: Iterable[Signature],
                      trusted_keys: Iterable[bytes], threshold: int = 1) -> VerifyResult:
    """Rule 2 over ``manifest_bytes`` (the canonical manifest as read). ``trusted_keys`` are
    raw 32-byte public keys; ``threshold`` >= 1 (ValueError otherwise, a caller's bug).
    Code when not ok: ``bad_signature`` when a trusted key's signature failed, else
    ``threshold_not_met`` when some trusted key signed, else ``untrusted_key``. Never raises
    for hostile signatures."""
    if type(threshold) is not int or threshold < 1:
        raise ValueError(f"the threshold is an integer >= 1, got {threshold!r}")
    trusted = {key_id(k): k for k in trusted_keys}
    message = signed_message(bytes(manifest_bytes))
    valid: list[str] = []
    invalid: list[str] = []
    unknown: list[str] = []
    for s in signatures:
        if s.key_id in valid or s.key_id in invalid:
            continue  # a key counts once (Rule 2)
        if s.key_id not in trusted:
            unknown.append(s.key_id)
        elif verify_strict(trusted[s.key_id], s.sig, message):
            valid.append(s.key_id)
        else:
            invalid.append(s.key_id)
    ok = len(valid) >= threshold
    code = (None if ok else "bad_signature" if invalid else "threshold_not_met" if valid
            else "untrusted_key")
    text = (f"{len(valid)} of the required {threshold} trusted signatures verified"
            + (f"; bad signatures by {', '.join(invalid)}" if invalid else "")
            + (f"; untrusted keys {', '.join(unknown)}" if unknown else ""))
    return VerifyResult(ok, code, text, threshold, tuple(valid), tuple(invalid),
                        tuple(unknown))


# --- the bundle file ------------------------------------------------------------------------


class BundleParts(NamedTuple):
    """What :func:`read_bundle` finds: the canonical manifest bytes, the signatures, where
    app.tar.gz's bytes lie in the file, and the manifest parsed."""

    manifest_bytes: bytes
    signatures: tuple[Signature, ...]
    payload_offset: int
    payload_size: int
    manifest: Manifest


def _layout(message: str) -> BundleError:
    return BundleError("bad_layout", message)


def read_bundle(source: bytes | IO[bytes]) -> BundleParts:
    """Read a bundle file's layout from bytes or a seekable binary file object (only the two
    small members are read; app.tar.gz is located, not read). Checks: exactly
    :data:`MEMBERS` in order, regular files, no extended headers (``bad_layout``); the
    manifest canonical and valid and the signatures well formed (``bad_manifest``); the
    payload's size as the manifest says (``size_mismatch``). Signatures are *not* verified
    here: call :func:`verify_signatures`."""
    fileobj = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    found: list[tarfile.TarInfo] = []
    manifest_bytes = signatures_bytes = b""
    try:
        with tarfile.open(fileobj=fileobj, mode="r:") as tar:
            while (info := tar.next()) is not None:
                if len(found) == len(MEMBERS):
                    raise _layout(f"a bundle has only {', '.join(MEMBERS)}; found "
                                  f"{info.name!r} too")
                expected = MEMBERS[len(found)]
                if info.name != expected:
                    raise _layout(f"member {len(found) + 1} must be {expected}, "
                                  f"got {info.name!r}")
                if not info.isreg() or info.pax_headers:
                    raise _layout(f"{info.name} must be a plain regular file")
                limit = (MAX_MANIFEST_BYTES, MAX_SIGNATURES_BYTES, MAX_PAYLOAD_BYTES)
                if info.size > limit[len(found)]:
                    raise _layout(f"{info.name} is over {limit[len(found)]} bytes")
                found.append(info)
                if len(found) == 1:
                    manifest_bytes = _member(tar, info)
                elif len(found) == 2:
                    signatures_bytes = _member(tar, info)
    except BundleError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError, UnicodeError) as exc:
        raise _layout(f"not a readable tar file ({type(exc).__name__})") from None
    if len(found) != len(MEMBERS):
        raise _layout(f"a bundle holds {', '.join(MEMBERS)}; found "
                      f"{[i.name for i in found]}")
    manifest = parse_manifest(manifest_bytes)
    if canonical(manifest) != manifest_bytes:
        raise _bad("manifest.json is not in canonical form (sorted keys, no spaces, UTF-8)")
    signatures = parse_signatures(signatures_bytes)
    payload = found[2]
    if payload.size != manifest.size:
        raise BundleError("size_mismatch", f"app.tar.gz is {payload.size} bytes, the "
                                           f"manifest says {manifest.size}")
    return BundleParts(manifest_bytes, signatures, payload.offset_data, payload.size, manifest)


def _member(tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(info)
    if f is None:
        raise _layout(f"{info.name} has no data")
    data = f.read(info.size + 1)
    if len(data) != info.size:
        raise _layout(f"{info.name} is cut short")
    return data


class _Window(io.RawIOBase):
    """``size`` bytes of ``base`` from ``offset``: app.tar.gz inside the bundle file."""

    def __init__(self, base: IO[bytes], offset: int, size: int) -> None:
        super().__init__()
        self._base, self._offset, self._left = base, offset, size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self._left)
        if want <= 0:
            return 0
        self._base.seek(self._offset)
        data = self._base.read(want)
        buffer[:len(data)] = data
        self._offset += len(data)
        self._left -= len(data)
        return len(data)


def open_payload(source: bytes | IO[bytes], parts: BundleParts) -> IO[bytes]:
    """A binary reader of app.tar.gz's bytes inside the bundle ``source`` that
    :func:`read_bundle` read into ``parts`` (it seeks ``source`` at every read)."""
    base = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    return io.BufferedReader(_Window(base, parts.payload_offset, parts.payload_size), _CHUNK)


def check_payload(size: int, sha256_hex: str, manifest: Manifest) -> None:
    """Rule 3, outside: app.tar.gz of ``size`` bytes hashing to ``sha256_hex`` is the one
    the manifest signs. Raises ``size_mismatch`` or ``sha256_mismatch``."""
    if size != manifest.size:
        raise BundleError("size_mismatch", f"app.tar.gz is {size} bytes, the manifest "
                                           f"says {manifest.size}")
    if sha256_hex != manifest.sha256:
        raise BundleError("sha256_mismatch", f"app.tar.gz has sha256 {sha256_hex[:16]}..., "
                                             f"the manifest says {manifest.sha256[:16]}...")


def verify_payload(payload: IO[bytes], manifest: Manifest, *,
                   sink: Callable[[str, FileEntry, bytes], None] | None = None) -> None:
    """Rule 3, inside: stream app.tar.gz from ``payload`` (already checked with
    :func:`check_payload`) and check every member against ``manifest``. Only regular files
    and directories under :func:`check_path` names, each once; each file listed with the
    same size (checked from the header, before any byte is read, so a huge member declared
    costs nothing) and sha256; every listed file present. ``sink(path, entry, chunk)``, when
    given, receives each file's bytes in order (an empty chunk opens a file) so that the
    node can extract while checking; it must discard everything when this raises. A
    file's mode is the manifest's, whatever its header says. Call it only after the
    signatures and :func:`check_payload` hold: tar extended headers are read into memory.
    Raises ``bad_layout``, ``size_mismatch`` or ``sha256_mismatch``."""
    seen: set[str] = set()
    dirs = 0
    try:
        with tarfile.open(fileobj=payload, mode="r|gz") as tar:
            for info in tar:
                name = info.name[:-1] if info.isdir() and info.name.endswith("/") else info.name
                try:
                    check_path(name)
                except BundleError as exc:
                    raise _layout(f"app.tar.gz: {exc.message}") from None
                if name in seen:
                    raise _layout(f"app.tar.gz holds {name!r} twice")
                seen.add(name)
                if info.isdir():
                    dirs += 1
                    if dirs > MAX_DIRS or name in manifest.files:
                        raise _layout(f"app.tar.gz: unexpected directory {name!r}")
                    continue
                if not info.isreg():
                    raise _layout(f"app.tar.gz: {name!r} is not a regular file or "
                                  "directory (links and devices are refused)")
                entry = manifest.files.get(name)
                if entry is None:
                    raise _layout(f"app.tar.gz holds {name!r}, which the manifest omits")
                if info.size != entry.size:
                    raise BundleError("size_mismatch", f"{name!r} is {info.size} bytes, "
                                                       f"the manifest says {entry.size}")
                _hash_member(tar, info, name, entry, sink)
    except BundleError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError, UnicodeError, zlib.error) as exc:
        raise _layout(f"app.tar.gz is not a readable tar.gz ({type(exc).__name__})") from None
    missing = sorted(set(manifest.files) - seen)
    if missing:
        raise _layout(f"app.tar.gz lacks {len(missing)} listed files, e.g. {missing[0]!r}")


def _hash_member(tar: tarfile.TarFile, info: tarfile.TarInfo, name: str, entry: FileEntry,
                 sink: Callable[[str, FileEntry, bytes], None] | None) -> None:
    f = tar.extractfile(info)
    if f is None:
        raise _layout(f"app.tar.gz: {name!r} has no data")
    digest, total = hashlib.sha256(), 0
    if sink is not None:
        sink(name, entry, b"")
    while chunk := f.read(_CHUNK):
        total += len(chunk)
        if total > entry.size:
            raise BundleError("size_mismatch", f"{name!r} is longer than {entry.size} bytes")
        digest.update(chunk)
        if sink is not None:
            sink(name, entry, chunk)
    if total != entry.size:
        raise BundleError("size_mismatch", f"{name!r} is cut short")
    if digest.hexdigest() != entry.sha256:
        raise BundleError("sha256_mismatch", f"{name!r} does not have the manifest's sha256")


# --- activation -----------------------------------------------------------------------------


DEFAULT_CLOCK_SKEW = timedelta(hours=1)


def check_activation(manifest: Manifest, now: datetime, runner_version: str,
                     highest_version_activated: int | None, allow_rollback: bool, *,
                     expected_kind: str | None = None,
                     max_clock_skew: timedelta = DEFAULT_CLOCK_SKEW) -> str | None:
    """The first reason a node must refuse to activate a verified ``manifest``, as a code of
    :data:`REJECT_CODES`, or None. In order: ``wrong_kind``; ``bundle_expired`` (``now >=
    expires_at``); ``bundle_not_yet_valid`` (``created_at`` more than ``max_clock_skew``
    ahead of ``now``: a clock wrong by less is tolerated); ``runner_too_old``
    (``min_runner_version`` above ``runner_version``); ``downgrade`` (``version`` below
    ``highest_version_activated`` of that name, unless ``allow_rollback``; the same version
    again is not a downgrade). ``now`` is aware."""
    if expected_kind is not None and manifest.kind != expected_kind:
        return "wrong_kind"
    if now >= manifest.expires_at:
        return "bundle_expired"
    if manifest.created_at - now > max_clock_skew:
        return "bundle_not_yet_valid"
    if compare_versions(manifest.min_runner_version, runner_version) > 0:
        return "runner_too_old"
    if (highest_version_activated is not None and manifest.version < highest_version_activated
            and not allow_rollback):
        return "downgrade"
    return None


# --- a node's trusted publishers --------------------------------------------------------------

TRUSTED_PUBLISHERS_FILE = "trusted-publishers.json"
MAX_TRUSTED_KEYS = 64
MAX_TRUSTED_BYTES = 64 << 10


@dataclass(frozen=True, slots=True)
class TrustedPublishers:
    """The publisher keys a node trusts (raw 32-byte Ed25519 keys, each once, in the order
    added) and the threshold k: at least k of them must sign a bundle. The node's
    ``<state-dir>/trusted-publishers.json`` holds it (:func:`trusted_publishers_json`)."""

    keys: tuple[bytes, ...] = ()
    threshold: int = 1

    def __post_init__(self) -> None:
        if type(self.threshold) is not int or not 1 <= self.threshold <= MAX_TRUSTED_KEYS:
            raise _bad(f"the threshold is an integer in 1..{MAX_TRUSTED_KEYS}")
        if len(self.keys) > MAX_TRUSTED_KEYS:
            raise _bad(f"a node trusts at most {MAX_TRUSTED_KEYS} publisher keys")
        for raw in self.keys:
            check_ed25519_public_key(raw)  # Rules 1-3 of .keys, before any verification
        if len({key_id(k) for k in self.keys}) != len(self.keys):
            raise _bad("each publisher key is trusted once")


def parse_trusted_publishers(raw: bytes) -> TrustedPublishers:
    """``trusted-publishers.json``: ``{"threshold": k, "keys": [{"key_id", "public_key"}]}``
    with ``public_key`` the standard base64 of the raw 32-byte key and ``key_id`` its id
    (checked). Raises ``bad_manifest`` naming the rule broken."""
    obj = _load_json(raw, TRUSTED_PUBLISHERS_FILE, MAX_TRUSTED_BYTES)
    if not isinstance(obj, dict) or set(obj) != {"threshold", "keys"}:
        raise _bad(f"{TRUSTED_PUBLISHERS_FILE} is exactly {{threshold, keys}}")
    items = obj["keys"]
    if not isinstance(items, list):
        raise _bad("keys is a list")
    keys: list[bytes] = []
    for item in items:
        if not isinstance(item, dict) or set(item) != {"key_id", "public_key"}:
            raise _bad("a trusted key is exactly {key_id, public_key}")
        try:
            key = base64.b64decode(item["public_key"], validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise _bad("public_key is the standard base64 of 32 raw bytes") from None
        try:
            check_ed25519_public_key(key)
        except BadFrame as exc:
            raise _bad(exc.message) from None
        if item["key_id"] != key_id(key):
            raise _bad(f"key_id {item['key_id']!r} is not the id of its public_key")
        keys.append(key)
    try:
        return TrustedPublishers(tuple(keys), obj["threshold"])
    except BadFrame as exc:
        raise _bad(exc.message) from None


def trusted_publishers_json(trusted: TrustedPublishers) -> bytes:
    """The file :func:`parse_trusted_publishers` reads (indented: operators read it)."""
    return json.dumps({"threshold": trusted.threshold,
                       "keys": [{"key_id": key_id(k),
                                 "public_key": base64.b64encode(k).decode()}
                                for k in trusted.keys]}, indent=2).encode() + b"\n"


def policy_mismatch(policy: Policy, *, kind_allowed: Callable[[str], bool],
                    executable_allowed: Callable[[str], bool]) -> str | None:
    """Why the node's own policy cannot run what ``policy`` (a manifest's) needs, or None:
    the first kind or executable the node's predicates refuse. The node rejects the bundle
    with ``policy_mismatch`` and this text; how a relative executable (one inside the
    bundle) is judged is the node's predicate's business."""
    for kind in policy.kinds:
        if not kind_allowed(kind):
            return f"the bundle needs command kind {kind!r}, which this node's policy refuses"
    for executable in policy.executables:
        if not executable_allowed(executable):
            return (f"the bundle runs {executable!r}, which this node's policy does not "
                    "allow")
    return None
