"""The controller's store: every SQL statement the controller runs lives in this package.

Each public method is one transaction, written once as ``async def fn(tx)`` in portable SQL
(controller/store/sql.py) and run by a :class:`~tether.controller.store.sql.SqlDriver`:
SQLite (``sqlite.py``, group commit on its writer thread) or PostgreSQL (``pg.py``). A
write either applies all its effects or none. Times are wall-clock seconds; ids are opaque
text; epochs are signed 64-bit integers (``domain/streams.py``).

The store only stores: what a command may do next, what a delivery carries and how an
epoch is re-sequenced are decided by ``controller/domain/commands.py``; budgets by
``quotas.py``. Results are frozen records (``records.py``) with their JSON decoded.
:class:`ControllerStore` puts together tokens, nodes, sessions and the evt stream (here)
with ``commands.py``, ``budgets.py`` and ``logs.py``.

Fencing rule: effects of an edge session are applied only while ``nodes.current_session``
names that session; a superseded or closed session's frames raise :class:`Fenced`.
Ownership: each hello's claim of a node adds one to ``nodes.owner_epoch`` (a compare-and-set
on the value it read, under the node's row lock), and the session records the epoch it
holds the node in. A session id names exactly one claim, so the fence on the session id is
the fence on that epoch.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from tether.common import failpoints
from tether.protocol.classes import CMD_STREAM, EVT_STREAM
from tether.protocol.codec import MAX_FRAME_BYTES
from tether.protocol.errors import AuthError, Conflict, NotFound, StoreError
from tether.protocol.frames import (
    TERMINAL_STATES,
    Body,
    BundleStatusReport,
    CmdStatus,
    Frame,
    NodeEvent,
)

from ..domain.commands import cmd_epoch_fits, on_status
from ..domain.streams import evt_epoch_at_hello, from_stored, to_stored
from .auth import AuthTransactions, join_token_id, operator_token_id, purge_node
from .base import (
    FOR_UPDATE,
    Fenced,
    Latencies,
    add_audit,
    add_timeline,
    new_epoch,
    opt_peer_text,
    peer_text,
    token_hash,
    wall_now,
)
from .budgets import EventBatch
from .bundles import BundleTransactions
from .commands import CommandTransactions
from .jobs import JobTransactions
from .logs import LogTransactions
from .records import (
    DeadLetter,
    LogPage,
    NodeRecord,
    Poisoned,
    SessionOpened,
    SessionRecord,
    StatusEffect,
    Touch,
    loads,
)
from .rollouts import RolloutTransactions, apply_bundle_status
from .sql import Tx

__all__ = ["ControllerStore", "Fenced", "LogPage", "Poisoned", "SessionOpened",
           "StatusEffect", "new_epoch", "token_hash"]

MAX_DEAD_LETTER_REASON = 512
_MAX_STATUS_RETRIES = 8  # compare-and-set rounds of one status (each lost one = a commit)

_FIRST_USE_OF_KEY = ("INSERT INTO idempotency_keys (node_id, k, at) VALUES ($1,$2,$3) "
                     "ON CONFLICT (node_id, k) DO NOTHING")
_MOVE_EVT_CURSOR = "UPDATE stream_cursors SET applied=$1 WHERE node_id=$2 AND stream='evt'"


class ControllerStore(CommandTransactions, LogTransactions, JobTransactions,
                      AuthTransactions, BundleTransactions, RolloutTransactions):
    """The store (:class:`~tether.controller.store.interface.Store`) over one SQL driver
    (see :class:`~tether.controller.store.base.StoreBase` for its construction)."""

    # -- health -----------------------------------------------------------------------------

    async def probe(self) -> tuple[float, float]:
        """Milliseconds of one read and of one (empty) durable commit: for ``diag``."""
        async def read(tx: Tx) -> None:
            await tx.fetchval("SELECT 1")

        async def write(tx: Tx) -> None:
            return None
        start = time.perf_counter()
        await self.driver.read(read)
        read_ms = (time.perf_counter() - start) * 1000
        start = time.perf_counter()
        await self.driver.write(write)
        return read_ms, (time.perf_counter() - start) * 1000

    def write_stats(self) -> dict[str, int]:
        """The driver's write queue and group-commit counters (0 when it keeps none)."""
        return {name: int(getattr(self.driver, name, 0))
                for name in ("pending", "batches_total", "writes_total")}

    # -- meta and tokens ------------------------------------------------------------------

    async def controller_id(self) -> str:
        candidate = "ctl-" + uuid.uuid4().hex[:12]

        async def fn(tx: Tx) -> str:
            await tx.execute("INSERT INTO meta (key, value) VALUES ('controller_id', $1) "
                             "ON CONFLICT (key) DO NOTHING", candidate)
            return str(await tx.fetchval("SELECT value FROM meta WHERE key='controller_id'"))
        return await self.driver.write(fn)

    async def ensure_admin_token(self, have_file_token: str | None) -> str | None:
        """Make sure the admin token in the file is valid; returns a new token to write to
        the file when there is none (first start, or the file was removed)."""
        async def fn(tx: Tx) -> str | None:
            if have_file_token is not None and await tx.fetchval(
                    "SELECT role FROM operator_tokens WHERE token_hash=$1 AND "
                    "role='admin' AND revoked_at IS NULL AND expires_at IS NULL",
                    token_hash(have_file_token)) is not None:
                return None  # a revoked file token is replaced: the way back in
            token = "tok_" + secrets.token_urlsafe(32)
            await tx.execute("INSERT INTO operator_tokens (token_hash, role, label, "
                             "created_at, token_id) VALUES ($1, 'admin', 'admin', $2, $3)",
                             token_hash(token), wall_now(), operator_token_id(token))
            return token
        return await self.driver.write(fn)

    async def operator_role(self, token: str) -> str | None:
        """The role of ``token`` while it is valid (not revoked, not expired), else None."""
        caller, _ = await self.operator_caller(token)
        return None if caller is None else caller.role

    async def create_join_token(self, *, ttl_s: float, uses: int, labels: dict[str, str],
                                actor: str) -> tuple[str, float]:
        token = "join_" + secrets.token_urlsafe(24)
        expires_at = wall_now() + ttl_s

        async def fn(tx: Tx) -> None:
            await tx.execute("INSERT INTO join_tokens (token_hash, expires_at, uses_left, "
                             "labels, created_at, token_id) VALUES ($1,$2,$3,$4,$5,$6)",
                             token_hash(token), expires_at, uses, json.dumps(labels),
                             wall_now(), join_token_id(token))
            await add_audit(tx, actor, "join_token.create", None, {"uses": uses, "ttl_s": ttl_s})
        await self.driver.write(fn)
        return token, expires_at

    async def enroll(self, *, join_token: str, node_id: str, public_key: bytes,
                     labels: dict[str, str]) -> None:
        """Consume one use of ``join_token`` and register ``node_id`` with ``public_key``.

        Raises AuthError (401) for an unknown, expired or used-up token; Conflict (409) when
        the id belongs to another key. Re-enrolling the same key updates its labels."""
        async def fn(tx: Tx) -> None:
            row = await tx.fetchrow("SELECT expires_at, uses_left, labels FROM join_tokens "
                                    f"WHERE token_hash=$1{FOR_UPDATE[tx.dialect]}",
                                    token_hash(join_token))
            if row is None:
                raise AuthError("join token is unknown; create one with "
                                "'tether join-token create'", code="invalid_token")
            if row["expires_at"] < wall_now():
                raise AuthError("join token has expired; create a new one",
                                code="invalid_token")
            if row["uses_left"] <= 0:
                raise AuthError("join token is used up; create a new one",
                                code="invalid_token")
            existing = await tx.fetchval("SELECT public_key FROM nodes WHERE node_id=$1",
                                         node_id)
            token_labels = loads(row["labels"], {})
            merged = {**(token_labels if isinstance(token_labels, dict) else {}), **labels}
            if existing is not None and bytes(existing) != public_key:
                raise Conflict(f"node id {node_id!r} is enrolled with another key; enroll "
                               "with another --node-id, or from the state dir that holds "
                               "that node's key (node.key)", code="node_id_taken")
            await tx.execute("UPDATE join_tokens SET uses_left = uses_left - 1 "
                             "WHERE token_hash=$1", token_hash(join_token))
            if existing is None:
                # a clean slate: rows a deleted node's last session wrote after its delete
                await purge_node(tx, node_id)
                await tx.execute("INSERT INTO nodes (node_id, public_key, labels, created_at) "
                                 "VALUES ($1,$2,$3,$4)", node_id, public_key,
                                 json.dumps(merged), wall_now())
                for stream in (CMD_STREAM, EVT_STREAM):
                    await tx.execute("INSERT INTO stream_cursors (node_id, stream, epoch) "
                                     "VALUES ($1,$2,$3)", node_id, stream,
                                     new_epoch() if stream == CMD_STREAM else None)
            else:
                await tx.execute("UPDATE nodes SET labels=$1 WHERE node_id=$2",
                                 json.dumps(merged), node_id)
            await add_audit(tx, "node:" + node_id, "node.enroll", node_id, None)
        await self.driver.write(fn)

    # -- nodes and sessions ----------------------------------------------------------------

    async def set_enabled(self, node_id: str, enabled: bool, *, actor: str) -> None:
        node_id = peer_text(node_id)

        async def fn(tx: Tx) -> None:
            if not await tx.execute("UPDATE nodes SET enabled=$1 WHERE node_id=$2",
                                    int(enabled), node_id):
                raise NotFound(f"node {node_id!r} is not enrolled; see 'tether nodes list'")
            await add_audit(tx, actor, "node.enable" if enabled else "node.disable", node_id,
                         None)
        await self.driver.write(fn)

    async def node_key(self, node_id: str) -> tuple[bytes, bool] | None:
        """(public key, enabled) or None for an unknown node."""
        node_id = peer_text(node_id)

        async def fn(tx: Tx) -> tuple[bytes, bool] | None:
            row = await tx.fetchrow("SELECT public_key, enabled FROM nodes WHERE node_id=$1",
                                    node_id)
            return (bytes(row[0]), bool(row[1])) if row else None
        return await self.driver.read(fn)

    async def open_session(self, *, node_id: str, remote: str, previous_session: str | None,
                           evt_epoch: int, cmd_acked: int, runtime: dict[str, Any],
                           sidecar: dict[str, Any], capabilities: Sequence[str],
                           labels: dict[str, str], max_frame: int = MAX_FRAME_BYTES,
                           replica_id: str | None = None) -> SessionOpened:
        """Record a new session as the node's owner (fencing the previous one, which is
        closed with 4409 at this session's open time, whichever replica held it), reconcile
        stream epochs and cursors (``domain/streams.py`` Rule 2, ``domain/commands.py``
        Rule 5), apply the node's downlink ack, sequence queued commands. ``replica_id``
        names the replica that holds the new session (None: a single controller)."""
        session_id = "s_" + uuid.uuid4().hex
        previous_session = opt_peer_text(previous_session)
        remote = peer_text(remote)

        async def fn(tx: Tx) -> SessionOpened:
            now = wall_now()
            events = EventBatch()
            node = await tx.fetchrow("SELECT current_session, current_replica, labels, "
                                     "owner_epoch FROM nodes WHERE "
                                     f"node_id=$1{FOR_UPDATE[tx.dialect]}", node_id)
            if node is None:
                raise NotFound(f"node {node_id!r} is not enrolled")
            superseded = node["current_session"]
            claimed = int(node["owner_epoch"])
            owner_epoch = claimed + 1
            if superseded:
                await tx.execute("UPDATE edge_sessions SET closed_at=$1, close_code=4409, "
                                 "reason='superseded' WHERE session_id=$2 AND "
                                 "closed_at IS NULL", now, superseded)
            resumed = previous_session is not None and await tx.fetchval(
                "SELECT 1 FROM edge_sessions WHERE session_id=$1 AND node_id=$2",
                previous_session, node_id) is not None
            evt = await tx.fetchrow("SELECT epoch, applied FROM stream_cursors WHERE "
                                    "node_id=$1 AND stream='evt'", node_id)
            cmd = await tx.fetchrow("SELECT epoch, applied, last, sent FROM stream_cursors "
                                    "WHERE node_id=$1 AND stream='cmd'", node_id)
            assert evt is not None and cmd is not None  # written with the node at enroll
            stored = evt["epoch"] if isinstance(evt["epoch"], int) else None
            evt_at = evt_epoch_at_hello(stored=stored, hello=evt_epoch,
                                        applied=int(evt["applied"]))
            if evt_at.record:
                await tx.execute("UPDATE stream_cursors SET epoch=$1, applied=0 WHERE "
                                 "node_id=$2 AND stream='evt'", to_stored(evt_epoch), node_id)
            if evt_at.reset:
                assert stored is not None
                self._node_event(node_id, "stream.epoch_reset",
                                 {"stream": "evt", "old": from_stored(stored),
                                  "new": evt_epoch}, now, events)
            cmd_epoch = int(cmd["epoch"])
            rotate = not cmd_epoch_fits(applied=cmd["applied"], acked=cmd_acked,
                                        sent=cmd["sent"], last=cmd["last"],
                                        evt_reset=evt_at.reset)
            if rotate:
                cmd_epoch = await self._rotate_cmd_epoch(tx, node_id, cmd_epoch)
                self._node_event(node_id, "stream.epoch_reset",
                                 {"stream": "cmd", "old": cmd["epoch"], "new": cmd_epoch,
                                  "node_applied": cmd_acked}, now, events)
            else:
                await self._ack_cmd(tx, node_id, cmd_epoch, cmd_acked, now)
            await tx.execute(
                "INSERT INTO edge_sessions (session_id, node_id, remote, opened_at, resumed, "
                "previous_session, runtime_version, sidecar_version, replica_id, owner_epoch) "
                "VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)",
                session_id, node_id, remote, now, int(resumed), previous_session,
                peer_text(str(runtime.get("version") or "")),
                peer_text(str(sidecar.get("version") or "")), replica_id, owner_epoch)
            known_labels = loads(node["labels"], {})
            merged = {**(known_labels if isinstance(known_labels, dict) else {}), **labels}
            version = runtime.get("version")
            # the claim: a compare-and-set on the epoch read above (under the row lock it
            # cannot lose; should it ever, nothing of this hello is committed)
            if not await tx.execute(
                    "UPDATE nodes SET current_session=$1, last_seen_at=$2, closed_at=NULL, "
                    "closed_by_goodbye=0, runtime_state=$3, runtime_version=$4, sidecar=$5, "
                    "capabilities=$6, labels=$7, current_replica=$9, owner_epoch=$10 "
                    "WHERE node_id=$8 AND owner_epoch=$11",
                    session_id, now, peer_text(str(runtime.get("state") or "attached")),
                    None if version is None else peer_text(str(version)),
                    json.dumps(sidecar), json.dumps(list(capabilities)), json.dumps(merged),
                    node_id, replica_id, owner_epoch, claimed):
                raise StoreError(f"node {node_id!r} was claimed by another hello meanwhile; "
                                 "the node retries", code="unavailable")
            if failpoints.ARMED:  # the claim written, not committed
                failpoints.hit("gateway.mid_claim")
            await self._flush(tx, node_id, events)
            await self._dispatch(tx, node_id, now, max_frame)
            return SessionOpened(session_id=session_id, resumed=resumed, cmd_epoch=cmd_epoch,
                                 evt_applied=evt_at.applied, evt_epoch_reset=evt_at.reset,
                                 cmd_epoch_rotated=rotate, superseded_session=superseded,
                                 superseded_replica=node["current_replica"] if superseded
                                 else None, owner_epoch=owner_epoch)
        return await self.driver.write(fn)

    async def note_cmd_sent(self, node_id: str, session_id: str, epoch: int, q: int) -> None:
        """Record that the downlink was written to the node up to ``q`` in ``epoch`` (after
        the write: a crash in between only makes the node's next hello look ahead, and the
        epoch reset that follows re-sends, applied at most once per command id)."""
        async def fn(tx: Tx) -> None:
            await self._fence(tx, node_id, session_id)
            await tx.execute("UPDATE stream_cursors SET sent = CASE WHEN sent > $1 THEN sent "
                             "ELSE $1 END WHERE node_id=$2 AND stream='cmd' AND epoch=$3",
                             q, node_id, epoch)
        await self.driver.write(fn)

    async def close_session(self, *, node_id: str, session_id: str, close_code: int | None,
                            reason: str, goodbye: bool) -> None:
        reason = peer_text(reason)

        async def fn(tx: Tx) -> None:
            now = wall_now()
            await tx.execute("UPDATE edge_sessions SET closed_at=$1, close_code=$2, "
                             "reason=$3 WHERE session_id=$4 AND closed_at IS NULL",
                             now, close_code, reason, session_id)
            await tx.execute("UPDATE nodes SET current_session=NULL, current_replica=NULL, "
                             "closed_at=$1, last_seen_at=$1, closed_by_goodbye=$2 "
                             "WHERE node_id=$3 AND current_session=$4", now, int(goodbye),
                             node_id, session_id)
        await self.driver.write(fn)

    async def close_orphan_sessions(self, replica_id: str | None = None) -> int:
        """At start: sessions left open by a crashed controller are closed (reason
        ``controller_restart``), their nodes become stale from that moment. With
        ``replica_id``, only the sessions that replica held (the other replicas' sessions
        are live); without, every open session (a single controller)."""
        async def fn(tx: Tx) -> int:
            now = wall_now()
            if replica_id is None:
                closed = await tx.execute("UPDATE edge_sessions SET closed_at=$1, "
                                          "reason='controller_restart' WHERE "
                                          "closed_at IS NULL", now)
                await tx.execute("UPDATE nodes SET current_session=NULL, "
                                 "current_replica=NULL, closed_at=$1 "
                                 "WHERE current_session IS NOT NULL", now)
                return closed
            closed = await tx.execute("UPDATE edge_sessions SET closed_at=$1, "
                                      "reason='controller_restart' WHERE closed_at IS NULL "
                                      "AND replica_id=$2", now, replica_id)
            await tx.execute("UPDATE nodes SET current_session=NULL, current_replica=NULL, "
                             "closed_at=$1 WHERE current_replica=$2", now, replica_id)
            return closed
        return await self.driver.write(fn)

    async def touch_nodes(self, seen: dict[str, Touch]) -> None:
        """Persist last-seen times and runtime states of live sessions (one batch). Fenced:
        a node's row is touched only while its current session is the touch's (a replica
        that lost the node cannot keep it looking alive)."""
        if not seen:
            return

        async def fn(tx: Tx) -> None:
            await tx.executemany("UPDATE nodes SET last_seen_at=$1, runtime_state="
                                 "COALESCE($2, runtime_state) WHERE node_id=$3 AND "
                                 "current_session=$4",
                                 [(t.at, t.state, node, t.session_id)
                                  for node, t in seen.items()])
        await self.driver.write(fn)

    async def list_nodes(self) -> list[NodeRecord]:
        async def fn(tx: Tx) -> list[NodeRecord]:
            return [NodeRecord.from_row(r) for r in await tx.fetch(
                f"SELECT {NodeRecord.COLUMNS} FROM nodes ORDER BY node_id")]
        return await self.driver.read(fn)

    async def get_node(self, node_id: str) -> NodeRecord | None:
        node_id = peer_text(node_id)

        async def fn(tx: Tx) -> NodeRecord | None:
            row = await tx.fetchrow(f"SELECT {NodeRecord.COLUMNS} FROM nodes WHERE "
                                    "node_id=$1", node_id)
            return None if row is None else NodeRecord.from_row(row)
        return await self.driver.read(fn)

    async def sessions(self, node_id: str, *, limit: int = 100) -> list[SessionRecord]:
        """The node's sessions, newest first."""
        node_id = peer_text(node_id)

        async def fn(tx: Tx) -> list[SessionRecord]:
            return [SessionRecord.from_row(r) for r in await tx.fetch(
                f"SELECT {SessionRecord.COLUMNS} FROM edge_sessions WHERE node_id=$1 "
                "ORDER BY opened_at DESC, seq DESC LIMIT $2", node_id, limit)]
        return await self.driver.read(fn)

    # -- uplink (evt stream) -----------------------------------------------------------------

    async def apply_evt(self, *, node_id: str, session_id: str,
                        frames: Sequence[tuple[Frame, Body | Poisoned]],
                        on_commit: Callable[[], None] | None = None
                        ) -> list[StatusEffect]:
        """Apply consecutive ``evt`` frames (each with its body, parsed and validated by the
        gateway on arrival) and move the cursor, in one transaction. A :class:`Poisoned`
        body is not applied: it becomes a dead letter, and the cursor moves past it.

        Contract: every value in a typed body fits the store (the value rules of
        ``protocol/frames.py``), so nothing here fails because of what a peer sent.
        Cost: the batch's node events are one ``executemany`` and one budget charge.
        ``on_commit`` runs right after the COMMIT, even when this call was cancelled
        meanwhile (:meth:`Tx.after_commit`)."""
        latencies: Latencies = []

        async def fn(tx: Tx) -> list[StatusEffect]:
            latencies.clear()  # a transaction run again starts over
            await self._fence(tx, node_id, session_id)
            now = wall_now()
            effects: list[StatusEffect] = []
            events = EventBatch()
            for frame, body in frames:
                if isinstance(body, Poisoned):
                    await self._dead_letter(tx, node_id, frame, body, now)
                    continue
                if frame.k is not None and not await tx.execute(_FIRST_USE_OF_KEY, node_id,
                                                                peer_text(frame.k), now):
                    continue  # the key was applied before: cursor moves, effect does not
                if isinstance(body, CmdStatus):
                    effects.append(await self._apply_status(tx, node_id, body, now, events,
                                                            latencies))
                elif isinstance(body, NodeEvent):
                    kind, data = peer_text(body.kind), dict(body.data)
                    self._node_event(node_id, kind, data, now, events)
                    if kind in ("policy", "apps", "health"):  # the latest is the node's view
                        await tx.execute(f"UPDATE nodes SET {kind}=$1 WHERE node_id=$2",
                                         json.dumps(data, allow_nan=False), node_id)
                elif isinstance(body, BundleStatusReport):  # store/rollouts.py
                    await apply_bundle_status(tx, node_id, body.status, now)
                    self._node_event(node_id, "bundle.status", body.to_body(), now, events)
                else:  # a typed class A body this version records but does not interpret
                    self._node_event(node_id, peer_text(frame.t), body.to_body(), now, events)
            await self._flush(tx, node_id, events)
            await tx.execute(_MOVE_EVT_CURSOR, frames[-1][0].q, node_id)
            if on_commit is not None:
                tx.after_commit(on_commit)
            if failpoints.ARMED:  # effects and cursor written, not committed
                failpoints.hit("gateway.after_apply_before_commit")
            return effects
        applied = await self.driver.write(fn)
        self._observe(latencies)
        return applied

    @staticmethod
    async def _delivered_to_done(tx: Tx, command_id: str, now: float,
                                 latencies: Latencies) -> None:
        """The time since the command's delivery (its first ``delivered`` in the timeline,
        which an implied delivery has just added), for a command that ends now."""
        delivered_at = await tx.fetchval("SELECT MIN(at) FROM command_events WHERE "
                                         "command_id=$1 AND state='delivered'", command_id)
        if delivered_at is not None:
            latencies.append(("done", now - float(delivered_at)))

    async def _dead_letter(self, tx: Tx, node_id: str, frame: Frame, poison: Poisoned,
                           now: float) -> None:
        """Record a poison frame; keep the newest ``max_dead_letters_per_node``."""
        await tx.execute("INSERT INTO dead_letters (node_id, stream, q, frame_type, "
                         "frame_id, reason, excerpt, at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
                         node_id, peer_text(frame.s or ""), frame.q or 0, peer_text(frame.t),
                         opt_peer_text(frame.id), peer_text(poison.reason[:MAX_DEAD_LETTER_REASON]),
                         peer_text(poison.excerpt), now)
        await tx.execute("UPDATE nodes SET dead_letters_total = dead_letters_total + 1 "
                         "WHERE node_id=$1", node_id)
        await tx.execute("DELETE FROM dead_letters WHERE node_id=$1 AND id <= (SELECT id FROM "
                         "dead_letters WHERE node_id=$1 ORDER BY id DESC LIMIT 1 OFFSET $2)",
                         node_id, self.max_dead_letters_per_node)

    async def dead_letters(self, node_id: str, *, limit: int = 100
                           ) -> tuple[list[DeadLetter], int]:
        """The node's newest dead letters (newest first) and how many it ever had."""
        node_id = peer_text(node_id)

        async def fn(tx: Tx) -> tuple[list[DeadLetter], int]:
            rows = [DeadLetter.from_row(r) for r in await tx.fetch(
                f"SELECT {DeadLetter.COLUMNS} FROM dead_letters WHERE node_id=$1 "
                "ORDER BY id DESC LIMIT $2", node_id, limit)]
            total = await tx.fetchval("SELECT dead_letters_total FROM nodes WHERE "
                                      "node_id=$1", node_id)
            return rows, int(total or 0)
        return await self.driver.read(fn)

    async def dead_letters_total(self) -> int:
        """Poison frames ever recorded, all nodes together (kept or since deleted)."""
        async def fn(tx: Tx) -> int:
            return int(await tx.fetchval(
                "SELECT COALESCE(SUM(dead_letters_total), 0) FROM nodes"))
        return await self.driver.read(fn)

    async def prune_idempotency_keys(self, *, older_than_s: float = 2 * 86400) -> int:
        async def fn(tx: Tx) -> int:
            return await tx.execute("DELETE FROM idempotency_keys WHERE at < $1",
                                    wall_now() - older_than_s)
        return await self.driver.write(fn)

    async def _apply_status(self, tx: Tx, node_id: str, st: CmdStatus, now: float,
                            events: EventBatch, latencies: Latencies) -> StatusEffect:
        """``domain/commands.py`` Rule 1. The move is a compare-and-set on the state that
        was read: when another transaction (a replica's control action) changed the
        command in between, the decision is made again on what it committed. The
        transitions it makes (delivered, implied; delivered to terminal) go to
        ``latencies``."""
        for _ in range(_MAX_STATUS_RETRIES):
            row = await tx.fetchrow("SELECT state, node_id, created_at FROM commands WHERE "
                                    "command_id=$1", peer_text(st.command_id))
            if row is None or row["node_id"] != node_id:
                self._node_event(node_id, "status.unknown_command",
                                 {"command_id": st.command_id, "state": st.state}, now,
                                 events)
                return StatusEffect(st.command_id, st.state, applied=False)
            decision = on_status(row["state"], st.state)
            if not decision.apply:
                await add_timeline(tx, st.command_id, st.state, now, decision.detail)
                return StatusEffect(st.command_id, decision.state, applied=False)
            if await tx.execute(
                    "UPDATE commands SET state=$1, updated_at=$2, "
                    "exit_code=COALESCE($3, exit_code), error=COALESCE($4, error), "
                    "started_ms=COALESCE($5, started_ms), "
                    "finished_ms=COALESCE($6, finished_ms), result=COALESCE($7, result) "
                    "WHERE command_id=$8 AND state=$9",
                    st.state, now, st.exit_code, opt_peer_text(st.error), st.started_ms,
                    st.finished_ms, json.dumps(dict(st.result)) if st.result else None,
                    st.command_id, row["state"]):
                if decision.implied_delivered:
                    await add_timeline(tx, st.command_id, "delivered", now, "implied by status")
                    latencies.append(("delivered", now - float(row["created_at"])))
                if st.state in TERMINAL_STATES and self.command_latency is not None:
                    await self._delivered_to_done(tx, st.command_id, now, latencies)
                await add_timeline(tx, st.command_id, st.state, now, opt_peer_text(st.error))
                return StatusEffect(st.command_id, st.state, applied=True)
        raise StoreError(f"command {st.command_id} kept changing while a status was applied",
                         code="unavailable")


if TYPE_CHECKING:  # ControllerStore implements the Store interface (checked by mypy)
    from .interface import Store

    _implements: type[Store] = ControllerStore
