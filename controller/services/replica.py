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


# Query parameters that carry a secret: libpq's ``password``/``sslpassword`` (a DSN may
# carry them as ``?password=``), and ``token``/``pass`` for other URL styles.
_SECRET_PARAMS = frozenset({"password", "sslpassword", "pass", "token", "nkey", "jwt"})


def redact_url(url: str) -> str:
    """``url`` without its secrets, for logs and errors: a password (``u:***@host``), a
    NATS token given as the user alone (``nats://***@host``) and secret query parameters
    (``?password=***``); every URL of a comma-separated list (NATS servers) alike. What
    cannot be parsed is not echoed at all."""
    return ",".join(_redact_one(part) for part in url.split(","))


def _redact_one(url: str) -> str:
    try:
        parts = urlsplit(url)
        password, user = parts.password, parts.username
    except ValueError:
        return "<unparsable url>"
    if "@" in parts.netloc:
        host = parts.netloc.rpartition("@")[2]
        if password is not None:
            parts = parts._replace(netloc=f"{user}:***@{host}")
        elif parts.scheme.startswith("nats") or parts.scheme == "tls":
            parts = parts._replace(netloc=f"***@{host}")  # nats://<token>@host
    if parts.query:
        parts = parts._replace(query="&".join(
            f"{key}=***" if key.lower() in _SECRET_PARAMS else field
            for field in parts.query.split("&")
            for key in (field.partition("=")[0],)))
    return urlunsplit(parts)
