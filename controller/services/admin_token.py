"""The first operator token, kept in ``<data-dir>/admin.token`` (mode 0600)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol

logger = logging.getLogger(__name__)


class TokenStore(Protocol):
    async def ensure_admin_token(self, have_file_token: str | None) -> str | None: ...


async def ensure_admin_token(store: TokenStore, path: Path) -> None:
    """Make sure the admin token in ``path`` is valid for ``store``: the store keeps the
    file's token when it knows it, else mints one, which is written here (0600). Runs once,
    at start-up: the file is a few bytes, read and written in place."""
    token = await store.ensure_admin_token(_read(path))
    if token is not None:
        _write(path, token)
        logger.info("admin token written", extra={"path": str(path)})


def _read(path: Path) -> str | None:
    current = path.read_text().strip() if path.exists() else None
    return current or None


def _write(path: Path, token: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    os.chmod(path, 0o600)
