"""The controller's store: every SQL statement the controller runs lives here.

Each public method is one transaction, written once as ``async def fn(tx)`` in portable SQL
(controller/store/sql.py) and run by a :class:`~tether.controller.store.sql.SqlDriver`:
SQLite (``sqlite.py``, group commit on its writer thread) or PostgreSQL (``pg.py``). A
write either applies all its effects or none. Times are wall-clock seconds; ids are opaque
text; epochs are signed 64-bit integers (``domain/streams.py``).

The store only stores: what a command may do next, what a delivery carries and how an
epoch is re-sequenced are decided by ``controller/domain/commands.py``; budgets by
``quotas.py``. Results are frozen records (``records.py``) with their JSON decoded.

Fencing rule: effects of an edge session are applied only while ``nodes.current_session``
names that session; a superseded or closed session's frames raise :class:`Fenced`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tether.common.sqlitedb import Database
from tether.protocol.classes import CMD_STREAM, EVT_STREAM
from tether.protocol.codec import MAX_FRAME_BYTES
from tether.protocol.deliver import encode_deliver, refused_placeholder
from tether.protocol.errors import AuthError, Conflict, NotFound, StoreError, TetherError
from tether.protocol.frames import CONTROL_KINDS, Body, CmdStatus, Frame, NodeEvent
from tether.protocol.streams import MAX_EPOCH

from ..domain.commands import ControlAction, cmd_epoch_fits, control_action, delivery, on_status
from ..domain.commands import resequence as resequence_frames
from ..domain.streams import evt_epoch_at_hello, from_stored, to_stored
from .quotas import (
    LOW_WATER,
    Refusal,
    StoreQuotas,
    encode_event_data,
    log_chunk_size,
    node_event_refusal,
    node_event_size,
)
from .records import (
    CommandEvent,
    CommandRecord,
    DeadLetter,
    LogChunk,
    LogPage,
    NodeEventRecord,
    NodeRecord,
    Poisoned,
    SessionOpened,
    SessionRecord,
    StatusEffect,
    loads,
    usage_counts,
)
from .sql import SqlDriver, Tx
from .sqlite import SqliteDriver

__all__ = ["ControllerStore", "Fenced", "LogPage", "Poisoned", "SessionOpened",
           "StatusEffect", "new_epoch", "token_hash"]

logger = logging.getLogger(__name__)


class Fenced(TetherError):
    """The session no longer owns its node: nothing it sent may be applied."""

    default_code = "superseded"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_epoch() -> int:
    return secrets.randbelow(MAX_EPOCH) + 1


def _now() -> float:
    return time.time()


def _text(value: str) -> str:
    """Peer text as every engine can hold it: NUL (which PostgreSQL's TEXT refuses) becomes
    U+FFFD, on every backend alike. JSON text needs nothing: it escapes NUL."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _opt_text(value: str | None) -> str | None:
    return None if value is None else _text(value)


MAX_DEAD_LETTER_REASON = 512
_MAX_STATUS_RETRIES = 8  # compare-and-set rounds of one status (each lost one = a commit)
_PAGE_STEP = 64  # log rows read per statement while filling a page (bounds what is loaded)

_INSERT_EVENT = "INSERT INTO node_events (node_id, kind, data, at, size) VALUES ($1,$2,$3,$4,$5)"
_FIRST_USE_OF_KEY = ("INSERT INTO idempotency_keys (node_id, k, at) VALUES ($1,$2,$3) "
                     "ON CONFLICT (node_id, k) DO NOTHING")
# Row locks, for PostgreSQL only: there, concurrent transactions (other replicas) meet, and
# the locks order them (a node, then its cmd cursor, then commands: one order, so no
# deadlock); SQLite's single writer already runs transactions one after the other.
_FOR_UPDATE = {"sqlite": "", "postgres": " FOR UPDATE"}
_FENCE = {"sqlite": "SELECT current_session FROM nodes WHERE node_id=$1",
          # shared: one session's batches do not wait for each other, but a hello that
          # takes the node waits for them, and a batch after it sees its commit (Fenced)
          "postgres": "SELECT current_session FROM nodes WHERE node_id=$1 FOR SHARE"}
_MOVE_EVT_CURSOR = "UPDATE stream_cursors SET applied=$1 WHERE node_id=$2 AND stream='evt'"


async def _timeline(tx: Tx, command_id: str, state: str, at: float,
                    detail: str | None = None) -> None:
    await tx.execute("INSERT INTO command_events (command_id, state, at, detail) "
                     "VALUES ($1,$2,$3,$4)", command_id, state, at, detail)


async def _audit(tx: Tx, actor: str, action: str, target: str | None, detail: Any) -> None:
    await tx.execute("INSERT INTO audit_log (at, actor, action, target, detail) "
                     "VALUES ($1,$2,$3,$4,$5)", _now(), actor, action, target,
                     json.dumps(detail))


class _Events:
    """Node events of one transaction, stored together by :meth:`ControllerStore._flush`
    (one ``executemany`` and one budget charge per transaction, not one per event)."""

    __slots__ = ("bytes", "refused", "rows")

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, float, int]] = []
        self.bytes = 0
        self.refused: list[int] = []  # sizes of events over the per-event limit


