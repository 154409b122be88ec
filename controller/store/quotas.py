"""Per-node byte budgets for what peers make the controller store (issue 11, item 3).

Pure: no I/O; the store applies these numbers inside its transactions.

Rule 1: every stored row is charged its payload bytes as stored (the JSON text of a node
event and its kind; a log chunk's data and source) plus :data:`ROW_OVERHEAD`, so a flood of
empty rows is bounded too.
Rule 2 (class A, ``node.event``): one event whose stored size is over
``node_event_max_bytes`` is refused (:func:`node_event_refusal` says so, with the code
``quota_exceeded``). Accepted events are the node's history: past
``node_events_bytes_per_node`` (or ``node_events_per_node`` rows) the node's oldest events
are pruned and counted. Their effects (the node's latest ``policy`` / ``apps``) stay.
A budget that is passed is pruned down to ``LOW_WATER`` (90%) of it, so pruning runs once
per tenth of a budget rather than on every row.
Rule 3 (class C, ``log.chunk``): a command keeps its first ``log_bytes_per_command`` bytes
(later bytes are counted, not kept, as before); a node keeps its newest
``log_bytes_per_node`` bytes of all its logs and its newest ``node_log_bytes_per_node``
bytes (``node_log_chunks_per_node`` chunks) of logs not tied to a command (apps, runtime);
the oldest go first and are counted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

ROW_OVERHEAD = 64  # bytes charged per stored row besides its payload (ids, times, index)
QUOTA_EXCEEDED = "quota_exceeded"
LOW_WATER = 0.9  # a budget that is passed is pruned down to this share of it


@dataclass(frozen=True, slots=True)
class StoreQuotas:
    """The budgets of Rules 2 and 3 (defaults are the controller's)."""

    node_event_max_bytes: int = 64 << 10
    node_events_bytes_per_node: int = 4 << 20
    node_events_per_node: int = 10_000
    log_bytes_per_command: int = 16 << 20
    log_bytes_per_node: int = 64 << 20
    node_log_bytes_per_node: int = 8 << 20
    node_log_chunks_per_node: int = 10_000


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a class A body was not stored: ``code`` for the ``error`` frame, ``message`` for
    people."""

    code: str
    message: str


# One encoder for every event (json.dumps with arguments builds a new one per call).
_EVENT_JSON = json.JSONEncoder(default=repr, separators=(",", ":"))


def encode_event_data(data: object) -> str:
    """The JSON text stored for a node event's data (what its size is charged on)."""
    return _EVENT_JSON.encode(data)


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def node_event_size(kind: str, data_json: str) -> int:
    """Bytes a node event is charged (Rule 1)."""
    return ROW_OVERHEAD + _utf8_len(kind) + _utf8_len(data_json)


def log_chunk_size(source: str, data: bytes) -> int:
    """Bytes a log chunk is charged (Rule 1)."""
    return ROW_OVERHEAD + len(source.encode("utf-8", "surrogatepass")) + len(data)


def node_event_refusal(kind: str, data: object, quotas: StoreQuotas) -> Refusal | None:
    """None when a node event of ``kind`` with ``data`` may be stored; otherwise the
    refusal (Rule 2) that the gateway sends back as an ``error`` frame (``re`` = the
    frame's id) while the stream moves on."""
    size = node_event_size(kind, encode_event_data(data))
    if size <= quotas.node_event_max_bytes:
        return None
    return Refusal(QUOTA_EXCEEDED,
                   f"node.event {kind[:64]!r} is {size} bytes stored; the limit is "
                   f"{quotas.node_event_max_bytes} (--max-node-event-bytes)")
