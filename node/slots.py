"""Runtime slots on disk: where a runtime bundle is unpacked, which slot is active, and the
files the runtime and its supervisor exchange (docs/operations.md "Upgrading").

Layout under ``<state-dir>/runtime/``::

    active.json           the slot pointer (protocol/selfupdate.py SlotPointer); absent: base
    slots/a/, slots/b/    an unpacked runtime bundle each: ``tether/`` (the package) and
                          ``tether-app.toml``
    update-request.json   runtime -> supervisor: start this slot as a candidate
    update.json           the supervisor's record of the update in progress or last decided
    update.reported       the update id whose outcome the runtime has queued as bundle.status
    logs/<slot>.log       the output of each runtime the supervisor started from that slot
    supervisor.pid        the supervisor's pid (and its lock)

A runtime runs from slot ``s`` as ``python -P -m tether.cli.main node run ...`` with
``PYTHONPATH=<state-dir>/runtime/slots/s`` (the same interpreter and venv: a runtime bundle
carries Tether's own code, not its dependencies); ``base`` is the installed package.

Rule 1: every file here is written whole (a temporary file, fsync, rename, fsync of the
directory), so a crash leaves the old file or the new one. Rule 2: a slot is unpacked into a
temporary directory while every member is checked against the signed manifest
(protocol/bundle.py ``verify_payload``), then renamed into place; the active slot is never
written. Rule 3: what is read back is parsed by protocol/selfupdate.py; an unreadable
pointer reads as ``base`` (the installed package always runs).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO

from tether.protocol.bundle import (
    APP_TOML,
    BundleError,
    FileEntry,
    Manifest,
    open_payload,
    read_bundle,
    verify_payload,
)
from tether.protocol.errors import BadFrame
from tether.protocol.selfupdate import (
    SlotPointer,
    UpdateRecord,
    UpdateRequest,
    dumps,
    parse_pointer,
    parse_update_record,
    parse_update_request,
)

logger = logging.getLogger(__name__)

# What a runtime bundle must hold: the package's entry point and the modules a runtime and
# its version come from. Anything else of the package is up to the bundle.
REQUIRED_FILES = ("tether/__init__.py", "tether/cli/main.py", "tether/common/__init__.py",
                  "tether/node/runtime.py", APP_TOML)
_VERSION = re.compile(rb'^__version__\s*=\s*"([^"\n]{1,64})"\s*$', re.M)


class SlotError(Exception):
    """A runtime bundle that cannot become a slot; ``code`` is a bundle.status code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def runtime_dir(state_dir: Path) -> Path:
    return state_dir / "runtime"


def slot_path(state_dir: Path, slot: str) -> Path | None:
    """The directory of ``slot``; None for ``base`` (the installed package)."""
    return None if slot == "base" else runtime_dir(state_dir) / "slots" / slot


def backup_path(state_dir: Path, slot: str) -> str:
    """Where the code of ``slot`` lives, for the recovery metadata."""
    path = slot_path(state_dir, slot)
    if path is not None:
        return str(path)
    import tether.node

    return str(Path(tether.node.__file__).resolve().parent.parent)


def inactive_slot(pointer: SlotPointer) -> str:
    """Where the next bundle goes: the update slot the active one is not."""
    return "b" if pointer.slot == "a" else "a"


