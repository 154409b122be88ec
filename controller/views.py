"""JSON shapes of the store's records for the REST API and pushed events.

Rule (reading is total, issue 11): nothing a peer ever stored can make a view fail. The
store decodes stored JSON into its records (``store/records.py``: :func:`loads` never raises
and returns only what JSON can hold); times go through :func:`iso`, which returns None for
anything that is not a time.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

from .store.records import (
    CommandRecord,
    DeadLetter,
    LogChunk,
    NodeEventRecord,
    SessionRecord,
    fix_text,
)

__all__ = ["command_view", "dead_letter_view", "iso", "log_item", "node_event_view",
           "session_view"]


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


def log_item(row: LogChunk) -> dict[str, Any]:
    """A stored log chunk as JSON. ``data`` is text; when the chunk's bytes are not valid
    UTF-8 (binary output, or a character split across chunks) ``data`` shows them with
    U+FFFD and ``data_b64`` carries the exact bytes, base64url without padding
    (docs/protocol.md §6). A reader that writes bytes uses ``data_b64`` when present."""
    raw = row.data
    item: dict[str, Any] = {"id": row.id, "source": row.source, "seq": row.seq}
    try:
        item["data"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        item["data"] = raw.decode("utf-8", errors="replace")
        item["data_b64"] = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    item["dropped"] = row.dropped
    return item


def command_view(row: CommandRecord) -> dict[str, Any]:
    return {
        "command_id": row.command_id, "node_id": row.node_id, "kind": row.kind,
        "args": row.args, "state": row.state,
        "exit_code": row.exit_code, "error": row.error, "result": row.result,
        "created_at": iso(row.created_at), "updated_at": iso(row.updated_at),
        "deadline": iso(row.deadline),
        "log_bytes": row.log_bytes, "log_dropped_bytes": row.log_dropped_bytes,
        "timeline": [{"state": e.state, "at": iso(e.at),
                      "detail": None if e.detail is None else fix_text(e.detail)}
                     for e in row.timeline],
    }


def node_event_view(row: NodeEventRecord) -> dict[str, Any]:
    """One stored node event (``GET /api/v1/nodes/{id}/events``)."""
    return {"id": row.id, "kind": row.kind, "data": row.data, "at": iso(row.at)}


def session_view(row: SessionRecord) -> dict[str, Any]:
    """One session of a node's history (``GET /api/v1/nodes/{id}/sessions``)."""
    return {"session_id": row.session_id, "opened_at": iso(row.opened_at),
            "closed_at": iso(row.closed_at), "close_code": row.close_code,
            "reason": row.reason, "resumed": row.resumed, "remote": row.remote,
            "replica_id": row.replica_id}


def dead_letter_view(row: DeadLetter) -> dict[str, Any]:
    """One dead letter (``GET /api/v1/nodes/{id}/dead-letters``)."""
    return {"id": row.id, "stream": row.stream, "q": row.q, "frame_type": row.frame_type,
            "frame_id": row.frame_id, "reason": row.reason, "excerpt": row.excerpt,
            "at": iso(row.at)}
