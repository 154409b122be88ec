"""JSON shapes of stored rows for the REST API and pushed events.

Rule (reading is total, issue 11): nothing a peer ever stored can make a view fail. Stored
JSON is read with :func:`loads`, which never raises and returns only what JSON can hold
(non-finite numbers become null, lone surrogates U+FFFD, unreadable text the caller's
default); times go through :func:`iso`, which returns None for anything that is not a time.
Rows written by older versions, before values were checked at the edge, read the same way.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import re
from datetime import UTC, datetime
from typing import Any

logger = logging.getLogger(__name__)


def iso(ts: object) -> str | None:
    """Wall-clock seconds as ISO 8601 UTC with milliseconds; None for None or for anything
    that is not a representable time."""
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        return None
    try:
        return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
            "+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return None


def _finite_or_none(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None


_SURROGATE = re.compile("[\ud800-\udfff]")


def _fix_text(value: str) -> str:
    """``value`` with each lone surrogate replaced by U+FFFD."""
    return _SURROGATE.sub("\ufffd", value) if _has_surrogate(value) else value


def _has_surrogate(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _sanitize(value: Any) -> Any:
    """``value`` (from :func:`json.loads`) without lone surrogates."""
    if isinstance(value, str):
        return _fix_text(value)
    if isinstance(value, list):
        return [_sanitize(v) for v in value]
    if isinstance(value, dict):
        return {_fix_text(k): _sanitize(v) for k, v in value.items()}
    return value


def loads(text: object, default: Any = None) -> Any:
    """Stored JSON text as a value JSON can hold again; ``default`` for None, for a value
    that is not text, or for text that is not JSON (logged, never raised)."""
    if text is None:
        return default
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not isinstance(text, str):
        return default
    try:
        value = json.loads(text, parse_constant=lambda _: None,
                           parse_float=_finite_or_none)
    except (ValueError, RecursionError):
        logger.warning("stored JSON is unreadable; shown as its default",
                       extra={"detail": text[:80]})
        return default
    # json.dumps escapes non-ASCII by default, so a lone surrogate is stored as "\\udXXX"
    return _sanitize(value) if "\\ud" in text or "\\uD" in text else value


def log_item(row: dict[str, Any]) -> dict[str, Any]:
    """A stored log chunk as JSON. ``data`` is text; when the chunk's bytes are not valid
    UTF-8 (binary output, or a character split across chunks) ``data`` shows them with
    U+FFFD and ``data_b64`` carries the exact bytes, base64url without padding
    (docs/protocol.md §6). A reader that writes bytes uses ``data_b64`` when present."""
    raw = bytes(row["data"])
    item: dict[str, Any] = {"id": row["id"], "source": row["source"], "seq": row["seq"]}
    try:
        item["data"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        item["data"] = raw.decode("utf-8", errors="replace")
        item["data_b64"] = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    item["dropped"] = row.get("dropped", 0)
    return item


def _text(value: object) -> str | None:
    return _fix_text(value) if isinstance(value, str) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def command_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "command_id": row["command_id"], "node_id": row["node_id"], "kind": row["kind"],
        "args": loads(row["args"], {}), "state": row["state"],
        "exit_code": _int(row["exit_code"]), "error": _text(row["error"]),
        "result": loads(row.get("result")) if row.get("result") else None,
        "created_at": iso(row["created_at"]), "updated_at": iso(row["updated_at"]),
        "deadline": iso(row["deadline"]),
        "log_bytes": row["log_bytes"], "log_dropped_bytes": row["log_dropped_bytes"],
        "timeline": [{"state": e["state"], "at": iso(e["at"]), "detail": _text(e["detail"])}
                     for e in row.get("timeline", [])],
    }


def node_event_view(row: dict[str, Any]) -> dict[str, Any]:
    """One stored node event (``GET /api/v1/nodes/{id}/events``)."""
    return {"id": row["id"], "kind": _text(row["kind"]), "data": loads(row["data"]),
            "at": iso(row["at"])}