class ControllerStore:
    """The store (:class:`~tether.controller.store.interface.Store`) over one SQL driver.

    ``driver`` is a :class:`SqlDriver`, or a SQLite :class:`Database` (wrapped in
    :class:`SqliteDriver`). Whoever built the driver opens and closes it."""

    def __init__(self, driver: SqlDriver | Database, *, quotas: StoreQuotas | None = None,
                 max_dead_letters_per_node: int = 1000) -> None:
        self.driver: SqlDriver = (SqliteDriver(driver) if isinstance(driver, Database)
                                  else driver)
        # byte budgets per node and their overflow policies: store/quotas.py
        self.quotas = quotas or StoreQuotas()
        # Dead letters kept per node: the newest; older ones are deleted, and every one is
        # counted in nodes.dead_letters_total.
        self.max_dead_letters_per_node = max_dead_letters_per_node

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
                    "SELECT role FROM operator_tokens WHERE token_hash=$1",
                    token_hash(have_file_token)) is not None:
                return None
            token = "tok_" + secrets.token_urlsafe(32)
            await tx.execute("INSERT INTO operator_tokens (token_hash, role, label, "
                             "created_at) VALUES ($1, 'admin', 'admin', $2)",
                             token_hash(token), _now())
            return token
        return await self.driver.write(fn)

    async def operator_role(self, token: str) -> str | None:
        async def fn(tx: Tx) -> str | None:
            role = await tx.fetchval("SELECT role FROM operator_tokens WHERE token_hash=$1",
                                     token_hash(token))
            return None if role is None else str(role)
        return await self.driver.read(fn)

    async def create_join_token(self, *, ttl_s: float, uses: int, labels: dict[str, str],
                                actor: str) -> tuple[str, float]:
        token = "join_" + secrets.token_urlsafe(24)
        expires_at = _now() + ttl_s

        async def fn(tx: Tx) -> None:
            await tx.execute("INSERT INTO join_tokens (token_hash, expires_at, uses_left, "
                             "labels, created_at) VALUES ($1,$2,$3,$4,$5)",
                             token_hash(token), expires_at, uses, json.dumps(labels), _now())
            await _audit(tx, actor, "join_token.create", None, {"uses": uses, "ttl_s": ttl_s})
        await self.driver.write(fn)
        return token, expires_at

    async def enroll(self, *, join_token: str, node_id: str, public_key: bytes,
                     labels: dict[str, str]) -> None:
        """Consume one use of ``join_token`` and register ``node_id`` with ``public_key``.

        Raises AuthError (401) for an unknown, expired or used-up token; Conflict (409) when
        the id belongs to another key. Re-enrolling the same key updates its labels."""
        async def fn(tx: Tx) -> None:
            row = await tx.fetchrow("SELECT expires_at, uses_left, labels FROM join_tokens "
                                    f"WHERE token_hash=$1{_FOR_UPDATE[tx.dialect]}",
                                    token_hash(join_token))
            if row is None:
                raise AuthError("join token is unknown; create one with "
                                "'tether join-token create'", code="invalid_token")
            if row["expires_at"] < _now():
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
                await tx.execute("INSERT INTO nodes (node_id, public_key, labels, created_at) "
                                 "VALUES ($1,$2,$3,$4)", node_id, public_key,
                                 json.dumps(merged), _now())
                for stream in (CMD_STREAM, EVT_STREAM):
                    await tx.execute("INSERT INTO stream_cursors (node_id, stream, epoch) "
                                     "VALUES ($1,$2,$3)", node_id, stream,
                                     new_epoch() if stream == CMD_STREAM else None)
            else:
                await tx.execute("UPDATE nodes SET labels=$1 WHERE node_id=$2",
                                 json.dumps(merged), node_id)
            await _audit(tx, "node:" + node_id, "node.enroll", node_id, None)
        await self.driver.write(fn)

    # -- nodes and sessions ----------------------------------------------------------------

    async def set_enabled(self, node_id: str, enabled: bool, *, actor: str) -> None:
        node_id = _text(node_id)

        async def fn(tx: Tx) -> None:
            if not await tx.execute("UPDATE nodes SET enabled=$1 WHERE node_id=$2",
                                    int(enabled), node_id):
                raise NotFound(f"node {node_id!r} is not enrolled; see 'tether nodes list'")
            await _audit(tx, actor, "node.enable" if enabled else "node.disable", node_id,
                         None)
        await self.driver.write(fn)

    async def node_key(self, node_id: str) -> tuple[bytes, bool] | None:
        """(public key, enabled) or None for an unknown node."""
        node_id = _text(node_id)

        async def fn(tx: Tx) -> tuple[bytes, bool] | None:
            row = await tx.fetchrow("SELECT public_key, enabled FROM nodes WHERE node_id=$1",
                                    node_id)
            return (bytes(row[0]), bool(row[1])) if row else None
        return await self.driver.read(fn)

    async def open_session(self, *, node_id: str, remote: str, previous_session: str | None,
                           evt_epoch: int, cmd_acked: int, runtime: dict[str, Any],
                           sidecar: dict[str, Any], capabilities: Sequence[str],
                           labels: dict[str, str],
                           max_frame: int = MAX_FRAME_BYTES) -> SessionOpened:
        """Record a new session as the node's owner (fencing the previous one), reconcile
        stream epochs and cursors (``domain/streams.py`` Rule 2, ``domain/commands.py``
        Rule 5), apply the node's downlink ack, sequence queued commands."""
        session_id = "s_" + uuid.uuid4().hex
        previous_session = _opt_text(previous_session)
        remote = _text(remote)

        async def fn(tx: Tx) -> SessionOpened:
            now = _now()
            events = _Events()
            node = await tx.fetchrow("SELECT current_session, labels FROM nodes "
                                     f"WHERE node_id=$1{_FOR_UPDATE[tx.dialect]}", node_id)
            if node is None:
                raise NotFound(f"node {node_id!r} is not enrolled")
            superseded = node["current_session"]
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
                "previous_session, runtime_version, sidecar_version) "
                "VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
                session_id, node_id, remote, now, int(resumed), previous_session,
                _text(str(runtime.get("version") or "")),
                _text(str(sidecar.get("version") or "")))
            known_labels = loads(node["labels"], {})
            merged = {**(known_labels if isinstance(known_labels, dict) else {}), **labels}
            version = runtime.get("version")
            await tx.execute(
                "UPDATE nodes SET current_session=$1, last_seen_at=$2, closed_at=NULL, "
                "closed_by_goodbye=0, runtime_state=$3, runtime_version=$4, sidecar=$5, "
                "capabilities=$6, labels=$7 WHERE node_id=$8",
                session_id, now, _text(str(runtime.get("state") or "attached")),
                None if version is None else _text(str(version)), json.dumps(sidecar),
                json.dumps(list(capabilities)), json.dumps(merged), node_id)
            await self._flush(tx, node_id, events)
            await self._dispatch(tx, node_id, now, max_frame)
            return SessionOpened(session_id=session_id, resumed=resumed, cmd_epoch=cmd_epoch,
                                 evt_applied=evt_at.applied, evt_epoch_reset=evt_at.reset,
                                 cmd_epoch_rotated=rotate, superseded_session=superseded)
        return await self.driver.write(fn)

    async def _rotate_cmd_epoch(self, tx: Tx, node_id: str, old: int) -> int:
        """New downlink epoch: unacked frames are re-sequenced from 1, in their order
        (``domain/commands.py`` Rule 5)."""
        epoch = new_epoch()
        rows = await tx.fetch("SELECT frame, command_id FROM downlink_outbox WHERE "
                              "node_id=$1 AND epoch=$2 ORDER BY q", node_id, old)
        await tx.execute("DELETE FROM downlink_outbox WHERE node_id=$1", node_id)
        frames = resequence_frames([bytes(r["frame"]) for r in rows])
        if frames:
            await tx.executemany(
                "INSERT INTO downlink_outbox (node_id, epoch, q, frame, command_id) "
                "VALUES ($1,$2,$3,$4,$5)",
                [(node_id, epoch, q, frame, row["command_id"])
                 for q, (frame, row) in enumerate(zip(frames, rows, strict=True), start=1)])
            await tx.executemany("UPDATE commands SET epoch=$1, q=$2 WHERE command_id=$3",
                                 [(epoch, q, row["command_id"])
                                  for q, row in enumerate(rows, start=1)
                                  if row["command_id"]])
        await tx.execute("UPDATE stream_cursors SET epoch=$1, applied=0, last=$2, sent=0 "
                         "WHERE node_id=$3 AND stream='cmd'", epoch, len(rows), node_id)
        return epoch

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
        reason = _text(reason)

        async def fn(tx: Tx) -> None:
            now = _now()
            await tx.execute("UPDATE edge_sessions SET closed_at=$1, close_code=$2, "
                             "reason=$3 WHERE session_id=$4 AND closed_at IS NULL",
                             now, close_code, reason, session_id)
            await tx.execute("UPDATE nodes SET current_session=NULL, closed_at=$1, "
                             "last_seen_at=$1, closed_by_goodbye=$2 WHERE node_id=$3 AND "
                             "current_session=$4", now, int(goodbye), node_id, session_id)
        await self.driver.write(fn)

    async def close_orphan_sessions(self) -> int:
        """At start: sessions left open by a crashed controller are closed (reason
        ``controller_restart``), their nodes become stale from that moment."""
        async def fn(tx: Tx) -> int:
            now = _now()
            closed = await tx.execute("UPDATE edge_sessions SET closed_at=$1, "
                                      "reason='controller_restart' WHERE closed_at IS NULL",
                                      now)
            await tx.execute("UPDATE nodes SET current_session=NULL, closed_at=$1 "
                             "WHERE current_session IS NOT NULL", now)
            return closed
        return await self.driver.write(fn)

    async def touch_nodes(self, seen: dict[str, tuple[float, str | None]]) -> None:
        """Persist last-seen times and runtime states of live sessions (one batch)."""
        if not seen:
            return

        async def fn(tx: Tx) -> None:
            await tx.executemany("UPDATE nodes SET last_seen_at=$1, runtime_state="
                                 "COALESCE($2, runtime_state) WHERE node_id=$3",
                                 [(at, state, node) for node, (at, state) in seen.items()])
        await self.driver.write(fn)

    async def list_nodes(self) -> list[NodeRecord]:
        async def fn(tx: Tx) -> list[NodeRecord]:
            return [NodeRecord.from_row(r) for r in await tx.fetch(
                f"SELECT {NodeRecord.COLUMNS} FROM nodes ORDER BY node_id")]
        return await self.driver.read(fn)

    async def get_node(self, node_id: str) -> NodeRecord | None:
        node_id = _text(node_id)

        async def fn(tx: Tx) -> NodeRecord | None:
            row = await tx.fetchrow(f"SELECT {NodeRecord.COLUMNS} FROM nodes WHERE "
                                    "node_id=$1", node_id)
            return None if row is None else NodeRecord.from_row(row)
        return await self.driver.read(fn)

    async def sessions(self, node_id: str, *, limit: int = 100) -> list[SessionRecord]:
        """The node's sessions, newest first."""
        node_id = _text(node_id)

        async def fn(tx: Tx) -> list[SessionRecord]:
            return [SessionRecord.from_row(r) for r in await tx.fetch(
                f"SELECT {SessionRecord.COLUMNS} FROM edge_sessions WHERE node_id=$1 "
                "ORDER BY opened_at DESC, seq DESC LIMIT $2", node_id, limit)]
        return await self.driver.read(fn)

    # -- downlink (cmd stream) -------------------------------------------------------------

    async def _dispatch(self, tx: Tx, node_id: str, now: float,
                        max_frame: int = MAX_FRAME_BYTES) -> int:
        """Sequence the node's queued commands onto the cmd stream, oldest first, as
        ``domain/commands.py`` Rule 3 says: a command past its deadline becomes
        ``expired``, one whose frame cannot be built within ``max_frame`` (the node's frame
        cap) ``rejected``, and neither takes a sequence number. A stored frame over the cap
        (sequenced by an older version) is replaced by :func:`refused_placeholder` at the
        same number. The cmd cursor is locked first: what is queued is read after it."""
        cursor = await tx.fetchrow("SELECT epoch, last FROM stream_cursors WHERE node_id=$1 "
                                   f"AND stream='cmd'{_FOR_UPDATE[tx.dialect]}", node_id)
        assert cursor is not None  # written with the node at enroll
        epoch, last = int(cursor["epoch"]), int(cursor["last"])
        await self._refuse_oversized_frames(tx, node_id, max_frame, now)
        rows = await tx.fetch("SELECT command_id, kind, args, created_at, deadline FROM "
                              "commands WHERE node_id=$1 AND state='queued' AND q IS NULL "
                              "ORDER BY created_at, seq", node_id)
        if not rows:
            return 0
        count = 0
        for row in rows:
            command_id = row["command_id"]
            out = delivery(command_id=command_id, kind=row["kind"], args_json=row["args"],
                           created_at=row["created_at"], deadline=row["deadline"], now=now,
                           q=last + 1, max_frame=max_frame)
            if out.frame is None:
                await tx.execute("UPDATE commands SET state=$1, updated_at=$2, error=$3 "
                                 "WHERE command_id=$4", out.state, now, out.error, command_id)
                await _timeline(tx, command_id, str(out.state), now, out.detail)
                continue
            last += 1
            await tx.execute("INSERT INTO downlink_outbox (node_id, epoch, q, frame, "
                             "command_id) VALUES ($1,$2,$3,$4,$5)", node_id, epoch, last,
                             out.frame, command_id)
            await tx.execute("UPDATE commands SET epoch=$1, q=$2 WHERE command_id=$3",
                             epoch, last, command_id)
            count += 1
        await tx.execute("UPDATE stream_cursors SET last=$1 WHERE node_id=$2 AND stream='cmd'",
                         last, node_id)
        return count

    async def _refuse_oversized_frames(self, tx: Tx, node_id: str, max_frame: int,
                                       now: float) -> None:
        """Stored downlink frames over the node's cap could never be sent (the node closes
        with 1009 and the stream wedges): their commands become ``rejected`` and each frame
        gives way to a placeholder at the same sequence number."""
        for row in await tx.fetch("SELECT epoch, q, command_id, length(frame) AS size FROM "
                                  "downlink_outbox WHERE node_id=$1 AND length(frame) > $2",
                                  node_id, max_frame):
            command_id = row["command_id"] or ""
            await tx.execute("UPDATE downlink_outbox SET frame=$1 WHERE node_id=$2 AND "
                             "epoch=$3 AND q=$4",
                             refused_placeholder(command_id=command_id, q=row["q"]),
                             node_id, row["epoch"], row["q"])
            error = (f"not delivered: its cmd.deliver frame is {row['size']} bytes, over "
                     f"the node's {max_frame}-byte frame limit")
            if await tx.execute("UPDATE commands SET state='rejected', updated_at=$1, "
                                "error=$2 WHERE command_id=$3 AND state IN ('queued', "
                                "'delivered')", now, error, command_id):
                await _timeline(tx, command_id, "rejected", now, error)

    async def _ack_cmd(self, tx: Tx, node_id: str, epoch: int, n: int,
                       now: float) -> list[str]:
        """``domain/commands.py`` Rule 4."""
        applied = await tx.fetchval("SELECT applied FROM stream_cursors WHERE node_id=$1 AND "
                                    "stream='cmd' AND epoch=$2", node_id, epoch)
        if applied is None or n <= applied:
            return []
        await tx.execute("UPDATE stream_cursors SET applied=$1 WHERE node_id=$2 AND "
                         "stream='cmd'", n, node_id)
        await tx.execute("DELETE FROM downlink_outbox WHERE node_id=$1 AND epoch=$2 AND "
                         "q<=$3", node_id, epoch, n)
        delivered = [str(r[0]) for r in await tx.fetch(
            "SELECT command_id FROM commands WHERE node_id=$1 AND epoch=$2 AND q<=$3 AND "
            "q>$4 AND state='queued' ORDER BY q", node_id, epoch, n, applied)]
        done = []
        for command_id in delivered:  # unless a status moved it on since the read
            if await tx.execute("UPDATE commands SET state='delivered', updated_at=$1 "
                                "WHERE command_id=$2 AND state='queued'", now, command_id):
                await _timeline(tx, command_id, "delivered", now)
                done.append(command_id)
        return done

    async def ack_cmd(self, node_id: str, session_id: str, epoch: int, n: int) -> list[str]:
        """The node applied the downlink up to ``n``: drop those frames, mark delivered."""
        async def fn(tx: Tx) -> list[str]:
            await self._fence(tx, node_id, session_id)
            return await self._ack_cmd(tx, node_id, epoch, n, _now())
        return await self.driver.write(fn)

    async def downlink_after(self, node_id: str, epoch: int, after: int,
                             limit: int) -> list[tuple[int, bytes]]:
        async def fn(tx: Tx) -> list[tuple[int, bytes]]:
            return [(int(r[0]), bytes(r[1])) for r in await tx.fetch(
                "SELECT q, frame FROM downlink_outbox WHERE node_id=$1 AND epoch=$2 AND q>$3 "
                "ORDER BY q LIMIT $4", node_id, epoch, after, limit)]
        return await self.driver.read(fn)

    # -- commands ---------------------------------------------------------------------------

    async def submit_command(self, *, node_id: str, kind: str, args: dict[str, Any],
                             ttl_s: float | None, idem_key: str | None,
                             actor: str, max_frame: int = MAX_FRAME_BYTES
                             ) -> tuple[CommandRecord, bool]:
        """Create a queued command (and sequence it when the node has a session).

        Returns (command, created); with a known ``idem_key`` the existing command is
        returned and nothing is created (also when two submits race: the key is unique).
        ``args`` were checked by ``command_args``. Raises CommandTooLarge (413), storing
        nothing, when the command's ``cmd.deliver`` frame would be over ``max_frame``, the
        node's frame cap."""
        command_id = "c_" + uuid.uuid4().hex
        node_id, kind, idem_key = _text(node_id), _text(kind), _opt_text(idem_key)
        by_key = "SELECT command_id FROM commands WHERE node_id=$1 AND idem_key=$2"

        async def fn(tx: Tx) -> tuple[CommandRecord, bool]:
            if idem_key is not None:
                existing = await tx.fetchval(by_key, node_id, idem_key)
                if existing is not None:
                    return await self._command(tx, existing), False
            session = await tx.fetchrow("SELECT current_session FROM nodes WHERE node_id=$1",
                                        node_id)
            if session is None:
                raise NotFound(f"node {node_id!r} is not enrolled; see 'tether nodes list'")
            now = _now()
            deadline = None if ttl_s is None else now + ttl_s
            encode_deliver(command_id=command_id, kind=kind, args=args,
                           created_ms=int(now * 1000),
                           deadline_ms=None if deadline is None else int(deadline * 1000),
                           max_frame=max_frame)  # the frame _dispatch will build, at worst
            if not await tx.execute(
                    "INSERT INTO commands (command_id, node_id, kind, args, state, "
                    "created_at, deadline, idem_key, updated_at) "
                    "VALUES ($1,$2,$3,$4,'queued',$5,$6,$7,$8) "
                    "ON CONFLICT (node_id, idem_key) DO NOTHING",
                    command_id, node_id, kind, json.dumps(args, allow_nan=False), now,
                    deadline, idem_key, now):
                # another transaction stored this key since our read (another replica)
                return await self._command(tx, await tx.fetchval(by_key, node_id,
                                                                  idem_key)), False
            await _timeline(tx, command_id, "queued", now)
            await _audit(tx, actor, "command.submit", command_id,
                         {"node_id": node_id, "kind": kind})
            if session["current_session"]:
                await self._dispatch(tx, node_id, now, max_frame)
            return await self._command(tx, command_id), True
        return await self.driver.write(fn)

    async def control_command(self, command_id: str, action: str, *,
                              actor: str) -> tuple[CommandRecord, bool]:
        """cancel / pause / resume a command (``domain/commands.py`` Rule 2). A command
        not yet sequenced is cancelled here; otherwise a control command (kind =
        ``action``, args ``{command_id}``) follows it on the node's stream. Returns
        (command, sent_to_node).

        Raises Conflict: ``command_terminal`` for a finished command,
        ``command_not_running`` to pause one that is not running, ``command_not_paused``
        to resume one that is not paused."""
        if action not in CONTROL_KINDS:
            raise ValueError(f"unknown control action {action!r}")
        command_id = _text(command_id)

        async def fn(tx: Tx) -> tuple[CommandRecord, bool]:
            node_id = await tx.fetchval("SELECT node_id FROM commands WHERE command_id=$1",
                                        command_id)
            if node_id is None:
                raise NotFound(f"command {command_id!r} does not exist")
            # the node's cmd cursor first (the lock order of _dispatch), then its state
            await tx.fetchval("SELECT last FROM stream_cursors WHERE node_id=$1 AND "
                              f"stream='cmd'{_FOR_UPDATE[tx.dialect]}", node_id)
            cmd = await tx.fetchrow("SELECT state, q FROM commands WHERE command_id=$1",
                                    command_id)
            assert cmd is not None  # commands are never deleted
            how = control_action(command_id, action, cmd["state"],
                                 sequenced=cmd["q"] is not None)
            now = _now()
            await _audit(tx, actor, f"command.{action}", command_id, None)
            if how is ControlAction.CANCEL_HERE:
                if not await tx.execute("UPDATE commands SET state='cancelled', "
                                        "updated_at=$1, error='cancelled before delivery' "
                                        "WHERE command_id=$2 AND state='queued' AND "
                                        "q IS NULL", now, command_id):
                    # expired since the read (the sweeper of another replica)
                    state = await tx.fetchval("SELECT state FROM commands WHERE "
                                              "command_id=$1", command_id)
                    control_action(command_id, action, state, sequenced=True)
                    raise Conflict(f"command {command_id} is {state}", code="command_terminal")
                await _timeline(tx, command_id, "cancelled", now, "cancelled before delivery")
                return await self._command(tx, command_id), False
            control_id = "c_" + uuid.uuid4().hex
            await tx.execute("INSERT INTO commands (command_id, node_id, kind, args, state, "
                             "created_at, updated_at) VALUES ($1,$2,$3,$4,'queued',$5,$6)",
                             control_id, node_id, action,
                             json.dumps({"command_id": command_id}), now, now)
            await _timeline(tx, control_id, "queued", now)
            await _timeline(tx, command_id, cmd["state"], now,
                            f"{action} requested ({control_id})")
            if await tx.fetchval("SELECT current_session FROM nodes WHERE node_id=$1",
                                 node_id):
                await self._dispatch(tx, node_id, now)
            return await self._command(tx, command_id), True
        return await self.driver.write(fn)

    async def expire_due(self) -> list[str]:
        """Queued, unsequenced commands past their deadline become ``expired``."""
        async def fn(tx: Tx) -> list[str]:
            now = _now()
            ids = [str(r[0]) for r in await tx.fetch(
                "SELECT command_id FROM commands WHERE state='queued' AND q IS NULL AND "
                "deadline IS NOT NULL AND deadline<=$1 ORDER BY seq", now)]
            expired = []
            for command_id in ids:  # unless sequenced or ended since the read (a replica)
                if await tx.execute("UPDATE commands SET state='expired', updated_at=$1, "
                                    "error=$2 WHERE command_id=$3 AND state='queued' AND "
                                    "q IS NULL", now, "deadline passed before delivery",
                                    command_id):
                    await _timeline(tx, command_id, "expired", now, "deadline passed")
                    expired.append(command_id)
            return expired
        return await self.driver.write(fn)

    @staticmethod
    async def _command(tx: Tx, command_id: str) -> CommandRecord:
        row = await tx.fetchrow(f"SELECT {CommandRecord.COLUMNS} FROM commands WHERE "
                                "command_id=$1", command_id)
        if row is None:
            raise NotFound(f"command {command_id!r} does not exist")
        timeline = tuple(
            CommandEvent(state=str(e["state"]),
                         at=e["at"] if isinstance(e["at"], float | int) else None,
                         detail=e["detail"] if isinstance(e["detail"], str) else None)
            for e in await tx.fetch("SELECT state, at, detail FROM command_events WHERE "
                                    "command_id=$1 ORDER BY id", command_id))
        return CommandRecord.from_row(row, timeline)

    async def get_command(self, command_id: str) -> CommandRecord:
        command_id = _text(command_id)

        async def fn(tx: Tx) -> CommandRecord:
            return await self._command(tx, command_id)
        return await self.driver.read(fn)

    async def list_commands(self, *, node_id: str | None, state: str | None,
                            limit: int) -> tuple[list[CommandRecord], dict[str, int]]:
        """Newest first, without timelines; plus counts by state for the same filter."""
        node_id, state = _opt_text(node_id), _opt_text(state)

        async def fn(tx: Tx) -> tuple[list[CommandRecord], dict[str, int]]:
            where: list[str] = []
            params: list[Any] = []
            if node_id is not None:
                params.append(node_id)
                where.append(f"node_id=${len(params)}")
            clause = (" WHERE " + " AND ".join(where)) if where else ""
            counts = {str(r[0]): int(r[1]) for r in await tx.fetch(
                f"SELECT state, count(*) FROM commands{clause} GROUP BY state", *params)}
            if state is not None:
                params.append(state)
                where.append(f"state=${len(params)}")
                clause = " WHERE " + " AND ".join(where)
            params.append(limit)
            rows = [CommandRecord.from_row(r) for r in await tx.fetch(
                f"SELECT {CommandRecord.COLUMNS} FROM commands{clause} "
                f"ORDER BY created_at DESC, seq DESC LIMIT ${len(params)}", *params)]
            return rows, counts
        return await self.driver.read(fn)

    async def command_states(self, command_ids: Sequence[str]) -> dict[str, str]:
        async def fn(tx: Tx) -> dict[str, str]:
            out: dict[str, str] = {}
            ids = list(command_ids)
            for i in range(0, len(ids), 500):
                part = ids[i:i + 500]
                marks = ",".join(f"${n}" for n in range(1, len(part) + 1))
                out.update({str(r[0]): str(r[1]) for r in await tx.fetch(
                    f"SELECT command_id, state FROM commands WHERE command_id IN ({marks})",
                    *part)})
            return out
        return await self.driver.read(fn)

    # -- uplink (evt stream) -----------------------------------------------------------------

    @staticmethod
    async def _fence(tx: Tx, node_id: str, session_id: str) -> None:
        if await tx.fetchval(_FENCE[tx.dialect], node_id) != session_id:
            raise Fenced(f"session {session_id} no longer owns node {node_id}")

    async def apply_evt(self, *, node_id: str, session_id: str,
                        frames: Sequence[tuple[Frame, Body | Poisoned]]
                        ) -> list[StatusEffect]:
        """Apply consecutive ``evt`` frames (each with its body, parsed and validated by the
        gateway on arrival) and move the cursor, in one transaction. A :class:`Poisoned`
        body is not applied: it becomes a dead letter, and the cursor moves past it.

        Contract: every value in a typed body fits the store (the value rules of
        ``protocol/frames.py``), so nothing here fails because of what a peer sent.
        Cost: the batch's node events are one ``executemany`` and one budget charge."""
        async def fn(tx: Tx) -> list[StatusEffect]:
            await self._fence(tx, node_id, session_id)
            now = _now()
            effects: list[StatusEffect] = []
            events = _Events()
            for frame, body in frames:
                if isinstance(body, Poisoned):
                    await self._dead_letter(tx, node_id, frame, body, now)
                    continue
                if frame.k is not None and not await tx.execute(_FIRST_USE_OF_KEY, node_id,
                                                                _text(frame.k), now):
                    continue  # the key was applied before: cursor moves, effect does not
                if isinstance(body, CmdStatus):
                    effects.append(await self._apply_status(tx, node_id, body, now, events))
                elif isinstance(body, NodeEvent):
                    kind, data = _text(body.kind), dict(body.data)
                    self._node_event(node_id, kind, data, now, events)
                    if kind in ("policy", "apps"):  # the latest report is the node's view
                        await tx.execute(f"UPDATE nodes SET {kind}=$1 WHERE node_id=$2",
                                         json.dumps(data, allow_nan=False), node_id)
                else:  # a typed class A body this version records but does not interpret
                    self._node_event(node_id, _text(frame.t), body.to_body(), now, events)
            await self._flush(tx, node_id, events)
            await tx.execute(_MOVE_EVT_CURSOR, frames[-1][0].q, node_id)
            return effects
        return await self.driver.write(fn)

    async def _dead_letter(self, tx: Tx, node_id: str, frame: Frame, poison: Poisoned,
                           now: float) -> None:
        """Record a poison frame; keep the newest ``max_dead_letters_per_node``."""
        await tx.execute("INSERT INTO dead_letters (node_id, stream, q, frame_type, "
                         "frame_id, reason, excerpt, at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
                         node_id, _text(frame.s or ""), frame.q or 0, _text(frame.t),
                         _opt_text(frame.id), _text(poison.reason[:MAX_DEAD_LETTER_REASON]),
                         _text(poison.excerpt), now)
        await tx.execute("UPDATE nodes SET dead_letters_total = dead_letters_total + 1 "
                         "WHERE node_id=$1", node_id)
        await tx.execute("DELETE FROM dead_letters WHERE node_id=$1 AND id <= (SELECT id FROM "
                         "dead_letters WHERE node_id=$1 ORDER BY id DESC LIMIT 1 OFFSET $2)",
                         node_id, self.max_dead_letters_per_node)

    async def dead_letters(self, node_id: str, *, limit: int = 100
                           ) -> tuple[list[DeadLetter], int]:
        """The node's newest dead letters (newest first) and how many it ever had."""
        node_id = _text(node_id)

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
                                    _now() - older_than_s)
        return await self.driver.write(fn)

    async def _apply_status(self, tx: Tx, node_id: str, st: CmdStatus, now: float,
                            events: _Events) -> StatusEffect:
        """``domain/commands.py`` Rule 1. The move is a compare-and-set on the state that
        was read: when another transaction (a replica's control action) changed the
        command in between, the decision is made again on what it committed."""
        for _ in range(_MAX_STATUS_RETRIES):
            row = await tx.fetchrow("SELECT state, node_id FROM commands WHERE "
                                    "command_id=$1", _text(st.command_id))
            if row is None or row["node_id"] != node_id:
                self._node_event(node_id, "status.unknown_command",
                                 {"command_id": st.command_id, "state": st.state}, now,
                                 events)
                return StatusEffect(st.command_id, st.state, applied=False)
            decision = on_status(row["state"], st.state)
            if not decision.apply:
                await _timeline(tx, st.command_id, st.state, now, decision.detail)
                return StatusEffect(st.command_id, decision.state, applied=False)
            if await tx.execute(
                    "UPDATE commands SET state=$1, updated_at=$2, "
                    "exit_code=COALESCE($3, exit_code), error=COALESCE($4, error), "
                    "started_ms=COALESCE($5, started_ms), "
                    "finished_ms=COALESCE($6, finished_ms), result=COALESCE($7, result) "
                    "WHERE command_id=$8 AND state=$9",
                    st.state, now, st.exit_code, _opt_text(st.error), st.started_ms,
                    st.finished_ms, json.dumps(dict(st.result)) if st.result else None,
                    st.command_id, row["state"]):
                if decision.implied_delivered:
                    await _timeline(tx, st.command_id, "delivered", now, "implied by status")
                await _timeline(tx, st.command_id, st.state, now, _opt_text(st.error))
                return StatusEffect(st.command_id, st.state, applied=True)
        raise StoreError(f"command {st.command_id} kept changing while a status was applied",
                         code="unavailable")

    def node_event_refusal(self, kind: str, data: Any) -> Refusal | None:
        """None when a node event may be stored, else why not (quotas.py Rule 2): for the
        gateway's rejected-frame path, before it calls :meth:`apply_evt`."""
        return node_event_refusal(kind, data, self.quotas)

    def _node_event(self, node_id: str, kind: str, data: Any, now: float,
                    events: _Events) -> Refusal | None:
        """Add one node event to ``events`` within the node's budgets (quotas.py Rule 2):
        an event over the per-event limit is not stored (a small ``node.event.refused``
        record with its kind and size is, and it is counted). :meth:`_flush` stores them
        and prunes past the per-node budget. Returns the refusal, if any."""
        data_json = encode_event_data(data)
        size = node_event_size(kind, data_json)
        q = self.quotas
        refusal = None
        if size > q.node_event_max_bytes:
            logger.warning("node event over the per-event byte limit was not stored",
                           extra={"node_id": node_id, "kind": kind[:64], "bytes": size,
                                  "limit": q.node_event_max_bytes})
            events.refused.append(size)
            refusal = node_event_refusal(kind, data, q)
            kind, data_json = "node.event.refused", encode_event_data(
                {"kind": kind[:128], "bytes": size, "limit": q.node_event_max_bytes,
                 "code": "quota_exceeded"})
            size = node_event_size(kind, data_json)
        events.rows.append((node_id, kind, data_json, now, size))
        events.bytes += size
        return refusal

    async def _flush(self, tx: Tx, node_id: str, events: _Events) -> None:
        """Store ``events`` (in order), count the refused ones, charge the node and prune
        past its budget (quotas.py Rule 2)."""
        if events.refused:
            await tx.execute(
                "INSERT INTO node_usage (node_id, what, refused_items, refused_bytes) "
                "VALUES ($1, 'events', $2, $3) ON CONFLICT (node_id, what) DO UPDATE SET "
                "refused_items = node_usage.refused_items + excluded.refused_items, "
                "refused_bytes = node_usage.refused_bytes + excluded.refused_bytes",
                node_id, len(events.refused), sum(events.refused))
        if not events.rows:
            return
        if len(events.rows) == 1:
            await tx.execute(_INSERT_EVENT, *events.rows[0])
        else:
            await tx.executemany(_INSERT_EVENT, events.rows)
        q = self.quotas
        items, total = await self._charge(tx, node_id, "events", len(events.rows),
                                          events.bytes)
        if items > q.node_events_per_node or total > q.node_events_bytes_per_node:
            await self._prune(tx, node_id, "events", max_items=q.node_events_per_node,
                              max_bytes=q.node_events_bytes_per_node)

    async def record_node_events(self, node_id: str,
                                 items: Sequence[tuple[str, Any]]) -> list[Refusal | None]:
        """Store node events recorded by the controller itself (``kind``, ``data``), in
        one transaction, within the node's budgets; returns each one's refusal, if any."""
        async def fn(tx: Tx) -> list[Refusal | None]:
            now = _now()
            events = _Events()
            out = [self._node_event(node_id, kind, data, now, events)
                   for kind, data in items]
            await self._flush(tx, node_id, events)
            return out
        return await self.driver.write(fn)

    @staticmethod
    async def _charge(tx: Tx, node_id: str, what: str, items: int,
                      nbytes: int) -> tuple[int, int]:
        """Add to the node's running totals of budget ``what``; returns the new totals."""
        row = await tx.fetchrow(
            "INSERT INTO node_usage (node_id, what, items, bytes) VALUES ($1,$2,$3,$4) "
            "ON CONFLICT (node_id, what) DO UPDATE SET items = node_usage.items + "
            "excluded.items, bytes = node_usage.bytes + excluded.bytes RETURNING items, bytes",
            node_id, what, items, nbytes)
        assert row is not None
        return int(row[0]), int(row[1])

    async def _prune(self, tx: Tx, node_id: str, what: str, *, max_items: int,
                     max_bytes: int) -> None:
        """Delete the node's oldest rows of budget ``what`` until it is within 90% of both
        bounds (quotas.py ``LOW_WATER``: so pruning runs once per tenth of a budget, not
        on every row), counting them as pruned. Rows deleted from one log budget are also
        taken off the other ('logs' holds every 'node_logs' row)."""
        table, where = {"events": ("node_events", ""), "logs": ("logs", ""),
                        "node_logs": ("logs", " AND command_id IS NULL")}[what]
        max_items = int(max_items * LOW_WATER)
        max_bytes = int(max_bytes * LOW_WATER)
        while True:
            usage = await tx.fetchrow("SELECT items, bytes FROM node_usage WHERE "
                                      "node_id=$1 AND what=$2", node_id, what)
            if usage is None or (usage[0] <= max_items and usage[1] <= max_bytes):
                return
            over_items, over_bytes = usage[0] - max_items, usage[1] - max_bytes
            if over_bytes <= 0 and what != "logs":
                # Over on rows only (the common case: small events): the cut is the
                # over_items-th oldest row, found and counted by the engine in two statements.
                cut = await tx.fetchval(f"SELECT id FROM {table} WHERE node_id=$1{where} "
                                        "ORDER BY id LIMIT 1 OFFSET $2", node_id,
                                        over_items - 1)
                if cut is not None:
                    counted = await tx.fetchrow(
                        f"SELECT count(*), coalesce(sum(size), 0) FROM {table} WHERE "
                        f"node_id=$1{where} AND id<=$2", node_id, cut)
                    assert counted is not None
                    n, freed = int(counted[0]), int(counted[1])
                    await tx.execute(f"DELETE FROM {table} WHERE node_id=$1{where} AND "
                                     "id<=$2", node_id, cut)
                    await self._pruned(tx, node_id, what, n, freed)
                    if what == "node_logs":
                        await self._pruned(tx, node_id, "logs", n, freed)
                    continue
            level = ", command_id IS NULL" if table == "logs" else ", 0"
            rows = await tx.fetch(f"SELECT id, size{level} FROM {table} WHERE "
                                  f"node_id=$1{where} ORDER BY id LIMIT 256", node_id)
            if not rows:  # the totals disagree with the table: trust the table
                await tx.execute("UPDATE node_usage SET items=0, bytes=0 WHERE node_id=$1 "
                                 "AND what=$2", node_id, what)
                return
            n = freed = freed_node_level = level_n = 0
            last_id = None
            for row in rows:
                if n >= over_items and freed >= over_bytes:
                    break
                n, freed, last_id = n + 1, freed + int(row[1]), row[0]
                if row[2]:
                    freed_node_level += int(row[1])
                    level_n += 1
            await tx.execute(f"DELETE FROM {table} WHERE node_id=$1{where} AND id<=$2",
                             node_id, last_id)
            await self._pruned(tx, node_id, what, n, freed)
            if what == "logs" and freed_node_level:
                await self._pruned(tx, node_id, "node_logs", level_n, freed_node_level)
            elif what == "node_logs":
                await self._pruned(tx, node_id, "logs", n, freed)

    @staticmethod
    async def _pruned(tx: Tx, node_id: str, what: str, n: int, freed: int) -> None:
        await tx.execute(
            "UPDATE node_usage SET items = CASE WHEN items > $1 THEN items - $1 ELSE 0 END, "
            "bytes = CASE WHEN bytes > $2 THEN bytes - $2 ELSE 0 END, "
            "pruned_items = pruned_items + $1, pruned_bytes = pruned_bytes + $2 "
            "WHERE node_id=$3 AND what=$4", n, freed, node_id, what)

    async def node_usage(self, node_id: str | None = None) -> dict[str, dict[str, int]]:
        """What each budget holds and has pruned or refused, summed over nodes (or for one
        node): for ``diag`` and the metrics."""
        async def fn(tx: Tx) -> dict[str, dict[str, int]]:
            sql = ("SELECT what, sum(items) AS items, sum(bytes) AS bytes, "
                   "sum(pruned_items) AS pruned_items, sum(pruned_bytes) AS pruned_bytes, "
                   "sum(refused_items) AS refused_items, "
                   "sum(refused_bytes) AS refused_bytes FROM node_usage")
            params: tuple[str, ...] = ()
            if node_id is not None:
                sql, params = sql + " WHERE node_id=$1", (node_id,)
            return {str(r["what"]): usage_counts(r)
                    for r in await tx.fetch(sql + " GROUP BY what", *params)}
        return await self.driver.read(fn)

    async def node_events(self, node_id: str, *, limit: int = 100) -> list[NodeEventRecord]:
        """The node's newest events, newest first."""
        node_id = _text(node_id)

        async def fn(tx: Tx) -> list[NodeEventRecord]:
            return [NodeEventRecord.from_row(r) for r in await tx.fetch(
                "SELECT id, kind, data, at FROM node_events WHERE node_id=$1 ORDER BY id DESC "
                "LIMIT $2", node_id, limit)]
        return await self.driver.read(fn)

    async def count_node_events(self, node_id: str, kind: str) -> int:
        async def fn(tx: Tx) -> int:
            return int(await tx.fetchval("SELECT count(*) FROM node_events WHERE node_id=$1 "
                                         "AND kind=$2", node_id, kind))
        return await self.driver.read(fn)

    # -- logs (class C) ----------------------------------------------------------------------

    async def append_logs(self, node_id: str,
                          chunks: Sequence[tuple[str | None, str, int, bytes, int]]
                          ) -> list[LogChunk]:
        """Store log chunks (command_id, source, seq, data, dropped) within the budgets of
        quotas.py Rule 3: each command keeps its first ``log_bytes_per_command`` bytes
        (past it, bytes are counted in ``log_dropped_bytes``, not kept); the node keeps its
        newest bytes of all logs and of logs not tied to a command, the oldest are pruned
        and counted. Returns the chunks stored, for live subscribers."""
        q = self.quotas
        limit = q.log_bytes_per_command

        async def fn(tx: Tx) -> list[LogChunk]:
            now = _now()
            stored: list[LogChunk] = []
            charged = {"logs": [0, 0], "node_logs": [0, 0]}  # rows, bytes
            for command_id, source, seq, data, dropped in chunks:
                command_id, source = _opt_text(command_id), _text(source)
                if command_id is not None:
                    row = await tx.fetchrow("SELECT log_bytes, log_dropped_bytes FROM "
                                            "commands WHERE command_id=$1 AND node_id=$2",
                                            command_id, node_id)
                    if row is None:
                        continue
                    # once anything was dropped, nothing after it is kept: no splices
                    room = 0 if row[1] else max(0, limit - row[0])
                    if len(data) > room:
                        await tx.execute("UPDATE commands SET log_dropped_bytes = "
                                         "log_dropped_bytes + $1 WHERE command_id=$2",
                                         len(data) - room, command_id)
                        data = data[:room]
                    if not data:
                        continue
                    await tx.execute("UPDATE commands SET log_bytes = log_bytes + $1 "
                                     "WHERE command_id=$2", len(data), command_id)
                size = log_chunk_size(source, data)
                chunk_id = await tx.fetchval(
                    "INSERT INTO logs (command_id, node_id, source, seq, data, dropped, at, "
                    "size) VALUES ($1,$2,$3,$4,$5,$6,$7,$8) RETURNING id",
                    command_id, node_id, source, seq, data, dropped, now, size)
                for what in ("logs",) if command_id is not None else ("logs", "node_logs"):
                    charged[what][0] += 1
                    charged[what][1] += size
                stored.append(LogChunk(id=int(chunk_id), command_id=command_id,
                                       source=source, seq=seq, data=data, dropped=dropped))
            totals = {what: await self._charge(tx, node_id, what, n, nbytes)
                      for what, (n, nbytes) in charged.items() if n}
            level = totals.get("node_logs")
            if level and (level[0] > q.node_log_chunks_per_node
                          or level[1] > q.node_log_bytes_per_node):
                await self._prune(tx, node_id, "node_logs",
                                  max_items=q.node_log_chunks_per_node,
                                  max_bytes=q.node_log_bytes_per_node)
            every = totals.get("logs")
            if every and every[1] > q.log_bytes_per_node:
                await self._prune(tx, node_id, "logs", max_items=1 << 62,
                                  max_bytes=q.log_bytes_per_node)
            return stored
        return await self.driver.write(fn)

    async def node_logs(self, node_id: str, *, source: str | None, after: int = 0,
                        limit: int = 1000, max_bytes: int | None = None) -> LogPage:
        """Node-level log chunks (apps, runtime): those not tied to a command, after chunk
        id ``after``, at most ``limit`` of them and (when given) at most ``max_bytes`` of
        data, though always the first chunk; ``.more`` says whether more follow."""
        sql = ("SELECT id, command_id, source, seq, data, dropped FROM logs WHERE node_id=$1 "
               "AND command_id IS NULL AND id>$2")
        params: tuple[Any, ...] = (_text(node_id),)
        if source is not None:
            sql += " AND source=$3"
            params = (_text(node_id), _text(source))
        return await self.driver.read(
            lambda tx: _page(tx, sql + f" ORDER BY id LIMIT ${len(params) + 2}", params,
                             after, limit, max_bytes))

    async def command_logs(self, command_id: str, *, after: int = 0, limit: int = 1000,
                           max_bytes: int | None = None) -> LogPage:
        """A command's log chunks after chunk id ``after``, bounded as :meth:`node_logs`."""
        sql = ("SELECT id, command_id, source, seq, data, dropped FROM logs WHERE "
               "command_id=$1 AND id>$2 ORDER BY id LIMIT $3")
        return await self.driver.read(
            lambda tx: _page(tx, sql, (_text(command_id),), after, limit, max_bytes))


