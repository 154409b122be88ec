"""JSON shapes of stored rows for the REST API and pushed events."""

from __future__ import annotations

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
    data = row["data"]
    return {"id": row["id"], "source": row["source"], "seq": row["seq"],
            "data": bytes(data).decode("utf-8", errors="replace"),
            "dropped": row.get("dropped", 0)}


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
