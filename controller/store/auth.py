"""Operator tokens, join tokens, the audit log and node removal (issue 13).

Tokens at rest: only the SHA-256 of a token is stored (``base.token_hash``). A token is
``secrets.token_urlsafe`` of 24 or 32 random bytes, so a plain hash suffices: a slow,
salted password hash guards guessable secrets, and these cannot be guessed; whoever reads
the database learns no usable token. A token is looked up by its hash (an index probe),
never compared as text, so no comparison of the secret itself leaks timing.

A token's public id is ``tk_`` (operator) or ``jt_`` (join) and the first 16 hex digits of
that hash: known to whoever holds the token, harmless to show (64 bits of a hash say nothing
usable about a 256-bit secret), the same for rows written before ids existed (SQLite migration 10,
PostgreSQL 5).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from tether.protocol.errors import NotFound

from ..domain.roles import Caller
from .base import StoreBase, peer_text, token_hash, wall_now
from .records import _map, _text, _time, loads
from .sql import Row, Tx

__all__ = ["AuditRecord", "AuthTransactions", "JoinTokenRecord", "TokenRecord",
           "join_token_id", "operator_token_id"]

MAX_AUDIT_PAGE = 1000


def operator_token_id(token: str) -> str:
    return "tk_" + token_hash(token)[:16]


def join_token_id(token: str) -> str:
    return "jt_" + token_hash(token)[:16]


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """An operator token as listed: never its secret nor its hash."""

    token_id: str
    role: str
    name: str | None
    created_at: float | None
    expires_at: float | None
    revoked_at: float | None

    COLUMNS = "token_id, role, label, created_at, expires_at, revoked_at"

    @classmethod
    def from_row(cls, row: Row) -> TokenRecord:
        return cls(token_id=str(row["token_id"]), role=str(row["role"]),
                   name=_text(row["label"]), created_at=_time(row["created_at"]),
                   expires_at=_time(row["expires_at"]), revoked_at=_time(row["revoked_at"]))


@dataclass(frozen=True, slots=True)
class JoinTokenRecord:
    token_id: str
    created_at: float | None
    expires_at: float | None
    uses_left: int
    labels: dict[str, Any]

    COLUMNS = "token_id, created_at, expires_at, uses_left, labels"

    @classmethod
    def from_row(cls, row: Row) -> JoinTokenRecord:
        uses = row["uses_left"]
        return cls(token_id=str(row["token_id"]), created_at=_time(row["created_at"]),
                   expires_at=_time(row["expires_at"]),
                   uses_left=int(uses) if isinstance(uses, int) else 0,
                   labels=_map(row["labels"]))


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audit row: a request record (``status`` set: who asked what, and the answer) or
    an effect record the store wrote with the change itself (``status`` None)."""

    id: int
    at: float | None
    actor: str
    role: str | None
    token_id: str | None
    action: str
    target: str | None
    status: int | None
    detail: Any

    COLUMNS = "id, at, actor, role, token_id, action, target, status, detail"

    @classmethod
    def from_row(cls, row: Row) -> AuditRecord:
        status = row["status"]
        return cls(id=int(row["id"]), at=_time(row["at"]), actor=str(row["actor"]),
                   role=_text(row["role"]), token_id=_text(row["token_id"]),
                   action=str(row["action"]), target=_text(row["target"]),
                   status=int(status) if isinstance(status, int) else None,
                   detail=loads(row["detail"]))


# Every table that holds a node's rows, keyed by node_id (command_events hangs off commands
# and is deleted first). A deleted node leaves nothing but its audit records.
_NODE_TABLES = ("logs", "node_events", "node_usage", "dead_letters", "idempotency_keys",
                "downlink_outbox", "stream_cursors", "edge_sessions", "commands",
                "job_nodes")  # a job's part on a deleted node goes with its command


async def purge_node(tx: Tx, node_id: str) -> None:
    """Delete every row of ``node_id`` (its commands with their timelines and output, its
    sessions, events, cursors, outbox and budgets), and the node itself."""
    await tx.execute("DELETE FROM command_events WHERE command_id IN "
                     "(SELECT command_id FROM commands WHERE node_id=$1)", node_id)
    for table in _NODE_TABLES:
        await tx.execute(f"DELETE FROM {table} WHERE node_id=$1", node_id)
    await tx.execute("DELETE FROM nodes WHERE node_id=$1", node_id)