def write_atomic(path: Path, data: bytes) -> None:
    """Rule 1."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --- the pointer, the request, the record ---------------------------------------------------


def read_pointer(state_dir: Path) -> SlotPointer:
    path = runtime_dir(state_dir) / "active.json"
    try:
        pointer = parse_pointer(path.read_bytes())
    except FileNotFoundError:
        return SlotPointer()
    except (OSError, BadFrame) as exc:
        logger.error("unreadable slot pointer; starting the installed package",
                     extra={"detail": str(exc)})
        return SlotPointer()
    slot = slot_path(state_dir, pointer.slot)
    if slot is not None and not (slot / "tether" / "cli" / "main.py").is_file():
        logger.error("the active slot is missing; starting the installed package",
                     extra={"slot": pointer.slot})
        return SlotPointer()
    return pointer


def write_pointer(state_dir: Path, pointer: SlotPointer) -> None:
    """The commit point of an update (protocol/selfupdate.py Rule 1)."""
    write_atomic(runtime_dir(state_dir) / "active.json", dumps(pointer.to_map()))


def request_path(state_dir: Path) -> Path:
    return runtime_dir(state_dir) / "update-request.json"


def write_request(state_dir: Path, request: UpdateRequest) -> None:
    write_atomic(request_path(state_dir), dumps(request.to_map()))


def read_request(state_dir: Path) -> UpdateRequest | None:
    """The pending request, or None (none, or unreadable: then it is removed and logged)."""
    path = request_path(state_dir)
    try:
        return parse_update_request(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, BadFrame) as exc:
        logger.error("refused an unreadable update request", extra={"detail": str(exc)})
        path.unlink(missing_ok=True)
        return None


def record_path(state_dir: Path) -> Path:
    return runtime_dir(state_dir) / "update.json"


def write_record(state_dir: Path, record: UpdateRecord) -> None:
    write_atomic(record_path(state_dir), dumps(record.to_map()))


def read_record(state_dir: Path) -> UpdateRecord | None:
    try:
        return parse_update_record(record_path(state_dir).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, BadFrame) as exc:
        logger.error("unreadable update record; ignored", extra={"detail": str(exc)})
        return None


def reported_path(state_dir: Path) -> Path:
    return runtime_dir(state_dir) / "update.reported"


def log_path(state_dir: Path, slot: str) -> Path:
    return runtime_dir(state_dir) / "logs" / f"{slot}.log"


def log_tail(path: Path, lines: int = 20, max_bytes: int = 16 << 10) -> tuple[str, ...]:
    """The last ``lines`` lines of ``path`` (reading at most its last ``max_bytes``)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ()
    text = data.decode("utf-8", "replace")
    return tuple(line[:300] for line in text.splitlines()[-lines:] if line.strip())


# --- installing a bundle into a slot ----------------------------------------------------------


def slot_version(root: Path) -> str | None:
    """The ``__version__`` of the package under ``root`` (read, never imported)."""
    try:
        match = _VERSION.search((root / "tether" / "common" / "__init__.py").read_bytes())
    except OSError:
        return None
    return match.group(1).decode("utf-8", "replace") if match else None


def install_into_slot(state_dir: Path, bundle_file: Path, manifest: Manifest,
                      slot: str) -> str | None:
    """Unpack the runtime bundle at ``bundle_file`` (checked already, whose manifest is
    ``manifest``) into ``slot``, replacing what it held (Rule 2); returns the runtime version
    it holds. Raises SlotError(``activation_failed``) for a bundle that is not a runtime
    (its required files), one whose payload does not match its manifest, or a disk error."""
    missing = [name for name in REQUIRED_FILES if name not in manifest.files]
    if manifest.kind != "runtime" or missing:
        raise SlotError("activation_failed", "not a runtime bundle: it lacks "
                        f"{', '.join(missing) or 'kind runtime'}")
    target = slot_path(state_dir, slot)
    assert target is not None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{slot}.", dir=target.parent))
    try:
        with bundle_file.open("rb") as f:
            parts = read_bundle(f)
            if parts.manifest != manifest:
                raise SlotError("activation_failed", "the bundle file is not the one checked")
            _extract(open_payload(f, parts), manifest, tmp)
        version = slot_version(tmp)
        old = target.with_name(f".{slot}.old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        _fsync_dir(target.parent)
        shutil.rmtree(old, ignore_errors=True)
        return version
    except BundleError as exc:
        raise SlotError("activation_failed", f"{exc.code}: {exc.message}") from None
    except OSError as exc:
        raise SlotError("activation_failed", f"cannot unpack into slot {slot}: {exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _extract(payload: IO[bytes], manifest: Manifest, root: Path) -> None:
    """Every member written under ``root`` as ``verify_payload`` checks it (its paths are
    checked there: relative, no ``..``), with the manifest's mode."""
    current: list[IO[bytes]] = []

    def sink(name: str, entry: FileEntry, chunk: bytes) -> None:
        if not chunk:  # a new file opens
            for f in current:
                f.close()
            current.clear()
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                         entry.mode & 0o777)
            current.append(os.fdopen(fd, "wb"))
            return
        current[0].write(chunk)

    try:
        verify_payload(payload, manifest, sink=sink)
    finally:
        for f in current:
            f.close()
