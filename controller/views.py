"""JSON shapes of stored rows for the REST API and pushed events."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any


def iso(ts: float | None) -> str | None:
    """Wall-clock seconds as ISO 8601 UTC with milliseconds, or None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


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


def command_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "command_id": row["command_id"], "node_id": row["node_id"], "kind": row["kind"],
        "args": json.loads(row["args"]), "state": row["state"],
        "exit_code": row["exit_code"], "error": row["error"],
        "result": json.loads(row["result"]) if row.get("result") else None,
        "created_at": iso(row["created_at"]), "updated_at": iso(row["updated_at"]),
        "deadline": iso(row["deadline"]),
        "log_bytes": row["log_bytes"], "log_dropped_bytes": row["log_dropped_bytes"],
        "timeline": [{"state": e["state"], "at": iso(e["at"]), "detail": e["detail"]}
                     for e in row.get("timeline", [])],
    }
