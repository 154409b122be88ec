"""``tether bundle keygen|build|sign|verify`` and ``tether node trust`` (issue 15;
docs/operations.md "Bundles"). The rules live in ``protocol/bundle.py``; this module owns
the files: keys, the app directory, the bundle file and the node's trusted publishers.

Rule 1: a private key is created with mode 0600 and never overwritten; ``KEY.pub`` beside it.
Rule 2: ``build`` is deterministic: the same directory, name, version, times and key give the
same bytes (sorted members, mtime 0, uid/gid 0, no user names, gzip without a name or time);
only the signature's key and the times vary.
Rule 3: a bundle file and ``trusted-publishers.json`` are written to a temporary file beside
the target, fsynced and renamed: a reader sees the old file or the new one, never half.
Rule 4: ``verify`` exits 0 only when the layout, the size, the sha256, every file's hash,
tether-app.toml and k trusted signatures hold and the bundle has not expired; else 1, with
one line naming the reason's code (the one a node reports in ``bundle.status rejected``).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from tether.common import __version__
from tether.protocol.appspec import AppSpec, parse_app_toml
from tether.protocol.bundle import (
    APP_TOML,
    KINDS,
    MAX_FILES,
    MEMBERS,
    TRUSTED_PUBLISHERS_FILE,
    BundleError,
    BundleParts,
    FileEntry,
    Manifest,
    Policy,
    Signature,
    TrustedPublishers,
    canonical,
    check_activation,
    check_payload,
    format_time,
    key_id,
    make_manifest,
    open_payload,
    parse_trusted_publishers,
    read_bundle,
    signatures_json,
    signed_message,
    trusted_publishers_json,
    verify_payload,
    verify_signatures,
)
from tether.protocol.errors import BadFrame
from tether.protocol.keys import check_ed25519_public_key

from .client import CliError
from .errors import print_error

_CHUNK = 1 << 16
DEFAULT_EXPIRES_IN_DAYS = 365.0
_JSON = "print JSON instead of text (errors too, on stderr)"


# --- keys -----------------------------------------------------------------------------------


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` (O_EXCL: never overwrite), whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def keygen(out: Path) -> tuple[Path, str]:
    """Rule 1: a new publisher key at ``out`` (PKCS8 PEM, 0600) and ``out.pub``
    (SubjectPublicKeyInfo PEM, 0644). Returns the public key's path and id."""
    pub = Path(f"{out}.pub")
    for path in (out, pub):
        if path.exists() or path.is_symlink():
            raise CliError(f"{path} exists; keygen never overwrites a key: choose another "
                           "--out or move it away")
    key = Ed25519PrivateKey.generate()
    _write_new(out, key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()), 0o600)
    _write_new(pub, key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), 0o644)
    return pub, key_id(_raw(key.public_key()))


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM (PKCS8) file; CliError naming the file otherwise."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise CliError(f"cannot read the key {path}: {exc.strerror}") from None
    except (ValueError, TypeError):
        raise CliError(f"{path} is not an unencrypted PEM private key (make one with "
                       "`tether bundle keygen --out KEY`)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CliError(f"{path} is not an Ed25519 key (make one with `tether bundle keygen`)")
    return key


def load_public_key(path: Path) -> bytes:
    """The raw 32-byte Ed25519 key of a SubjectPublicKeyInfo PEM file, through the strict
    checks of protocol/keys.py; CliError naming the file otherwise."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise CliError(f"cannot read the public key {path}: {exc.strerror}") from None
    except (ValueError, TypeError):
        raise CliError(f"{path} is not a PEM public key (use the KEY.pub that "
                       "`tether bundle keygen` wrote)") from None
    if not isinstance(key, Ed25519PublicKey):
        raise CliError(f"{path} is not an Ed25519 public key")
    try:
        return check_ed25519_public_key(_raw(key))
    except BadFrame as exc:
        raise CliError(f"{path}: {exc.message}") from None


# --- build ----------------------------------------------------------------------------------


def _app_files(root: Path) -> list[tuple[str, Path]]:
    """Every regular file under ``root`` as (relative POSIX path, path), sorted; a symlink,
    device or socket is refused (a bundle holds regular files only)."""
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            st = path.lstat()
            if stat.S_ISDIR(st.st_mode):
                continue
            if not stat.S_ISREG(st.st_mode):
                raise CliError(f"{path} is not a regular file (a symlink, device or socket); "
                               "a bundle holds regular files only: copy what it points to")
            found.append((path.relative_to(root).as_posix(), path))
            if len(found) > MAX_FILES:
                raise CliError(f"{root} holds more than {MAX_FILES} files")
    return sorted(found)


def _tarinfo(name: str, size: int, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, mode, 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _write_app_tar(files: list[tuple[str, Path]], out: IO[bytes]) -> dict[str, FileEntry]:
    """Rule 2: app.tar.gz of ``files`` into ``out``; returns each file's entry. A file's
    mode is 0755 when its owner may execute it, else 0644 (the umask of the publisher's
    machine must not change the bytes)."""
    entries: dict[str, FileEntry] = {}
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, path in files:
            with path.open("rb") as f:
                digest, size = hashlib.sha256(), 0
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                mode = 0o755 if os.fstat(f.fileno()).st_mode & stat.S_IXUSR else 0o644
                f.seek(0)
                tar.addfile(_tarinfo(name, size, mode), f)
            entries[name] = FileEntry(digest.hexdigest(), size, mode)
    return entries


def _policy_for(app: AppSpec) -> Policy:
    """The manifest's policy: tether-app.toml's ``[policy]`` plus the programs it runs
    (argv[0], and the health check's), each once, in that order."""
    execs = [app.argv[0]] + ([app.health.argv[0]] if app.health else [])
    execs += list(app.policy.executables)
    return Policy(app.policy.kinds, tuple(dict.fromkeys(execs)), app.policy.limits)


def _check_argv_paths(app: AppSpec, names: set[str]) -> None:
    for argv in (app.argv, app.health.argv if app.health else ()):
        prog = argv[0] if argv else ""
        if prog and "/" in prog and not prog.startswith("/") and prog.removeprefix(
                "./") not in names:
            raise CliError(f"tether-app.toml runs {prog!r}, which is not in the bundle "
                           "(relative paths resolve inside it)")


def build(root: Path, *, name: str, version: int, key: Ed25519PrivateKey, out: Path,
          min_runner_version: str = __version__, expires_in_days: float =
          DEFAULT_EXPIRES_IN_DAYS, kind: str = "app",
          now: datetime | None = None) -> Manifest:
    """Build, sign and write the bundle of ``root`` at ``out`` (Rules 2-3); returns its
    manifest. CliError for anything the node would refuse."""
    if not root.is_dir():
        raise CliError(f"{root} is not a directory")
    toml = root / APP_TOML
    if not toml.is_file():
        raise CliError(f"{toml} is missing: a bundle says how to run its app "
                       "(docs/operations.md \"Bundles\")")
    app = parse_app_toml(toml.read_bytes())
    files = _app_files(root)
    _check_argv_paths(app, {n for n, _ in files})
    created = (now or datetime.now(UTC)).replace(microsecond=0)
    if not 0 < expires_in_days <= 36500:
        raise CliError("--expires-in-days must be in (0, 36500]", 2)
    with tempfile.TemporaryFile() as payload:
        entries = _write_app_tar(files, payload)
        size = payload.tell()
        payload.seek(0)
        digest = hashlib.file_digest(payload, "sha256").hexdigest()
        manifest = make_manifest(
            name=name, kind=kind, version=version, sha256=digest, size=size, files=entries,
            min_runner_version=min_runner_version, policy=_policy_for(app),
            created_at=created, expires_at=created + timedelta(days=expires_in_days))
        signature = Signature(key_id(_raw(key.public_key())), key.sign(signed_message(manifest)))
        payload.seek(0)
        write_bundle(out, canonical(manifest), (signature,), payload, size)
    return manifest


def write_bundle(out: Path, manifest_bytes: bytes, signatures: tuple[Signature, ...],
                 payload: IO[bytes], payload_size: int) -> None:
    """Rule 3: the bundle file (:data:`MEMBERS` in order, USTAR, mtime 0) at ``out``."""
    sigs = signatures_json(signatures)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for name, data, size in ((MEMBERS[0], io.BytesIO(manifest_bytes),
                                          len(manifest_bytes)),
                                         (MEMBERS[1], io.BytesIO(sigs), len(sigs)),
                                         (MEMBERS[2], payload, payload_size)):
                    tar.addfile(_tarinfo(name, size, 0o644), data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add_signature(path: Path, key: Ed25519PrivateKey) -> tuple[Manifest, int]:
    """Co-sign the bundle at ``path`` (k-of-n): its signatures plus ``key``'s (replacing an
    earlier one by the same key); the manifest and app.tar.gz are untouched. Returns the
    manifest and how many signatures the bundle now carries."""
    with _open_bundle(path) as f:
        parts = read_bundle(f)
        new = Signature(key_id(_raw(key.public_key())),
                        key.sign(signed_message(parts.manifest_bytes)))
        signatures = (*(s for s in parts.signatures if s.key_id != new.key_id), new)
        write_bundle(path, parts.manifest_bytes, signatures, open_payload(f, parts),
                     parts.payload_size)
    return parts.manifest, len(signatures)


def _open_bundle(path: Path) -> IO[bytes]:
    try:
        return path.open("rb")
    except OSError as exc:
        raise CliError(f"cannot read the bundle {path}: {exc.strerror}") from None


# --- verify ---------------------------------------------------------------------------------


def verify(path: Path, trusted_keys: list[bytes], threshold: int,
           now: datetime | None = None) -> tuple[BundleParts, tuple[str, ...]]:
    """Rule 4, in the order a node checks: layout and manifest, signatures, size and
    sha256 of app.tar.gz, its members and their hashes, tether-app.toml, expiry. Returns
    the parts and the key ids that signed; raises BundleError with the first failure."""
    with _open_bundle(path) as f:
        parts = read_bundle(f)
        result = verify_signatures(parts.manifest_bytes, parts.signatures, trusted_keys,
                                   threshold)
        if not result.ok:
            raise BundleError(result.code or "bad_signature", result.message)
        digest, size = hashlib.sha256(), 0
        payload = open_payload(f, parts)
        while chunk := payload.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
        check_payload(size, digest.hexdigest(), parts.manifest)
        toml = bytearray()

        def keep_toml(name: str, entry: FileEntry, chunk: bytes) -> None:
            if name == APP_TOML:
                toml.extend(chunk)

        verify_payload(open_payload(f, parts), parts.manifest, sink=keep_toml)
    parse_app_toml(bytes(toml))
    expired = check_activation(parts.manifest, now or datetime.now(UTC), __version__,
                               None, False)
    if expired in ("bundle_expired", "bundle_not_yet_valid"):
        raise BundleError(expired, f"the manifest is valid from "
                                   f"{format_time(parts.manifest.created_at)} to "
                                   f"{format_time(parts.manifest.expires_at)}")
    return parts, result.valid


# --- node trust -----------------------------------------------------------------------------


def trust(state_dir: Path, public_key: bytes, threshold: int | None) -> tuple[bool, int, int]:
    """Add ``public_key`` to ``<state_dir>/trusted-publishers.json`` (created when absent;
    idempotent) and set the threshold when given. Returns (added, keys, threshold)."""
    path = state_dir / TRUSTED_PUBLISHERS_FILE
    try:
        current = parse_trusted_publishers(path.read_bytes())
    except FileNotFoundError:
        current = TrustedPublishers()
    except BundleError as exc:
        raise CliError(f"{path} is not a trusted-publishers file ({exc.message}); fix or "
                       "remove it") from None
    added = public_key not in current.keys
    keys = current.keys + ((public_key,) if added else ())
    k = current.threshold if threshold is None else threshold
    if not 1 <= k <= len(keys):
        raise CliError(f"--threshold must be between 1 and the {len(keys)} trusted keys", 2)
    new = TrustedPublishers(keys, k)
    if new != current:
        state_dir.mkdir(parents=True, exist_ok=True)
        _replace(path, trusted_publishers_json(new))
    return added, len(keys), k


def _replace(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- the commands ---------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def add_bundle_parser(nouns: Any) -> Any:
    """``tether bundle keygen|build|sign|verify``; returns the verbs' subparsers so that other
    verbs (publish, list) can join them."""
    verbs = nouns.add_parser("bundle", help="signed app bundles: keys, build, verify").\
        add_subparsers(dest="verb", required=True)
    kg = verbs.add_parser("keygen", help="a new publisher key: KEY (0600) and KEY.pub")
    kg.add_argument("--out", type=Path, required=True, metavar="KEY",
                    help="where to write the private key; the public key goes to KEY.pub")
    kg.add_argument("--json", action="store_true", help=_JSON)
    b = verbs.add_parser("build", help="build and sign a bundle from DIR (with its "
                                       "tether-app.toml)")
    b.add_argument("dir", type=Path, metavar="DIR",
                   help="the app: its files and tether-app.toml (symlinks are refused)")
    b.add_argument("--name", required=True, help="[a-z0-9][a-z0-9-]{0,62}")
    b.add_argument("--version", type=_positive_int, required=True,
                   help="an integer, higher than every earlier version of NAME")
    b.add_argument("--key", type=Path, required=True, help="the publisher's private key")
    b.add_argument("--out", type=Path, required=True, metavar="FILE",
                   help="the bundle file to write (replaced atomically)")
    b.add_argument("--min-runner-version", default=__version__,
                   help=f"the oldest node runtime that may run it (default {__version__})")
    b.add_argument("--expires-in-days", type=float, default=DEFAULT_EXPIRES_IN_DAYS,
                   help="nodes refuse it after this (default 365)")
    b.add_argument("--kind", choices=KINDS, default="app",
                   help="app (default), or runtime: the node runtime itself")
    b.add_argument("--json", action="store_true", help=_JSON)
    s = verbs.add_parser("sign", help="add a co-signature (a node may require k of n)")
    s.add_argument("file", type=Path, metavar="FILE", help="the bundle to co-sign, in place")
    s.add_argument("--key", type=Path, required=True, help="the co-signer's private key")
    s.add_argument("--json", action="store_true", help=_JSON)
    v = verbs.add_parser("verify", help="check a bundle as a node would",
                         epilog="exit status: 0 when the layout, size, sha256, every file's "
                                "hash and k trusted signatures hold and it has not expired; "
                                "1 otherwise, with the reason's code on stderr.")
    v.add_argument("file", type=Path, metavar="FILE", help="the bundle file")
    v.add_argument("--pubkey", type=Path, action="append", required=True,
                   help="a trusted publisher's KEY.pub (repeatable)")
    v.add_argument("--threshold", type=_positive_int, default=1,
                   help="how many distinct trusted keys must sign (default 1)")
    v.add_argument("--json", action="store_true", help=_JSON)
    return verbs


def add_trust_parser(node_verbs: Any, default_state_dir: Path) -> None:
    """``tether node trust KEY.pub [--state-dir] [--threshold K]``."""
    t = node_verbs.add_parser("trust", help="trust a bundle publisher's key on this node")
    t.add_argument("pubkey", type=Path, metavar="KEY.pub",
                   help="the publisher's public key (from tether bundle keygen)")
    t.add_argument("--state-dir", type=Path, default=default_state_dir,
                   help="the node's state dir (env TETHER_STATE_DIR; default .tether/node); "
                        "the keys go to its trusted-publishers.json")
    t.add_argument("--threshold", type=_positive_int,
                   help="how many trusted keys must sign a bundle (default: unchanged, 1 "
                        "at first)")
    t.add_argument("--json", action="store_true", help=_JSON)


def _emit(args: argparse.Namespace, text: str, obj: dict[str, Any]) -> int:
    print(json.dumps(obj) if args.json else text)
    return 0


def _summary(m: Manifest) -> dict[str, Any]:
    return {"name": m.name, "version": m.version, "kind": m.kind, "sha256": m.sha256,
            "size": m.size, "files": len(m.files), "expires_at": format_time(m.expires_at)}


def bundle_command(args: argparse.Namespace) -> int:
    """Run ``tether bundle <verb>``; BundleError is reported with its own code (exit 1)."""
    handler: dict[str, Callable[[argparse.Namespace], int]] = {
        "keygen": _keygen_cmd, "build": _build_cmd, "sign": _sign_cmd, "verify": _verify_cmd}
    try:
        return handler[args.verb](args)
    except BundleError as exc:
        text = exc.message if args.json else f"{exc.code}: {exc.message}"
        return print_error(args, exc.code, text, 1)


def _keygen_cmd(args: argparse.Namespace) -> int:
    pub, kid = keygen(args.out)
    return _emit(args, f"wrote {args.out} (private, 0600) and {pub} (key id {kid}); give "
                       f"{pub} to the nodes: tether node trust {pub}",
                 {"key": str(args.out), "pubkey": str(pub), "key_id": kid})


def _build_cmd(args: argparse.Namespace) -> int:
    m = build(args.dir, name=args.name, version=args.version, key=load_private_key(args.key),
              out=args.out, min_runner_version=args.min_runner_version,
              expires_in_days=args.expires_in_days, kind=args.kind)
    return _emit(args, f"built {args.out}: {m.name} v{m.version} ({m.kind}), {len(m.files)} "
                       f"files, {m.size} bytes, sha256 {m.sha256[:16]}..., expires "
                       f"{format_time(m.expires_at)}", {"file": str(args.out), **_summary(m)})


def _sign_cmd(args: argparse.Namespace) -> int:
    m, count = add_signature(args.file, load_private_key(args.key))
    return _emit(args, f"signed {args.file} ({m.name} v{m.version}): {count} signatures",
                 {"file": str(args.file), "signatures": count, **_summary(m)})


def _verify_cmd(args: argparse.Namespace) -> int:
    keys = [load_public_key(p) for p in args.pubkey]
    parts, signers = verify(args.file, keys, args.threshold)
    m = parts.manifest
    return _emit(args, f"ok: {m.name} v{m.version} ({m.kind}), {len(m.files)} files, "
                       f"{m.size} bytes, signed by {', '.join(signers)} ({len(signers)} of "
                       f"{args.threshold} required)",
                 {"ok": True, "signed_by": list(signers), "threshold": args.threshold,
                  **_summary(m)})


def trust_command(args: argparse.Namespace) -> int:
    """Run ``tether node trust``."""
    key = load_public_key(args.pubkey)
    added, count, k = trust(args.state_dir, key, args.threshold)
    kid = key_id(key)
    path = args.state_dir / TRUSTED_PUBLISHERS_FILE
    return _emit(args, f"{'trusted' if added else 'already trusted'} {kid} in {path} "
                       f"({count} keys, {k} must sign)",
                 {"key_id": kid, "added": added, "keys": count, "threshold": k,
                  "file": str(path)})