class AuthTransactions(StoreBase):
    """Operator tokens with roles, join tokens, audit records, node removal."""

    async def create_operator_token(self, *, role: str, name: str | None,
                                    ttl_s: float | None, actor: Caller
                                    ) -> tuple[str, TokenRecord]:
        """A new operator token (its secret, returned once, and its record)."""
        token = "tok_" + secrets.token_urlsafe(32)
        now = wall_now()
        record = TokenRecord(token_id=operator_token_id(token), role=role, name=name,
                             created_at=now,
                             expires_at=None if ttl_s is None else now + ttl_s,
                             revoked_at=None)

        async def fn(tx: Tx) -> None:
            await tx.execute("INSERT INTO operator_tokens (token_hash, role, label, "
                             "created_at, token_id, expires_at) VALUES ($1,$2,$3,$4,$5,$6)",
                             token_hash(token), role, name, now, record.token_id,
                             record.expires_at)
            await add_caller_audit(tx, actor, "token.create", record.token_id,
                                   {"role": role, "name": name, "ttl_s": ttl_s})
        await self.driver.write(fn)
        return token, record

    async def list_operator_tokens(self) -> list[TokenRecord]:
        async def fn(tx: Tx) -> list[TokenRecord]:
            return [TokenRecord.from_row(r) for r in await tx.fetch(
                f"SELECT {TokenRecord.COLUMNS} FROM operator_tokens "
                "ORDER BY created_at, token_id")]
        return await self.driver.read(fn)

    async def revoke_operator_token(self, token_id: str, *, actor: Caller) -> None:
        """Revoke at once: the next request with it gets 401. Raises NotFound for an
        unknown id; revoking a revoked token is a no-op that succeeds."""
        token_id = peer_text(token_id)

        async def fn(tx: Tx) -> None:
            if await tx.fetchval("SELECT 1 FROM operator_tokens WHERE token_id=$1",
                                 token_id) is None:
                raise NotFound(f"operator token {token_id!r} is not known; see "
                               "'tether token list'")
            await tx.execute("UPDATE operator_tokens SET revoked_at=$1 WHERE token_id=$2 "
                             "AND revoked_at IS NULL", wall_now(), token_id)
            await add_caller_audit(tx, actor, "token.revoke", token_id, None)
        await self.driver.write(fn)

    async def operator_caller(self, token: str) -> tuple[Caller | None, str]:
        """Who ``token`` is: (caller, "") when it is valid now, else (None, why not:
        "unknown", "revoked" or "expired")."""
        async def fn(tx: Tx) -> tuple[Caller | None, str]:
            row = await tx.fetchrow("SELECT token_id, role, label, expires_at, revoked_at "
                                    "FROM operator_tokens WHERE token_hash=$1",
                                    token_hash(token))
            if row is None:
                return None, "unknown"
            if row["revoked_at"] is not None:
                return None, "revoked"
            if row["expires_at"] is not None and row["expires_at"] <= wall_now():
                return None, "expired"
            return Caller(token_id=str(row["token_id"]), name=_text(row["label"]),
                          role=str(row["role"])), ""
        return await self.driver.read(fn)

    # -- join tokens -----------------------------------------------------------------------

    async def list_join_tokens(self) -> list[JoinTokenRecord]:
        """Join tokens not yet expired nor used up (the others can enroll nothing)."""
        async def fn(tx: Tx) -> list[JoinTokenRecord]:
            return [JoinTokenRecord.from_row(r) for r in await tx.fetch(
                f"SELECT {JoinTokenRecord.COLUMNS} FROM join_tokens WHERE expires_at > $1 "
                "AND uses_left > 0 ORDER BY created_at, token_id", wall_now())]
        return await self.driver.read(fn)

    async def revoke_join_token(self, token_id: str, *, actor: Caller) -> None:
        """Delete the join token: it enrolls nothing more (nodes it enrolled stay)."""
        token_id = peer_text(token_id)

        async def fn(tx: Tx) -> None:
            if not await tx.execute("DELETE FROM join_tokens WHERE token_id=$1", token_id):
                raise NotFound(f"join token {token_id!r} is not known; see "
                               "'tether join-token list'")
            await add_caller_audit(tx, actor, "join_token.revoke", token_id, None)
        await self.driver.write(fn)

    # -- nodes ------------------------------------------------------------------------------

    async def delete_node(self, node_id: str, *, actor: Caller) -> None:
        """Remove the node, its key and all its data (:func:`purge_node`). Its live session,
        if any, is the caller's to close (``Router.disable``): from this commit on, its
        frames are fenced (the node row is gone) and its hellos refused (not enrolled).
        Raises NotFound for an unknown node."""
        node_id = peer_text(node_id)

        async def fn(tx: Tx) -> None:
            if await tx.fetchval("SELECT 1 FROM nodes WHERE node_id=$1", node_id) is None:
                raise NotFound(f"node {node_id!r} is not enrolled; see 'tether nodes list'")
            await purge_node(tx, node_id)
            await add_caller_audit(tx, actor, "node.delete", node_id, None)
        await self.driver.write(fn)

    # -- audit --------------------------------------------------------------------------------

    async def record_request(self, caller: Caller, action: str, target: str | None,
                             status: int) -> None:
        """A request record: ``caller`` asked ``action`` on ``target`` and got ``status``."""
        async def fn(tx: Tx) -> None:
            await tx.execute("INSERT INTO audit_log (at, actor, action, target, detail, "
                             "token_id, role, status) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
                             wall_now(), peer_text(caller.actor), peer_text(action),
                             None if target is None else peer_text(target), "null",
                             caller.token_id, caller.role, status)
        await self.driver.write(fn)

    async def audit_page(self, *, before: int | None, limit: int) -> list[AuditRecord]:
        """Audit records newest first, those with an id below ``before`` (all when None)."""
        limit = max(1, min(limit, MAX_AUDIT_PAGE))

        async def fn(tx: Tx) -> list[AuditRecord]:
            if before is None:
                rows = await tx.fetch(f"SELECT {AuditRecord.COLUMNS} FROM audit_log "
                                      "ORDER BY id DESC LIMIT $1", limit)
            else:
                rows = await tx.fetch(f"SELECT {AuditRecord.COLUMNS} FROM audit_log "
                                      "WHERE id < $1 ORDER BY id DESC LIMIT $2",
                                      before, limit)
            return [AuditRecord.from_row(r) for r in rows]
        return await self.driver.read(fn)

    async def prune_audit(self, *, older_than_s: float | None,
                          keep_max: int | None) -> int:
        """Delete audit records older than ``older_than_s`` and all but the newest
        ``keep_max`` (None: no bound of that kind); returns how many went. Called hourly by
        the leader's sweeper (services/sweeper.py); idempotent, so two replicas pruning at
        once during a leader handover do no harm."""
        async def fn(tx: Tx) -> int:
            pruned = 0
            if older_than_s is not None:
                pruned += await tx.execute("DELETE FROM audit_log WHERE at < $1",
                                           wall_now() - older_than_s)
            if keep_max is not None:
                # the id of the newest record that goes (none: NULL, nothing deleted)
                pruned += await tx.execute(
                    "DELETE FROM audit_log WHERE id <= (SELECT id FROM audit_log "
                    "ORDER BY id DESC LIMIT 1 OFFSET $1)", keep_max)
            return pruned
        return await self.driver.write(fn)


async def add_caller_audit(tx: Tx, caller: Caller, action: str, target: str | None,
                           detail: Any) -> None:
    """An effect record naming the caller's token and role."""
    await tx.execute("INSERT INTO audit_log (at, actor, action, target, detail, token_id, "
                     "role) VALUES ($1,$2,$3,$4,$5,$6,$7)", wall_now(),
                     peer_text(caller.actor), action, target, json.dumps(detail),
                     caller.token_id, caller.role)