async def _page(tx: Tx, sql: str, params: tuple[Any, ...], after: int, limit: int,
                max_bytes: int | None) -> LogPage:
    """At most ``limit`` chunks after id ``after`` and, when ``max_bytes`` is given, no
    more ``data`` bytes than that, except that a page always holds its first chunk,
    however large. ``sql`` takes ``params``, then the id to read after (``$2``, or ``$3``
    after a source) and a row count: rows are read :data:`_PAGE_STEP` at a time, so a page
    of large chunks never loads much more than it returns."""
    out: list[LogChunk] = []
    total = 0
    cursor = after
    while True:
        want = min(_PAGE_STEP, limit + 1 - len(out))
        rows = await tx.fetch(sql, params[0], cursor, *params[1:], want)
        for row in rows:
            data = bytes(row["data"])
            if len(out) >= limit or (out and max_bytes is not None
                                     and total + len(data) > max_bytes):
                return LogPage(tuple(out), more=True)
            out.append(LogChunk(id=int(row["id"]), command_id=row["command_id"],
                                source=str(row["source"]), seq=int(row["seq"]), data=data,
                                dropped=int(row["dropped"] or 0)))
            total += len(data)
            cursor = int(row["id"])
        if len(rows) < want:
            return LogPage(tuple(out), more=False)


if TYPE_CHECKING:  # ControllerStore implements the Store interface (checked by mypy)
    from .interface import Store

    _implements: type[Store] = ControllerStore
