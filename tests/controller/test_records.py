"""The store's records (controller/store/records.py), built from rows without a database:
reading is total (Rule 1), and records are values read by attribute (Rule 4)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tether.controller.store.records import (
    CommandRecord,
    NodeEventRecord,
    NodeRecord,
    SessionRecord,
    usage_counts,
)
from tether.controller.views import session_view

NODE: dict[str, Any] = {
    "node_id": "n1", "labels": '{"a": "b"}', "enabled": 1, "created_at": 1.0,
    "current_session": None, "last_seen_at": None, "closed_at": 2.0, "closed_by_goodbye": 0,
    "runtime_state": "ready", "runtime_version": "1", "sidecar": '{"v": 1}',
    "capabilities": '["exec"]', "policy": None, "apps": None, "dead_letters_total": 0,
    "current_replica": None, "health": '{"ready": true}',
    "bundles": '{"web": {"active": 2}}',
}


def test_a_node_record_decodes_its_json_and_types_its_columns() -> None:
    node = NodeRecord.from_row(NODE)
    assert node.labels == {"a": "b"} and node.capabilities == ["exec"]
    assert node.enabled is True and node.closed_by_goodbye is False
    assert node.policy is None and node.apps == {} and node.sidecar == {"v": 1}
    assert node.health == {"ready": True} and node.bundles == {"web": {"active": 2}}


def test_anything_stored_reads_as_a_safe_default_never_an_exception() -> None:
    spoiled = {**NODE, "labels": "{not json", "capabilities": '{"a": 1}', "policy": "[1",
               "apps": "7", "created_at": "yesterday", "last_seen_at": float("nan"),
               "runtime_state": 5, "sidecar": b"\xff", "dead_letters_total": None,
               "health": "[1", "bundles": "[2"}
    node = NodeRecord.from_row(spoiled)
    assert (node.labels, node.capabilities, node.policy, node.apps, node.sidecar,
            node.health, node.bundles) == ({}, [], None, {}, {}, {}, {})
    assert (node.created_at, node.last_seen_at, node.runtime_state) == (None, None, None)
    assert node.dead_letters_total == 0
    event = NodeEventRecord.from_row({"id": 3, "kind": "k\udc80", "data": '{"x": NaN}',
                                      "at": "never"})
    assert event.kind == "k\ufffd" and event.data == {"x": None} and event.at is None


def test_a_command_record_keeps_its_result_and_defaults_what_is_unreadable() -> None:
    row = {"command_id": "c1", "node_id": "n1", "kind": "exec", "args": "{bad",
           "state": "failed", "epoch": 5, "q": 1, "created_at": 1.0, "deadline": None,
           "idem_key": None, "exit_code": True, "error": 7, "result": '{"ok": true}',
           "started_ms": None, "finished_ms": None, "updated_at": 1.0, "log_bytes": None,
           "log_dropped_bytes": Decimal(3)}
    command = CommandRecord.from_row(row)
    assert command.args == {} and command.result == {"ok": True} and command.error is None
    assert command.log_bytes == 0 and command.log_dropped_bytes == 3


def test_budget_sums_are_ints_whatever_the_engine_returns() -> None:
    row = {"items": Decimal(4), "bytes": None, "pruned_items": 1, "pruned_bytes": 2,
           "refused_items": 0, "refused_bytes": Decimal("5")}
    assert usage_counts(row) == {"items": 4, "bytes": 0, "pruned_items": 1,
                                 "pruned_bytes": 2, "refused_items": 0, "refused_bytes": 5}


def test_records_are_values_read_by_attribute_only() -> None:
    """Rule 4: no record reads by column name (code written against the rows of earlier
    versions would otherwise keep working on undecoded assumptions)."""
    node = NodeRecord.from_row(NODE)
    assert node.node_id == "n1" and node.labels == {"a": "b"}
    with pytest.raises(TypeError):
        node["node_id"]  # type: ignore[index]
    assert not hasattr(node, "get") and not hasattr(node, "keys")
    session = SessionRecord.from_row({"session_id": "s", "opened_at": 0.0,
                                      "closed_at": None, "close_code": None,
                                      "reason": None, "resumed": 1, "remote": "r",
                                      "replica_id": None})
    assert session_view(session) == {"session_id": "s", "opened_at": "1970-01-01T00:00:00.000Z",
                                     "closed_at": None, "close_code": None, "reason": None,
                                     "resumed": True, "remote": "r", "replica_id": None}
