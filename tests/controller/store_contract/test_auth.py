"""Operator tokens, join tokens, audit and node removal, on every backend."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from tether.common.sqlitedb import Database
from tether.controller.domain.roles import Caller
from tether.controller.store.controller_store import ControllerStore
from tether.controller.store.schema import SQLITE_MIGRATIONS
from tether.controller.store.sql import Tx
from tether.protocol.errors import NotFound

from .conftest import open_driver
from .helpers import enrolled, hello

ADMIN = Caller(token_id="tk_test", name="tests", role="admin")


async def raw_rows(store: ControllerStore, sql: str) -> list[dict[str, object]]:
    async def fn(tx: Tx) -> list[dict[str, object]]:
        # keys(): iterating a sqlite3.Row gives its values
        return [{k: r[k] for k in r.keys()} for r in await tx.fetch(sql)]  # noqa: SIM118
    return await store.driver.read(fn)


async def test_tokens_are_stored_as_their_sha256_never_in_plain(
        store: ControllerStore) -> None:
    admin = await store.ensure_admin_token(None)
    made, _ = await store.create_operator_token(role="viewer", name="v", ttl_s=None,
                                                actor=ADMIN)
    join, _ = await store.create_join_token(ttl_s=60, uses=1, labels={}, actor="admin")
    assert admin is not None
    stored = repr(await raw_rows(store, "SELECT * FROM operator_tokens")) + repr(
        await raw_rows(store, "SELECT * FROM join_tokens")) + repr(
        await raw_rows(store, "SELECT * FROM audit_log"))
    for secret in (admin, made, join):
        assert secret not in stored and secret.split("_", 1)[1] not in stored
        assert hashlib.sha256(secret.encode()).hexdigest() in stored


async def test_a_token_is_valid_until_revoked_or_expired(store: ControllerStore) -> None:
    token, record = await store.create_operator_token(role="operator", name=None,
                                                      ttl_s=None, actor=ADMIN)
    caller, _ = await store.operator_caller(token)
    assert caller == Caller(token_id=record.token_id, name=None, role="operator")
    assert record.token_id == "tk_" + hashlib.sha256(token.encode()).hexdigest()[:16]
    await store.revoke_operator_token(record.token_id, actor=ADMIN)
    assert await store.operator_caller(token) == (None, "revoked")
    await store.revoke_operator_token(record.token_id, actor=ADMIN)  # again: a no-op
    with pytest.raises(NotFound):
        await store.revoke_operator_token("tk_unknown", actor=ADMIN)
    expired, _ = await store.create_operator_token(role="admin", name="x", ttl_s=-1,
                                                   actor=ADMIN)
    assert await store.operator_caller(expired) == (None, "expired")
    assert await store.operator_caller("tok_never_made") == (None, "unknown")
    listed = {t.token_id: t for t in await store.list_operator_tokens()}
    assert listed[record.token_id].revoked_at is not None


async def test_a_revoked_admin_file_token_is_replaced_at_start(store: ControllerStore) -> None:
    first = await store.ensure_admin_token(None)
    assert first is not None
    first_id = "tk_" + hashlib.sha256(first.encode()).hexdigest()[:16]
    await store.revoke_operator_token(first_id, actor=ADMIN)
    second = await store.ensure_admin_token(first)
    assert second is not None and await store.operator_role(second) == "admin"


async def test_join_tokens_are_listed_by_id_and_revoked(store: ControllerStore) -> None:
    token, _ = await store.create_join_token(ttl_s=60, uses=2, labels={"a": "b"},
                                             actor="admin")
    await store.create_join_token(ttl_s=-1, uses=2, labels={}, actor="admin")  # expired
    (listed,) = await store.list_join_tokens()
    assert listed.token_id == "jt_" + hashlib.sha256(token.encode()).hexdigest()[:16]
    assert listed.uses_left == 2 and listed.labels == {"a": "b"}
    await store.revoke_join_token(listed.token_id, actor=ADMIN)
    assert await store.list_join_tokens() == []
    with pytest.raises(NotFound):
        await store.revoke_join_token(listed.token_id, actor=ADMIN)


async def test_deleting_a_node_removes_every_row_of_it_and_the_id_enrolls_again(
        store: ControllerStore) -> None:
    await enrolled(store, "n1", key=b"a" * 32)
    await enrolled(store, "n2", key=b"b" * 32)
    await hello(store, "n1")
    await store.submit_command(node_id="n1", kind="exec", args={"argv": ["true"]},
                               ttl_s=None, idem_key="k1", actor="admin")
    await store.record_node_events("n1", [("note", {"x": 1})])
    await store.append_logs("n1", [(None, "app:web", 1, b"hello", 0)])
    await store.delete_node("n1", actor=ADMIN)
    assert await store.get_node("n1") is None and await store.node_key("n1") is None
    for table in ("nodes", "stream_cursors", "edge_sessions", "commands", "logs",
                  "node_events", "node_usage", "idempotency_keys", "downlink_outbox",
                  "dead_letters"):
        rows = await raw_rows(store, f"SELECT node_id FROM {table}")
        assert all(r["node_id"] != "n1" for r in rows), table
    assert await raw_rows(store, "SELECT * FROM command_events") == []
    assert await store.get_node("n2") is not None  # the others are untouched
    with pytest.raises(NotFound):
        await store.delete_node("n1", actor=ADMIN)
    await enrolled(store, "n1", key=b"c" * 32)  # another key: enrolls
    assert await store.node_key("n1") == (b"c" * 32, True)
    assert (await hello(store, "n1")).resumed is False
    (record,) = [a for a in await store.audit_page(before=None, limit=100)
                 if a.action == "node.delete"]
    assert (record.target, record.token_id, record.role) == ("n1", "tk_test", "admin")


async def test_the_audit_log_pages_newest_first_with_who_asked(
        store: ControllerStore) -> None:
    for status in (200, 403, 201, 404, 500):
        await store.record_request(ADMIN, "POST /api/v1/x/{id}", "t1", status)
    first = await store.audit_page(before=None, limit=3)
    assert [a.status for a in first] == [500, 404, 201]
    rest = await store.audit_page(before=first[-1].id, limit=3)
    assert [a.status for a in rest] == [403, 200]
    assert all(a.actor == "tests (tk_test)" and a.role == "admin" and a.target == "t1"
               for a in first + rest)


async def test_tokens_from_before_ids_get_their_id_from_their_hash(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = Database(path, migrations=SQLITE_MIGRATIONS[:8], durability="process")
    await old.open()
    digest = hashlib.sha256(b"tok_old").hexdigest()

    def fill(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO operator_tokens (token_hash, role, label, created_at) "
                     "VALUES (?, 'admin', 'admin', 0)", (digest,))
    await old.write(fill)
    await old.close()
    driver = await open_driver("sqlite", str(path))
    try:
        caller, _ = await ControllerStore(driver).operator_caller("tok_old")
        assert caller == Caller(token_id="tk_" + digest[:16], name="admin", role="admin")
    finally:
        await driver.close()


async def test_the_audit_log_is_pruned_by_age_and_by_count(store: ControllerStore) -> None:
    for status in range(200, 206):
        await store.record_request(ADMIN, "POST /api/v1/x", None, status)

    async def age_first_two(tx: Tx) -> None:  # the two oldest are 10 days old
        await tx.execute("UPDATE audit_log SET at = at - 864000 WHERE id IN "
                         "(SELECT id FROM audit_log ORDER BY id LIMIT 2)")
    await store.driver.write(age_first_two)
    assert await store.prune_audit(older_than_s=None, keep_max=None) == 0
    assert await store.prune_audit(older_than_s=5 * 86400, keep_max=None) == 2
    assert [a.status for a in await store.audit_page(before=None, limit=10)] == \
        [205, 204, 203, 202]
    assert await store.prune_audit(older_than_s=5 * 86400, keep_max=3) == 1
    assert [a.status for a in await store.audit_page(before=None, limit=10)] == \
        [205, 204, 203]
    assert await store.prune_audit(older_than_s=5 * 86400, keep_max=3) == 0
