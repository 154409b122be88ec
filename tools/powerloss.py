"""Simulated power loss for the stdlib ``sqlite3`` stores: a VFS shim that can drop every
write not yet fsynced (issue 16).

How (decision and limits are in docs/reliability.md, "Power loss"):

* CPython's ``_sqlite3`` links the system ``libsqlite3.so.0`` dynamically, so a VFS
  registered through ctypes in *that* library, in the same process, is seen by every
  ``sqlite3.connect`` there. :func:`install` registers ``tether-powerloss``, a shim over the
  default ``unix`` VFS, as the process's default VFS: the project's stores
  (``common/sqlitedb.py``) go through it without a line of theirs changing.
* The shim passes every call through and keeps, per database file, an **undo log** beside it
  (``<file>-plundo``): before a write or a shrinking truncate changes bytes, it appends their
  old content; after a successful ``xSync`` of that file, it empties the log and records the
  file's size (the last state that reached the disk). The log is written with plain
  ``os.write`` before the data write, so it survives a ``kill -9`` of the writer (the page
  cache of this host is not what is being simulated).
* In another process: :func:`child_env` gives it an environment whose ``PYTHONPATH`` starts
  with a directory holding a ``sitecustomize`` that calls :func:`install` at interpreter
  start, so every Python process started with it (``tether node run``, the runtime it
  supervises, anything they spawn with the inherited environment) runs its stores through
  the shim with no change to their code.
* :func:`power_loss` is then run, with the writer dead, on the directory: it plays each undo
  log backwards and cuts the file to its synced size, leaving exactly what had been fsynced
  (``-shm`` files, which are rebuilt from the WAL on the next open, are removed). That is
  SQLite's own crash-test model (``test6.c``) and RocksDB's ``FaultInjectionTestFS``: the
  worst case, every unsynced write lost, none torn.

Limits: directory entries are treated as durable at once (a created or deleted file is not
undone; SQLite fsyncs the directory itself where it matters); writes are dropped whole, never
torn or reordered within a sync interval; memory-mapped I/O is off under the shim (it
reports io_methods version 2, so SQLite never asks for ``xFetch``); each call crosses into
Python (a few microseconds), fine for a power-loss test, too slow for a benchmark. It needs
a Python whose ``sqlite3`` is dynamically linked (:func:`install` checks and says so).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sqlite3
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

VFS_NAME = b"tether-powerloss"
UNDO_SUFFIX = "-plundo"

SQLITE_OK = 0
SQLITE_IOERR = 10
SQLITE_OPEN_DELETEONCLOSE = 0x00000008

_HEADER = struct.Struct("<cq")     # b"B", synced size   |  b"W", offset, then length
_WRITE = struct.Struct("<cqi")     # b"W", offset, length, then the old bytes


class PowerLossError(RuntimeError):
    """The shim cannot be installed here, or an undo log is unreadable."""


# -- the C structures (sqlite3.h) -------------------------------------------------------------

_p = ctypes.c_void_p
_i = ctypes.c_int
_i64 = ctypes.c_int64
_CLOSE = ctypes.CFUNCTYPE(_i, _p)
_RW = ctypes.CFUNCTYPE(_i, _p, _p, _i, _i64)
_TRUNC = ctypes.CFUNCTYPE(_i, _p, _i64)
_INTARG = ctypes.CFUNCTYPE(_i, _p, _i)
_PTRARG = ctypes.CFUNCTYPE(_i, _p, _p)
_FCNTL = ctypes.CFUNCTYPE(_i, _p, _i, _p)
_SHMMAP = ctypes.CFUNCTYPE(_i, _p, _i, _i, _i, _p)
_SHMLOCK = ctypes.CFUNCTYPE(_i, _p, _i, _i, _i)
_SHMBARRIER = ctypes.CFUNCTYPE(None, _p)
# zName is taken as an address, not c_char_p: SQLite reads URI parameters and the database
# name *around* that pointer (sqlite3_filename), so the unix VFS must get the very same one.
_OPEN = ctypes.CFUNCTYPE(_i, _p, _p, _p, _i, _p)


class _IoMethods(ctypes.Structure):
    _fields_ = [
        ("iVersion", _i), ("xClose", _CLOSE), ("xRead", _RW), ("xWrite", _RW),
        ("xTruncate", _TRUNC), ("xSync", _INTARG), ("xFileSize", _PTRARG),
        ("xLock", _INTARG), ("xUnlock", _INTARG), ("xCheckReservedLock", _PTRARG),
        ("xFileControl", _FCNTL), ("xSectorSize", _CLOSE), ("xDeviceCharacteristics", _CLOSE),
        ("xShmMap", _SHMMAP), ("xShmLock", _SHMLOCK), ("xShmBarrier", _SHMBARRIER),
        ("xShmUnmap", _INTARG), ("xFetch", _p), ("xUnfetch", _p),
    ]


class _File(ctypes.Structure):
    # Our sqlite3_file: the methods pointer, then (at _REAL_OFFSET) the unix VFS's own file.
    _fields_ = [("pMethods", ctypes.POINTER(_IoMethods))]


class _Vfs(ctypes.Structure):
    pass


_Vfs._fields_ = [
    ("iVersion", _i), ("szOsFile", _i), ("mxPathname", _i), ("pNext", ctypes.POINTER(_Vfs)),
    ("zName", ctypes.c_char_p), ("pAppData", _p), ("xOpen", _OPEN),
    # The rest are copied from the unix VFS untouched; none of them reads its vfs argument.
    ("xDelete", _p), ("xAccess", _p), ("xFullPathname", _p), ("xDlOpen", _p),
    ("xDlError", _p), ("xDlSym", _p), ("xDlClose", _p), ("xRandomness", _p), ("xSleep", _p),
    ("xCurrentTime", _p), ("xGetLastError", _p), ("xCurrentTimeInt64", _p),
    ("xSetSystemCall", _p), ("xGetSystemCall", _p), ("xNextSystemCall", _p),
]
_REAL_OFFSET = 16


# -- the undo logs ------------------------------------------------------------------------------


class _UndoLog:
    """The undo log of one database file, shared by every handle this process has on it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        log_path = path + UNDO_SUFFIX
        # A log left by an earlier process that was killed (no power loss simulated yet)
        # still describes what is unsynced: keep appending to it.
        fresh = not os.path.exists(log_path) or os.path.getsize(log_path) == 0
        self.fd = os.open(log_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        if fresh:
            self._reset()

    def _size(self) -> int:
        try:
            return os.path.getsize(self.path)
        except FileNotFoundError:
            return 0

    def _reset(self) -> None:
        os.ftruncate(self.fd, 0)
        os.write(self.fd, _HEADER.pack(b"B", self._size()))

    def before_change(self, offset: int, length: int) -> None:
        """Save the bytes in [offset, offset + length) that exist now, before they change."""
        with self.lock:
            try:
                with open(self.path, "rb") as f:
                    f.seek(offset)
                    old = f.read(max(0, length))
            except FileNotFoundError:
                old = b""
            if old:
                os.write(self.fd, _WRITE.pack(b"W", offset, len(old)) + old)

    def synced(self) -> None:
        with self.lock:
            self._reset()


@dataclass
class _Open:
    real: int            # address of the unix VFS's sqlite3_file inside ours
    methods: _IoMethods  # the unix VFS's io methods for it
    undo: _UndoLog | None


_logs: dict[str, _UndoLog] = {}
_files: dict[int, _Open] = {}
_state_lock = threading.Lock()
_keep: list[object] = []     # the C structures and callbacks must outlive every connection
_installed = False


def _guard(fn):  # type: ignore[no-untyped-def]
    """An exception in a callback would otherwise return 0 (SQLITE_OK) to SQLite."""
    def wrapped(*args):  # type: ignore[no-untyped-def]
        try:
            return fn(*args)
        except Exception:
            return SQLITE_IOERR
    return wrapped


def _x_close(pfile: int) -> int:
    with _state_lock:
        entry = _files.pop(pfile)
    return int(entry.methods.xClose(entry.real))


def _x_write(pfile: int, buf: int, amount: int, offset: int) -> int:
    entry = _files[pfile]
    if entry.undo is not None:
        entry.undo.before_change(offset, amount)
    return int(entry.methods.xWrite(entry.real, buf, amount, offset))


def _x_truncate(pfile: int, size: int) -> int:
    entry = _files[pfile]
    if entry.undo is not None:
        current = entry.undo._size()
        if size < current:
            entry.undo.before_change(size, current - size)
    return int(entry.methods.xTruncate(entry.real, size))


def _x_sync(pfile: int, flags: int) -> int:
    entry = _files[pfile]
    rc = int(entry.methods.xSync(entry.real, flags))
    if rc == SQLITE_OK and entry.undo is not None:
        entry.undo.synced()
    return rc


def _forward(name: str):  # type: ignore[no-untyped-def]
    def call(pfile, *args):  # type: ignore[no-untyped-def]
        entry = _files[pfile]
        return getattr(entry.methods, name)(entry.real, *args)
    return call


def _barrier(pfile: int) -> None:
    entry = _files[pfile]
    entry.methods.xShmBarrier(entry.real)


def install() -> None:
    """Register the shim as this process's default SQLite VFS (idempotent).

    Call it before the stores open. Raises :class:`PowerLossError` when this Python's
    ``sqlite3`` does not use the shared ``libsqlite3`` (then the shim would never be seen).
    """
    global _installed
    if _installed:
        return
    name = ctypes.util.find_library("sqlite3")
    if name is None:
        raise PowerLossError("libsqlite3 not found; the power-loss shim needs the system "
                             "library that Python's sqlite3 module links to")
    lib = ctypes.CDLL(name)
    lib.sqlite3_libversion.restype = ctypes.c_char_p
    if lib.sqlite3_libversion().decode() != sqlite3.sqlite_version:
        raise PowerLossError(f"Python's sqlite3 ({sqlite3.sqlite_version}) is not {name}: "
                             "it is linked statically, so a VFS registered here is not seen")
    lib.sqlite3_vfs_find.restype = ctypes.POINTER(_Vfs)
    lib.sqlite3_vfs_find.argtypes = [ctypes.c_char_p]
    lib.sqlite3_vfs_register.argtypes = [ctypes.POINTER(_Vfs), _i]
    base_ptr = lib.sqlite3_vfs_find(None)
    if not base_ptr:
        raise PowerLossError("SQLite has no default VFS")
    base = base_ptr.contents

    methods = _IoMethods()
    methods.iVersion = 2   # no xFetch: memory-mapped reads would bypass the shim
    methods.xClose = _CLOSE(_guard(_x_close))
    methods.xRead = _RW(_guard(_forward("xRead")))
    methods.xWrite = _RW(_guard(_x_write))
    methods.xTruncate = _TRUNC(_guard(_x_truncate))
    methods.xSync = _INTARG(_guard(_x_sync))
    methods.xFileSize = _PTRARG(_guard(_forward("xFileSize")))
    methods.xLock = _INTARG(_guard(_forward("xLock")))
    methods.xUnlock = _INTARG(_guard(_forward("xUnlock")))
    methods.xCheckReservedLock = _PTRARG(_guard(_forward("xCheckReservedLock")))
    methods.xFileControl = _FCNTL(_guard(_forward("xFileControl")))
    methods.xSectorSize = _CLOSE(_guard(_forward("xSectorSize")))
    methods.xDeviceCharacteristics = _CLOSE(_guard(_forward("xDeviceCharacteristics")))
    methods.xShmMap = _SHMMAP(_guard(_forward("xShmMap")))
    methods.xShmLock = _SHMLOCK(_guard(_forward("xShmLock")))
    methods.xShmBarrier = _SHMBARRIER(_barrier)
    methods.xShmUnmap = _INTARG(_guard(_forward("xShmUnmap")))

    def x_open(pvfs: int, zname: int | None, pfile: int, flags: int, pout: int) -> int:
        ours = _File.from_address(pfile)
        ours.pMethods = ctypes.POINTER(_IoMethods)()   # NULL: SQLite skips xClose on failure
        real = pfile + _REAL_OFFSET
        rc = int(base.xOpen(ctypes.addressof(base), zname, real, flags, pout))
        real_methods = _File.from_address(real).pMethods
        if rc != SQLITE_OK or not real_methods:
            return rc
        undo = None
        if zname is not None and not flags & SQLITE_OPEN_DELETEONCLOSE:
            path = os.fsdecode(ctypes.string_at(zname))
            with _state_lock:
                undo = _logs.get(path)
                if undo is None:
                    undo = _logs[path] = _UndoLog(path)
        with _state_lock:
            _files[pfile] = _Open(real, real_methods.contents, undo)
        ours.pMethods = ctypes.pointer(methods)
        return SQLITE_OK

    vfs = _Vfs()
    # Copy every field of the unix VFS, then override ours.
    ctypes.memmove(ctypes.addressof(vfs), ctypes.addressof(base), ctypes.sizeof(_Vfs))
    vfs.iVersion = min(base.iVersion, 3)
    vfs.szOsFile = _REAL_OFFSET + base.szOsFile
    vfs.pNext = ctypes.POINTER(_Vfs)()
    vfs.zName = VFS_NAME
    vfs.xOpen = _OPEN(_guard(x_open))
    _keep.extend([lib, methods, vfs, x_open])
    if lib.sqlite3_vfs_register(ctypes.byref(vfs), 1) != SQLITE_OK:
        raise PowerLossError("sqlite3_vfs_register refused the power-loss shim")
    _installed = True


SITECUSTOMIZE = '''\
# Written by tether.tools.powerloss.child_env: the power-loss shim in every Python process
# started with this directory on PYTHONPATH (issue 16). Not for production.
from tether.tools import powerloss
powerloss.install()
'''


def child_env(env: dict[str, str], site_dir: Path) -> dict[str, str]:
    """Return a copy of ``env`` under which Python processes install the shim at start.

    Writes ``site_dir/sitecustomize.py`` and puts ``site_dir`` first on ``PYTHONPATH``.
    (Python imports one ``sitecustomize``, the first found; this interpreter has none of
    its own, which :func:`child_env` checks so that it never shadows one silently.)
    """
    try:
        import sitecustomize  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        pass
    else:
        raise PowerLossError("this Python already has a sitecustomize module; the power-loss "
                             "shim would shadow it")
    site_dir.mkdir(parents=True, exist_ok=True)
    (site_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
    paths = [str(site_dir), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    return {**env, "PYTHONPATH": os.pathsep.join(paths)}


# -- after the crash ------------------------------------------------------------------------------


def power_loss(directory: Path) -> list[Path]:
    """Drop every write not fsynced, for each file under ``directory`` with an undo log.

    The process that wrote them must be dead, and nothing may have opened the store since
    (closing a WAL connection checkpoints, writing behind the undo logs' back). Returns
    the files rolled back. Afterwards no undo log remains (the disk is what it is, as after
    a reboot), and ``-shm`` files are removed.
    """
    rolled: list[Path] = []
    for log_path in sorted(Path(directory).rglob(f"*{UNDO_SUFFIX}")):
        target = Path(str(log_path)[: -len(UNDO_SUFFIX)])
        _roll_back(target, log_path.read_bytes())
        log_path.unlink()
        rolled.append(target)
    for shm in Path(directory).rglob("*-shm"):
        shm.unlink()
    return rolled


def _roll_back(target: Path, log: bytes) -> None:
    if len(log) < _HEADER.size or log[:1] != b"B":
        raise PowerLossError(f"undo log of {target} has no header")
    _, synced_size = _HEADER.unpack_from(log, 0)
    changes: list[tuple[int, bytes]] = []
    at = _HEADER.size
    while at + _WRITE.size <= len(log):
        kind, offset, length = _WRITE.unpack_from(log, at)
        at += _WRITE.size
        if kind != b"W" or at + length > len(log):
            break   # a record cut short by the kill: its data write never happened either
        changes.append((offset, log[at:at + length]))
        at += length
    if not target.exists():
        return
    with open(target, "r+b") as f:
        for offset, old in reversed(changes):
            f.seek(offset)
            f.write(old)
        f.truncate(synced_size)
