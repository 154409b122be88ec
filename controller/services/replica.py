"""This controller's replica id, and URLs as they may be logged.

A replica id names the process in the shared store's session history and on NATS. Given
none, a replica keeps the one it generated in its data directory, so a replica restarted on
the same data directory closes its own leftover sessions at start
(``close_orphan_sessions(replica_id)``) instead of leaving them to whoever takes the nodes.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from .nats_link import new_replica_id

_REPLICA_ID = re.compile(r"[A-Za-z0-9_:-]{1,64}")


def check_replica_id(replica_id: str) -> str:
    """``replica_id`` if it is 1-64 of ``[A-Za-z0-9_:-]`` (one NATS subject token, plain in
    logs), else ValueError."""
    if not _REPLICA_ID.fullmatch(replica_id):
        raise ValueError(f"replica id {replica_id!r} must be 1-64 of [A-Za-z0-9_:-]")
    return replica_id


def stable_replica_id(path: Path) -> str:
    """The replica id kept at ``path``, created (atomically, by rename) when missing or not
    a valid id."""
    try:
        kept = path.read_text().strip()
        return check_replica_id(kept)
    except (OSError, ValueError, UnicodeDecodeError):
        pass
    replica_id = new_replica_id()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(replica_id + "\n")
    tmp.replace(path)
    return replica_id


def redact_url(url: str) -> str:
    """``url`` without its password (``postgresql://u:***@host/db``), for logs and errors;
    every URL of a comma-separated list (NATS servers) alike."""
    return ",".join(_redact_one(part) for part in url.split(","))


def _redact_one(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))
