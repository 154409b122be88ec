"""The ``file`` subflow's blocking disk work (:mod:`.filexfer` runs each in a thread): the
partial file's open, resume and prefix hash, the commit (fsync, rename, directory fsync),
the discard, and a served file's size and sha256. Never through a symlink."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

from tether.protocol import filexfer as fx

READ_BLOCK = 1 << 20


def open_part(part: Path, offer: fx.Offer) -> tuple[int, int, Any]:
    """Open (or create) the partial file, choose the resume offset, hash the kept prefix
    and cut anything after it. Never follows a symlink; created 0600."""
    fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        offset = fx.resume_offset(offer, os.fstat(fd).st_size)
        hasher = hashlib.sha256()
        pos = 0
        while pos < offset:
            block = os.pread(fd, min(READ_BLOCK, offset - pos), pos)
            if not block:
                break
            hasher.update(block)
            pos += len(block)
        os.ftruncate(fd, pos)
        return fd, pos, hasher
    except BaseException:
        os.close(fd)
        raise


def commit(fd: int, part: Path, final: Path) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if final.is_dir() and not final.is_symlink():
        raise IsADirectoryError(21, "a directory has that name", str(final))
    os.replace(part, final)
    dfd = os.open(part.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def discard(fd: int, part: Path, final: Path) -> None:
    del final
    os.close(fd)
    part.unlink(missing_ok=True)


def hash_file(path: Path, max_bytes: int) -> tuple[int, str]:
    """Size and sha256 of a regular file (not through a symlink), at most ``max_bytes``."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(21, "not a regular file", str(path))
        if st.st_size > max_bytes:
            raise ValueError(f"{st.st_size} bytes is over the {max_bytes}-byte limit")
        hasher = hashlib.sha256()
        while block := os.read(fd, READ_BLOCK):
            hasher.update(block)
        return st.st_size, hasher.hexdigest()
    finally:
        os.close(fd)
