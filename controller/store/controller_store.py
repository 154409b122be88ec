"""The controller's store: every SQL statement the controller runs lives here.

Methods are coroutines that hand one closure to :class:`Database` (so writes group-commit);
a closure either applies all its effects or none (its own SAVEPOINT). Times are wall-clock
seconds (``REAL``); ids are opaque text.

Fencing rule: effects of an edge session are applied only while ``nodes.current_session``
names that session; a superseded or closed session's frames raise :class:`Fenced`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import sqlite3
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from tether.common.sqlitedb import Database
from tether.protocol.classes import CMD_STREAM, EVT_STREAM
from tether.protocol.codec import MAX_FRAME_BYTES
from tether.protocol.deliver import (
    command_args,
    command_kind,
    encode_deliver,
    refused_placeholder,
)
from tether.protocol.errors import AuthError, BadFrame, Conflict, NotFound, TetherError
from tether.protocol.frames import (
    CONTROL_KINDS,
    TERMINAL_STATES,
    Body,
    CmdStatus,
    Frame,
    NodeEvent,
)
from tether.protocol.streams import MAX_EPOCH

from .quotas import (
    LOW_WATER,
    Refusal,
    StoreQuotas,
    encode_event_data,
    log_chunk_size,
    node_event_refusal,
    node_event_size,
)

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


@dataclass(frozen=True, slots=True)
class SessionOpened:
    session_id: str
    resumed: bool
    cmd_epoch: int
    evt_applied: int
    evt_epoch_reset: bool
    cmd_epoch_rotated: bool
    superseded_session: str | None


@dataclass(frozen=True, slots=True)
class Poisoned:
    """A class A frame that decoded as an envelope but whose body broke the value rules
    (docs/protocol.md §5, poison frames): it takes the place of the body in
    :meth:`ControllerStore.apply_evt`, which records it as a dead letter instead of
    applying it, in the transaction that moves the cursor past it."""

    reason: str
    excerpt: str


MAX_DEAD_LETTER_REASON = 512


@dataclass(frozen=True, slots=True)
class StatusEffect:
    """What one applied cmd.status did, for events pushed to subscribers."""

    command_id: str
    state: str
    applied: bool


def _stored_json(text: str) -> Any:
    """A JSON column as written by any version (NaN included); BadFrame if unreadable."""
    try:
        return json.loads(text)
    except (ValueError, TypeError, RecursionError):
        raise BadFrame("stored args are not valid JSON") from None


def _timeline(conn: sqlite3.Connection, command_id: str, state: str, at: float,
              detail: str | None = None) -> None:
    conn.execute("INSERT INTO command_events (command_id, state, at, detail) VALUES (?,?,?,?)",
                 (command_id, state, at, detail))


class LogPage(list[dict[str, Any]]):
    """A page of log rows; ``more`` is True when a further row was stored after it when
    it was read (the page was cut by its count or its bytes)."""

    more: bool = False


def _page(cur: sqlite3.Cursor, limit: int, max_bytes: int | None) -> LogPage:
    """At most ``limit`` rows of a cursor that selects up to ``limit + 1``, and, when
    ``max_bytes`` is given, no more ``data`` bytes than that, except that a page always
    holds its first row, however large. Rows are read one by one, so a page of large chunks
    never loads more than it returns plus the one row that tells there is more."""
    out = LogPage()
    total = 0
    try:
        for row in cur:
            size = len(row["data"])
            if len(out) >= limit or (out and max_bytes is not None
                                     and total + size > max_bytes):
                out.more = True
                break
            out.append(dict(row))
            total += size
    finally:
        cur.close()  # an unfinished statement would hold the reader's snapshot open
    return out


class ControllerStore:
    def __init__(self, db: Database, *, quotas: StoreQuotas | None = None,
                 max_dead_letters_per_node: int = 1000) -> None:
        self.db = db
        # byte budgets per node and their overflow policies: store/quotas.py
        self.quotas = quotas or StoreQuotas()
        # Dead letters kept per node: the newest; older ones are deleted, and every one is
        # counted in nodes.dead_letters_total.
        self.max_dead_letters_per_node = max_dead_letters_per_node

    # -- meta and tokens ------------------------------------------------------------------

    async def controller_id(self) -> str:
        def fn(conn: sqlite3.Connection) -> str:
            row = conn.execute("SELECT value FROM meta WHERE key='controller_id'").fetchone()
            if row:
                return str(row[0])
            cid = "ctl-" + uuid.uuid4().hex[:12]
            conn.execute("INSERT INTO meta VALUES ('controller_id', ?)", (cid,))
            return cid
        return await self.db.write(fn)

    async def ensure_admin_token(self, have_file_token: str | None) -> str | None:
        """Make sure the admin token in the file is valid; returns a new token to write to
        the file when there is none (first start, or the file was removed)."""
        def fn(conn: sqlite3.Connection) -> str | None:
            if have_file_token is not None:
                row = conn.execute("SELECT role FROM operator_tokens WHERE token_hash=?",
                                   (token_hash(have_file_token),)).fetchone()
                if row:
                    return None
            token = "tok_" + secrets.token_urlsafe(32)
            conn.execute("INSERT INTO operator_tokens VALUES (?, 'admin', 'admin', ?)",
                         (token_hash(token), _now()))
            return token
        return await self.db.write(fn)

    async def operator_role(self, token: str) -> str | None:
        def fn(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT role FROM operator_tokens WHERE token_hash=?",
                               (token_hash(token),)).fetchone()
            return str(row[0]) if row else None
        return await self.db.read(fn)

    async def create_join_token(self, *, ttl_s: float, uses: int, labels: dict[str, str],
                                actor: str) -> tuple[str, float]:
        token = "join_" + secrets.token_urlsafe(24)
        expires_at = _now() + ttl_s

        def fn(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO join_tokens VALUES (?,?,?,?,?)",
                         (token_hash(token), expires_at, uses, json.dumps(labels), _now()))
            self._audit(conn, actor, "join_token.create", None, {"uses": uses, "ttl_s": ttl_s})
        await self.db.write(fn)
        return token, expires_at

    async def enroll(self, *, join_token: str, node_id: str, public_key: bytes,
                     labels: dict[str, str]) -> None:
        """Consume one use of ``join_token`` and register ``node_id`` with ``public_key``.

        Raises AuthError (401) for an unknown, expired or used-up token; Conflict (409) when
        the id belongs to another key. Re-enrolling the same key updates its labels."""
        def fn(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT expires_at, uses_left, labels FROM join_tokens "
                               "WHERE token_hash=?", (token_hash(join_token),)).fetchone()
            if row is None:
                raise AuthError("join token is unknown; create one with "
                                "'tether join-token create'", code="invalid_token")
            if row["expires_at"] < _now():
                raise AuthError("join token has expired; create a new one",
                                code="invalid_token")
            if row["uses_left"] <= 0:
                raise AuthError("join token is used up; create a new one",
                                code="invalid_token")
            existing = conn.execute("SELECT public_key FROM nodes WHERE node_id=?",
                                    (node_id,)).fetchone()
            merged = {**json.loads(row["labels"]), **labels}
            if existing is not None and bytes(existing[0]) != public_key:
                raise Conflict(f"node id {node_id!r} is enrolled with another key; enroll "
                               "with another --node-id, or from the state dir that holds "
                               "that node's key (node.key)", code="node_id_taken")
            conn.execute("UPDATE join_tokens SET uses_left = uses_left - 1 WHERE token_hash=?",
                         (token_hash(join_token),))
            if existing is None:
                conn.execute("INSERT INTO nodes (node_id, public_key, labels, created_at) "
                             "VALUES (?,?,?,?)", (node_id, public_key, json.dumps(merged),
                                                  _now()))
                for stream in (CMD_STREAM, EVT_STREAM):
                    conn.execute("INSERT INTO stream_cursors (node_id, stream, epoch) "
                                 "VALUES (?,?,?)",
                                 (node_id, stream, new_epoch() if stream == CMD_STREAM
                                  else None))
            else:
                conn.execute("UPDATE nodes SET labels=? WHERE node_id=?",
                             (json.dumps(merged), node_id))
            self._audit(conn, "node:" + node_id, "node.enroll", node_id, None)
        await self.db.write(fn)

    # -- nodes and sessions ----------------------------------------------------------------

    async def set_enabled(self, node_id: str, enabled: bool, *, actor: str) -> None:
        def fn(conn: sqlite3.Connection) -> None:
            cur = conn.execute("UPDATE nodes SET enabled=? WHERE node_id=?",
                               (int(enabled), node_id))
            if cur.rowcount == 0:
                raise NotFound(f"node {node_id!r} is not enrolled; see 'tether nodes list'")
            self._audit(conn, actor, "node.enable" if enabled else "node.disable", node_id,
                        None)
        await self.db.write(fn)

    async def node_key(self, node_id: str) -> tuple[bytes, bool] | None:
        """(public key, enabled) or None for an unknown node."""
        def fn(conn: sqlite3.Connection) -> tuple[bytes, bool] | None:
            row = conn.execute("SELECT public_key, enabled FROM nodes WHERE node_id=?",
                               (node_id,)).fetchone()
            return (bytes(row[0]), bool(row[1])) if row else None
        return await self.db.read(fn)

    async def open_session(self, *, node_id: str, remote: str, previous_session: str | None,
                           evt_epoch: int, cmd_acked: int, runtime: dict[str, Any],
                           sidecar: dict[str, Any], capabilities: Sequence[str],
                           labels: dict[str, str],
                           max_frame: int = MAX_FRAME_BYTES) -> SessionOpened:
        """Record a new session as the node's owner (fencing the previous one), reconcile
        stream epochs and cursors, apply the node's downlink ack, sequence queued commands."""
        session_id = "s_" + uuid.uuid4().hex

        def fn(conn: sqlite3.Connection) -> SessionOpened:
            now = _now()
            node = conn.execute("SELECT current_session FROM nodes WHERE node_id=?",
                                (node_id,)).fetchone()
            if node is None:
                raise NotFound(f"node {node_id!r} is not enrolled")
            superseded = node["current_session"]
            if superseded:
                conn.execute("UPDATE edge_sessions SET closed_at=?, close_code=4409, "
                             "reason='superseded' WHERE session_id=? AND closed_at IS NULL",
                             (now, superseded))
            resumed = previous_session is not None and conn.execute(
                "SELECT 1 FROM edge_sessions WHERE session_id=? AND node_id=?",
                (previous_session, node_id)).fetchone() is not None
            evt = conn.execute("SELECT epoch, applied FROM stream_cursors WHERE node_id=? AND "
                               "stream='evt'", (node_id,)).fetchone()
            cmd = conn.execute("SELECT epoch, applied, last, sent FROM stream_cursors WHERE "
                               "node_id=? AND stream='cmd'", (node_id,)).fetchone()
            # The node's epoch is any 64-bit value; SQLite integers are signed 64-bit, so it
            # is kept as text (compared for equality only).
            known = evt["epoch"]
            evt_reset = known is not None and str(known) != str(evt_epoch)
            evt_applied = evt["applied"] if known is not None and not evt_reset else 0
            if known is None or evt_reset:
                conn.execute("UPDATE stream_cursors SET epoch=?, applied=0 WHERE node_id=? AND "
                             "stream='evt'", (str(evt_epoch), node_id))
                if evt_reset:
                    self._node_event(conn, node_id, "stream.epoch_reset",
                                     {"stream": "evt", "old": int(known),
                                      "new": evt_epoch})
            cmd_epoch = cmd["epoch"]
            # The node cannot have applied what was never written to it (issue 11 item 6):
            # a cursor past the sent mark does not fit, as one past the last assigned.
            sent = min(max(cmd["sent"], cmd["applied"]), cmd["last"])
            rotate = evt_reset or not cmd["applied"] <= cmd_acked <= sent
            if rotate:
                cmd_epoch = self._rotate_cmd_epoch(conn, node_id, cmd_epoch)
                self._node_event(conn, node_id, "stream.epoch_reset",
                                 {"stream": "cmd", "old": cmd["epoch"], "new": cmd_epoch,
                                  "node_applied": cmd_acked})
            else:
                self._ack_cmd(conn, node_id, cmd_epoch, cmd_acked, now)
            conn.execute(
                "INSERT INTO edge_sessions (session_id, node_id, remote, opened_at, resumed, "
                "previous_session, runtime_version, sidecar_version) VALUES (?,?,?,?,?,?,?,?)",
                (session_id, node_id, remote, now, int(resumed), previous_session,
                 str(runtime.get("version") or ""), str(sidecar.get("version") or "")))
            conn.execute(
                "UPDATE nodes SET current_session=?, last_seen_at=?, closed_at=NULL, "
                "closed_by_goodbye=0, runtime_state=?, runtime_version=?, sidecar=?, "
                "capabilities=?, labels=json_patch(labels, ?) WHERE node_id=?",
                (session_id, now, str(runtime.get("state") or "attached"),
                 runtime.get("version"), json.dumps(sidecar), json.dumps(list(capabilities)),
                 json.dumps(labels), node_id))
            self._dispatch(conn, node_id, cmd_epoch, now, max_frame)
            return SessionOpened(session_id=session_id, resumed=resumed, cmd_epoch=cmd_epoch,
                                 evt_applied=evt_applied, evt_epoch_reset=evt_reset,
                                 cmd_epoch_rotated=rotate, superseded_session=superseded)
        return await self.db.write(fn)

    def _rotate_cmd_epoch(self, conn: sqlite3.Connection, node_id: str, old: int) -> int:
        """New downlink epoch: unacked frames are re-sequenced from 1, in their order."""
        epoch = new_epoch()
        rows = conn.execute("SELECT q, frame, command_id FROM downlink_outbox WHERE node_id=? "
                            "AND epoch=? ORDER BY q", (node_id, old)).fetchall()
        conn.execute("DELETE FROM downlink_outbox WHERE node_id=?", (node_id,))
        for q, row in enumerate(rows, start=1):
            wire = msgpack.unpackb(row["frame"], raw=False)
            wire["q"] = q
            conn.execute("INSERT INTO downlink_outbox VALUES (?,?,?,?,?)",
                         (node_id, epoch, q, msgpack.packb(wire, use_bin_type=True),
                          row["command_id"]))
            if row["command_id"]:
                conn.execute("UPDATE commands SET epoch=?, q=? WHERE command_id=?",
                             (epoch, q, row["command_id"]))
        conn.execute("UPDATE stream_cursors SET epoch=?, applied=0, last=?, sent=0 "
                     "WHERE node_id=? AND stream='cmd'", (epoch, len(rows), node_id))
        return epoch

    async def note_cmd_sent(self, node_id: str, session_id: str, epoch: int, q: int) -> None:
        """Record that the downlink was written to the node up to ``q`` in ``epoch`` (after
        the write: a crash in between only makes the node's next hello look ahead, and the
        epoch reset that follows re-sends, applied at most once per command id)."""
        def fn(conn: sqlite3.Connection) -> None:
            self._fence(conn, node_id, session_id)
            conn.execute("UPDATE stream_cursors SET sent=MAX(sent, ?) WHERE node_id=? AND "
                         "stream='cmd' AND epoch=?", (q, node_id, epoch))
        await self.db.write(fn)

    async def close_session(self, *, node_id: str, session_id: str, close_code: int | None,
                            reason: str, goodbye: bool) -> None:
        def fn(conn: sqlite3.Connection) -> None:
            now = _now()
            conn.execute("UPDATE edge_sessions SET closed_at=?, close_code=?, reason=? "
                         "WHERE session_id=? AND closed_at IS NULL",
                         (now, close_code, reason, session_id))
            conn.execute("UPDATE nodes SET current_session=NULL, closed_at=?, last_seen_at=?, "
                         "closed_by_goodbye=? WHERE node_id=? AND current_session=?",
                         (now, now, int(goodbye), node_id, session_id))
        await self.db.write(fn)

    async def close_orphan_sessions(self) -> int:
        """At start: sessions left open by a crashed controller are closed (reason
        ``controller_restart``), their nodes become stale from that moment."""
        def fn(conn: sqlite3.Connection) -> int:
            now = _now()
            cur = conn.execute("UPDATE edge_sessions SET closed_at=?, reason="
                               "'controller_restart' WHERE closed_at IS NULL", (now,))
            conn.execute("UPDATE nodes SET current_session=NULL, closed_at=? "
                         "WHERE current_session IS NOT NULL", (now,))
            return cur.rowcount
        return await self.db.write(fn)

    async def touch_nodes(self, seen: dict[str, tuple[float, str | None]]) -> None:
        """Persist last-seen times and runtime states of live sessions (one batch)."""
        if not seen:
            return

        def fn(conn: sqlite3.Connection) -> None:
            conn.executemany("UPDATE nodes SET last_seen_at=?, runtime_state=COALESCE(?, "
                             "runtime_state) WHERE node_id=?",
                             [(at, state, node) for node, (at, state) in seen.items()])
        await self.db.write(fn)

    async def list_nodes(self) -> list[dict[str, Any]]:
        def fn(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            return [dict(r) for r in conn.execute(
                "SELECT node_id, labels, enabled, created_at, current_session, last_seen_at, "
                "closed_at, closed_by_goodbye, runtime_state, runtime_version, sidecar, "
                "capabilities, policy, apps FROM nodes ORDER BY node_id")]
        return await self.db.read(fn)

    async def get_node(self, node_id: str) -> dict[str, Any] | None:
        def fn(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute(
                "SELECT node_id, labels, enabled, created_at, current_session, last_seen_at, "
                "closed_at, closed_by_goodbye, runtime_state, runtime_version, sidecar, "
                "capabilities, policy, apps FROM nodes WHERE node_id=?", (node_id,)).fetchone()
            return dict(row) if row else None
        return await self.db.read(fn)

    async def sessions(self, node_id: str, *, limit: int = 100) -> list[dict[str, Any]]:
        def fn(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            return [dict(r) for r in conn.execute(
                "SELECT session_id, opened_at, closed_at, close_code, reason, resumed, remote "
                "FROM edge_sessions WHERE node_id=? ORDER BY opened_at DESC, rowid DESC "
                "LIMIT ?", (node_id, limit))]
        return await self.db.read(fn)

    # -- downlink (cmd stream) -------------------------------------------------------------

    def _dispatch(self, conn: sqlite3.Connection, node_id: str, epoch: int,
                  now: float, max_frame: int = MAX_FRAME_BYTES) -> int:
        """Sequence the node's queued commands onto the cmd stream, oldest first; commands
        whose deadline passed become ``expired`` without ever reaching the node.

        ``max_frame`` is the node's frame cap (the session's, else the controller's). A
        command whose frame cannot be built within it (args stored by an older version that
        are not plain, or too large) becomes ``rejected`` with the reason and takes no
        sequence number, so the commands behind it go on; a stored frame over it (sequenced
        by an older version) is replaced by :func:`refused_placeholder` at the same number."""
        self._refuse_oversized_frames(conn, node_id, max_frame, now)
        rows = conn.execute("SELECT command_id, kind, args, created_at, deadline FROM commands "
                            "WHERE node_id=? AND state='queued' AND q IS NULL "
                            "ORDER BY created_at, rowid", (node_id,)).fetchall()
        if not rows:
            return 0
        last = conn.execute("SELECT last FROM stream_cursors WHERE node_id=? AND stream='cmd'",
                            (node_id,)).fetchone()[0]
        count = 0
        for row in rows:
            command_id = row["command_id"]
            if row["deadline"] is not None and row["deadline"] <= now:
                conn.execute("UPDATE commands SET state='expired', updated_at=?, error=? "
                             "WHERE command_id=?", (now, "deadline passed before delivery",
                                                    command_id))
                _timeline(conn, command_id, "expired", now, "deadline passed")
                continue
            try:
                kind = command_kind(row["kind"])
                data = encode_deliver(
                    command_id=command_id, kind=kind,
                    args=command_args(kind, _stored_json(row["args"])),
                    created_ms=int(row["created_at"] * 1000),
                    deadline_ms=None if row["deadline"] is None else int(row["deadline"] * 1000),
                    q=last + 1, max_frame=max_frame)
            except TetherError as exc:  # BadFrame or CommandTooLarge
                error = f"not delivered: {exc.message}"
                conn.execute("UPDATE commands SET state='rejected', updated_at=?, error=? "
                             "WHERE command_id=?", (now, error, command_id))
                _timeline(conn, command_id, "rejected", now, error)
                continue
            last += 1
            conn.execute("INSERT INTO downlink_outbox VALUES (?,?,?,?,?)",
                         (node_id, epoch, last, data, command_id))
            conn.execute("UPDATE commands SET epoch=?, q=? WHERE command_id=?",
                         (epoch, last, command_id))
            count += 1
        conn.execute("UPDATE stream_cursors SET last=? WHERE node_id=? AND stream='cmd'",
                     (last, node_id))
        return count

    def _refuse_oversized_frames(self, conn: sqlite3.Connection, node_id: str,
                                 max_frame: int, now: float) -> None:
        """Stored downlink frames over the node's cap could never be sent (the node closes
        with 1009 and the stream wedges): their commands become ``rejected`` and each frame
        gives way to a placeholder at the same sequence number."""
        for row in conn.execute("SELECT epoch, q, command_id, length(frame) AS size FROM "
                                "downlink_outbox WHERE node_id=? AND length(frame) > ?",
                                (node_id, max_frame)).fetchall():
            command_id = row["command_id"] or ""
            conn.execute("UPDATE downlink_outbox SET frame=? WHERE node_id=? AND epoch=? "
                         "AND q=?", (refused_placeholder(command_id=command_id, q=row["q"]),
                                     node_id, row["epoch"], row["q"]))
            error = (f"not delivered: its cmd.deliver frame is {row['size']} bytes, over "
                     f"the node's {max_frame}-byte frame limit")
            if conn.execute("UPDATE commands SET state='rejected', updated_at=?, error=? "
                            "WHERE command_id=? AND state IN ('queued', 'delivered')",
                            (now, error, command_id)).rowcount:
                _timeline(conn, command_id, "rejected", now, error)

    def _ack_cmd(self, conn: sqlite3.Connection, node_id: str, epoch: int, n: int,
                 now: float) -> list[str]:
        applied = conn.execute("SELECT applied FROM stream_cursors WHERE node_id=? AND "
                               "stream='cmd' AND epoch=?", (node_id, epoch)).fetchone()
        if applied is None or n <= applied[0]:
            return []
        conn.execute("UPDATE stream_cursors SET applied=? WHERE node_id=? AND stream='cmd'",
                     (n, node_id))
        conn.execute("DELETE FROM downlink_outbox WHERE node_id=? AND epoch=? AND q<=?",
                     (node_id, epoch, n))
        delivered = [r[0] for r in conn.execute(
            "SELECT command_id FROM commands WHERE node_id=? AND epoch=? AND q<=? AND q>? "
            "AND state='queued'", (node_id, epoch, n, applied[0]))]
        for command_id in delivered:
            conn.execute("UPDATE commands SET state='delivered', updated_at=? "
                         "WHERE command_id=?", (now, command_id))
            _timeline(conn, command_id, "delivered", now)
        return delivered

    async def ack_cmd(self, node_id: str, session_id: str, epoch: int, n: int) -> list[str]:
        """The node applied the downlink up to ``n``: drop those frames, mark delivered."""
        def fn(conn: sqlite3.Connection) -> list[str]:
            self._fence(conn, node_id, session_id)
            return self._ack_cmd(conn, node_id, epoch, n, _now())
        return await self.db.write(fn)

    async def downlink_after(self, node_id: str, epoch: int, after: int,
                             limit: int) -> list[tuple[int, bytes]]:
        def fn(conn: sqlite3.Connection) -> list[tuple[int, bytes]]:
            return [(r[0], bytes(r[1])) for r in conn.execute(
                "SELECT q, frame FROM downlink_outbox WHERE node_id=? AND epoch=? AND q>? "
                "ORDER BY q LIMIT ?", (node_id, epoch, after, limit))]
        return await self.db.read(fn)

    # -- commands ---------------------------------------------------------------------------

    async def submit_command(self, *, node_id: str, kind: str, args: dict[str, Any],
                             ttl_s: float | None, idem_key: str | None,
                             actor: str, max_frame: int = MAX_FRAME_BYTES
                             ) -> tuple[dict[str, Any], bool]:
        """Create a queued command (and sequence it when the node has a session).

        Returns (command, created); with a known ``idem_key`` the existing command is
        returned and nothing is created. ``args`` were checked by ``command_args``.
        Raises CommandTooLarge (413), storing nothing, when the command's ``cmd.deliver``
        frame would be over ``max_frame``, the node's frame cap."""
        command_id = "c_" + uuid.uuid4().hex

        def fn(conn: sqlite3.Connection) -> tuple[dict[str, Any], bool]:
            if idem_key is not None:
                row = conn.execute("SELECT command_id FROM commands WHERE node_id=? AND "
                                   "idem_key=?", (node_id, idem_key)).fetchone()
                if row:
                    return self._command(conn, row[0]), False
            node = conn.execute("SELECT current_session FROM nodes WHERE node_id=?",
                                (node_id,)).fetchone()
            if node is None:
                raise NotFound(f"node {node_id!r} is not enrolled; see 'tether nodes list'")
            now = _now()
            deadline = None if ttl_s is None else now + ttl_s
            encode_deliver(command_id=command_id, kind=kind, args=args,
                           created_ms=int(now * 1000),
                           deadline_ms=None if deadline is None else int(deadline * 1000),
                           max_frame=max_frame)  # the frame _dispatch will build, at worst
            conn.execute("INSERT INTO commands (command_id, node_id, kind, args, state, "
                         "created_at, deadline, idem_key, updated_at) "
                         "VALUES (?,?,?,?, 'queued', ?,?,?,?)",
                         (command_id, node_id, kind, json.dumps(args, allow_nan=False), now,
                          deadline, idem_key, now))
            _timeline(conn, command_id, "queued", now)
            self._audit(conn, actor, "command.submit", command_id, {"node_id": node_id,
                                                                     "kind": kind})
            if node["current_session"]:
                epoch = conn.execute("SELECT epoch FROM stream_cursors WHERE node_id=? AND "
                                     "stream='cmd'", (node_id,)).fetchone()[0]
                self._dispatch(conn, node_id, epoch, now, max_frame)
            return self._command(conn, command_id), True
        return await self.db.write(fn)

    async def control_command(self, command_id: str, action: str, *,
                              actor: str) -> tuple[dict[str, Any], bool]:
        """cancel / pause / resume a command. A command not yet sequenced is cancelled here;
        otherwise a control command (kind = ``action``, args ``{command_id}``) follows it
        on the node's stream. Returns (command, sent_to_node).

        Raises Conflict: ``command_terminal`` for a finished command,
        ``command_not_running`` to pause one that is not running, ``command_not_paused``
        to resume one that is not paused."""
        if action not in CONTROL_KINDS:
            raise ValueError(f"unknown control action {action!r}")

        def fn(conn: sqlite3.Connection) -> tuple[dict[str, Any], bool]:
            cmd = conn.execute("SELECT node_id, state, q FROM commands WHERE command_id=?",
                               (command_id,)).fetchone()
            if cmd is None:
                raise NotFound(f"command {command_id!r} does not exist")
            if cmd["state"] in TERMINAL_STATES:
                raise Conflict(f"command {command_id} is already {cmd['state']}",
                               code="command_terminal")
            if action == "pause" and cmd["state"] != "running":
                raise Conflict(f"command {command_id} is {cmd['state']}; only a running "
                               "command can be paused", code="command_not_running")
            if action == "resume" and cmd["state"] != "paused":
                raise Conflict(f"command {command_id} is {cmd['state']}; only a paused "
                               "command can be resumed", code="command_not_paused")
            now = _now()
            self._audit(conn, actor, f"command.{action}", command_id, None)
            if action == "cancel" and cmd["state"] == "queued" and cmd["q"] is None:
                conn.execute("UPDATE commands SET state='cancelled', updated_at=?, "
                             "error='cancelled before delivery' WHERE command_id=?",
                             (now, command_id))
                _timeline(conn, command_id, "cancelled", now, "cancelled before delivery")
                return self._command(conn, command_id), False
            control_id = "c_" + uuid.uuid4().hex
            conn.execute("INSERT INTO commands (command_id, node_id, kind, args, state, "
                         "created_at, updated_at) VALUES (?,?,?,?, 'queued', ?, ?)",
                         (control_id, cmd["node_id"], action,
                          json.dumps({"command_id": command_id}), now, now))
            _timeline(conn, control_id, "queued", now)
            _timeline(conn, command_id, cmd["state"], now,
                      f"{action} requested ({control_id})")
            node = conn.execute("SELECT current_session FROM nodes WHERE node_id=?",
                                (cmd["node_id"],)).fetchone()
            if node["current_session"]:
                epoch = conn.execute("SELECT epoch FROM stream_cursors WHERE node_id=? AND "
                                     "stream='cmd'", (cmd["node_id"],)).fetchone()[0]
                self._dispatch(conn, cmd["node_id"], epoch, now)
            return self._command(conn, command_id), True
        return await self.db.write(fn)

    async def expire_due(self) -> list[str]:
        """Queued, unsequenced commands past their deadline become ``expired``."""
        def fn(conn: sqlite3.Connection) -> list[str]:
            now = _now()
            ids = [r[0] for r in conn.execute(
                "SELECT command_id FROM commands WHERE state='queued' AND q IS NULL AND "
                "deadline IS NOT NULL AND deadline<=?", (now,))]
            for command_id in ids:
                conn.execute("UPDATE commands SET state='expired', updated_at=?, error=? "
                             "WHERE command_id=?", (now, "deadline passed before delivery",
                                                    command_id))
                _timeline(conn, command_id, "expired", now, "deadline passed")
            return ids
        return await self.db.write(fn)

    def _command(self, conn: sqlite3.Connection, command_id: str) -> dict[str, Any]:
        row = conn.execute("SELECT * FROM commands WHERE command_id=?",
                           (command_id,)).fetchone()
        if row is None:
            raise NotFound(f"command {command_id!r} does not exist")
        out = dict(row)
        out["timeline"] = [dict(r) for r in conn.execute(
            "SELECT state, at, detail FROM command_events WHERE command_id=? ORDER BY id",
            (command_id,))]
        return out

    async def get_command(self, command_id: str) -> dict[str, Any]:
        return await self.db.read(lambda conn: self._command(conn, command_id))

    async def list_commands(self, *, node_id: str | None, state: str | None,
                            limit: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """Newest first, without timelines; plus counts by state for the same filter."""
        def fn(conn: sqlite3.Connection) -> tuple[list[dict[str, Any]], dict[str, int]]:
            where, params = [], []
            if node_id is not None:
                where.append("node_id=?")
                params.append(node_id)
            clause = (" WHERE " + " AND ".join(where)) if where else ""
            counts = {r[0]: r[1] for r in conn.execute(
                f"SELECT state, count(*) FROM commands{clause} GROUP BY state", params)}
            if state is not None:
                clause += (" AND " if where else " WHERE ") + "state=?"
                params.append(state)
            rows = [dict(r) for r in conn.execute(
                f"SELECT * FROM commands{clause} ORDER BY created_at DESC, rowid DESC LIMIT ?",
                [*params, limit])]
            return rows, counts
        return await self.db.read(fn)

    async def command_states(self, command_ids: Sequence[str]) -> dict[str, str]:
        def fn(conn: sqlite3.Connection) -> dict[str, str]:
            out: dict[str, str] = {}
            ids = list(command_ids)
            for i in range(0, len(ids), 500):
                part = ids[i:i + 500]
                marks = ",".join("?" * len(part))
                out.update({r[0]: r[1] for r in conn.execute(
                    f"SELECT command_id, state FROM commands WHERE command_id IN ({marks})",
                    part)})
            return out
        return await self.db.read(fn)

    # -- uplink (evt stream) -----------------------------------------------------------------

    def _fence(self, conn: sqlite3.Connection, node_id: str, session_id: str) -> None:
        row = conn.execute("SELECT current_session FROM nodes WHERE node_id=?",
                           (node_id,)).fetchone()
        if row is None or row[0] != session_id:
            raise Fenced(f"session {session_id} no longer owns node {node_id}")

    async def apply_evt(self, *, node_id: str, session_id: str,
                        frames: Sequence[tuple[Frame, Body | Poisoned]]
                        ) -> list[StatusEffect]:
        """Apply consecutive ``evt`` frames (each with its body, parsed and validated by the
        gateway on arrival) and move the cursor, in one transaction. A :class:`Poisoned`
        body is not applied: it becomes a dead letter, and the cursor moves past it.

        Contract: every value in a typed body fits the store (the value rules of
        ``protocol/frames.py``), so nothing here fails because of what a peer sent."""
        def fn(conn: sqlite3.Connection) -> list[StatusEffect]:
            self._fence(conn, node_id, session_id)
            now = _now()
            effects: list[StatusEffect] = []
            charge = [0, 0]  # node events stored by this batch: settled once, below
            for frame, body in frames:
                if isinstance(body, Poisoned):
                    self._dead_letter(conn, node_id, frame, body, now)
                    continue
                if frame.k is not None and not self._first_use_of_key(conn, node_id, frame.k,
                                                                      now):
                    continue  # the key was applied before: cursor moves, effect does not
                if isinstance(body, CmdStatus):
                    effects.append(self._apply_status(conn, node_id, body, now))
                elif isinstance(body, NodeEvent):
                    kind, data = body.kind, dict(body.data)
                    self._node_event(conn, node_id, kind, data, batch=charge, now=now)
                    if kind in ("policy", "apps"):  # the latest report is the node's view
                        conn.execute(f"UPDATE nodes SET {kind}=? WHERE node_id=?",
                                     (json.dumps(data, allow_nan=False), node_id))
                else:  # a typed class A body this version records but does not interpret
                    self._node_event(conn, node_id, frame.t, body.to_body(), batch=charge,
                                     now=now)
            self._settle_events(conn, node_id, charge)
            conn.execute("UPDATE stream_cursors SET applied=? WHERE node_id=? AND stream='evt'",
                         (frames[-1][0].q, node_id))
            return effects
        return await self.db.write(fn)

    def _dead_letter(self, conn: sqlite3.Connection, node_id: str, frame: Frame,
                     poison: Poisoned, now: float) -> None:
        """Record a poison frame; keep the newest ``max_dead_letters_per_node``."""
        conn.execute("INSERT INTO dead_letters (node_id, stream, q, frame_type, frame_id, "
                     "reason, excerpt, at) VALUES (?,?,?,?,?,?,?,?)",
                     (node_id, frame.s or "", frame.q or 0, frame.t, frame.id,
                      poison.reason[:MAX_DEAD_LETTER_REASON], poison.excerpt, now))
        conn.execute("UPDATE nodes SET dead_letters_total = dead_letters_total + 1 "
                     "WHERE node_id=?", (node_id,))
        conn.execute("DELETE FROM dead_letters WHERE node_id=? AND id <= (SELECT id FROM "
                     "dead_letters WHERE node_id=? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                     (node_id, node_id, self.max_dead_letters_per_node))

    async def dead_letters(self, node_id: str, *, limit: int = 100
                           ) -> tuple[list[dict[str, Any]], int]:
        """The node's newest dead letters (newest first) and how many it ever had."""
        def fn(conn: sqlite3.Connection) -> tuple[list[dict[str, Any]], int]:
            rows = [dict(r) for r in conn.execute(
                "SELECT id, stream, q, frame_type, frame_id, reason, excerpt, at "
                "FROM dead_letters WHERE node_id=? ORDER BY id DESC LIMIT ?",
                (node_id, limit))]
            total = conn.execute("SELECT dead_letters_total FROM nodes WHERE node_id=?",
                                 (node_id,)).fetchone()
            return rows, int(total[0]) if total else 0
        return await self.db.read(fn)

    async def dead_letters_total(self) -> int:
        """Poison frames ever recorded, all nodes together (kept or since deleted)."""
        return await self.db.read(lambda conn: int(conn.execute(
            "SELECT COALESCE(SUM(dead_letters_total), 0) FROM nodes").fetchone()[0]))

    @staticmethod
    def _first_use_of_key(conn: sqlite3.Connection, node_id: str, key: str,
                          now: float) -> bool:
        """Record ``key`` for ``node_id``; False when it was seen within the window
        (PROTOCOL.md §2: a key is applied at most once per node)."""
        cur = conn.execute("INSERT OR IGNORE INTO idempotency_keys VALUES (?,?,?)",
                           (node_id, key, now))
        return cur.rowcount == 1

    async def prune_idempotency_keys(self, *, older_than_s: float = 2 * 86400) -> int:
        def fn(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM idempotency_keys WHERE at < ?",
                                (_now() - older_than_s,)).rowcount
        return await self.db.write(fn)

    def _apply_status(self, conn: sqlite3.Connection, node_id: str, st: CmdStatus,
                      now: float) -> StatusEffect:
        row = conn.execute("SELECT state, node_id FROM commands WHERE command_id=?",
                           (st.command_id,)).fetchone()
        if row is None or row["node_id"] != node_id:
            self._node_event(conn, node_id, "status.unknown_command",
                             {"command_id": st.command_id, "state": st.state})
            return StatusEffect(st.command_id, st.state, applied=False)
        if row["state"] in TERMINAL_STATES or row["state"] == st.state:
            _timeline(conn, st.command_id, st.state, now,
                      f"ignored: command already {row['state']}")
            return StatusEffect(st.command_id, row["state"], applied=False)
        if row["state"] == "queued":
            _timeline(conn, st.command_id, "delivered", now, "implied by status")
        conn.execute(
            "UPDATE commands SET state=?, updated_at=?, exit_code=COALESCE(?, exit_code), "
            "error=COALESCE(?, error), started_ms=COALESCE(?, started_ms), "
            "finished_ms=COALESCE(?, finished_ms), result=COALESCE(?, result) "
            "WHERE command_id=?",
            (st.state, now, st.exit_code, st.error, st.started_ms, st.finished_ms,
             json.dumps(dict(st.result)) if st.result else None, st.command_id))
        _timeline(conn, st.command_id, st.state, now, st.error)
        return StatusEffect(st.command_id, st.state, applied=True)

    def node_event_refusal(self, kind: str, data: Any) -> Refusal | None:
        """None when a node event may be stored, else why not (quotas.py Rule 2): for the
        gateway's rejected-frame path, before it calls :meth:`apply_evt`."""
        return node_event_refusal(kind, data, self.quotas)

    def _node_event(self, conn: sqlite3.Connection, node_id: str, kind: str,
                    data: Any, *, batch: list[int] | None = None,
                    now: float | None = None) -> Refusal | None:
        """Store one node event within the node's budgets (quotas.py Rule 2): an event
        over the per-event limit is not stored (a small ``node.event.refused`` record with
        its kind and size is, and it is counted); past the per-node budget the oldest are
        pruned. With ``batch`` ([items, bytes]), the charge is added there and settled once
        by :meth:`_settle_events` in the same transaction (one statement a batch, not one
        an event, on the throughput path). Returns the refusal, if any."""
        data_json = encode_event_data(data)
        size = node_event_size(kind, data_json)
        q = self.quotas
        if size > q.node_event_max_bytes:
            conn.execute(
                "INSERT INTO node_usage (node_id, what, refused_items, refused_bytes) "
                "VALUES (?, 'events', 1, ?) ON CONFLICT (node_id, what) DO UPDATE SET "
                "refused_items = refused_items + 1, "
                "refused_bytes = refused_bytes + excluded.refused_bytes", (node_id, size))
            logger.warning("node event over the per-event byte limit was not stored",
                           extra={"node_id": node_id, "kind": kind[:64], "bytes": size,
                                  "limit": q.node_event_max_bytes})
            refusal = node_event_refusal(kind, data, q)
            kind, data_json = "node.event.refused", encode_event_data(
                {"kind": kind[:128], "bytes": size, "limit": q.node_event_max_bytes,
                 "code": "quota_exceeded"})
            size = node_event_size(kind, data_json)
        else:
            refusal = None
        conn.execute("INSERT INTO node_events (node_id, kind, data, at, size) "
                     "VALUES (?,?,?,?,?)",
                     (node_id, kind, data_json, _now() if now is None else now, size))
        if batch is not None:
            batch[0] += 1
            batch[1] += size
        else:
            self._settle_events(conn, node_id, [1, size])
        return refusal

    def _settle_events(self, conn: sqlite3.Connection, node_id: str, charge: list[int]
                       ) -> None:
        """Charge ``charge`` ([items, bytes]) of node events to the node and prune past its
        budget (quotas.py Rule 2)."""
        if not charge[0]:
            return
        q = self.quotas
        items, total = self._charge(conn, node_id, "events", charge[0], charge[1])
        if items > q.node_events_per_node or total > q.node_events_bytes_per_node:
            self._prune(conn, node_id, "events", max_items=q.node_events_per_node,
                        max_bytes=q.node_events_bytes_per_node)

    @staticmethod
    def _charge(conn: sqlite3.Connection, node_id: str, what: str, items: int,
                nbytes: int) -> tuple[int, int]:
        """Add to the node's running totals of budget ``what``; returns the new totals."""
        row = conn.execute(
            "INSERT INTO node_usage (node_id, what, items, bytes) VALUES (?,?,?,?) "
            "ON CONFLICT (node_id, what) DO UPDATE SET items = items + excluded.items, "
            "bytes = bytes + excluded.bytes RETURNING items, bytes",
            (node_id, what, items, nbytes)).fetchone()
        return int(row[0]), int(row[1])

    def _prune(self, conn: sqlite3.Connection, node_id: str, what: str, *, max_items: int,
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
            usage = conn.execute("SELECT items, bytes FROM node_usage WHERE node_id=? AND "
                                 "what=?", (node_id, what)).fetchone()
            if usage is None or (usage[0] <= max_items and usage[1] <= max_bytes):
                return
            over_items, over_bytes = usage[0] - max_items, usage[1] - max_bytes
            if over_bytes <= 0 and what != "logs":
                # Over on rows only (the common case: small events): the cut is the
                # over_items-th oldest row, found and counted by SQLite in two statements.
                cut = conn.execute(f"SELECT id FROM {table} WHERE node_id=?{where} ORDER BY id "
                                   "LIMIT 1 OFFSET ?", (node_id, over_items - 1)).fetchone()
                if cut is not None:
                    n, freed = conn.execute(
                        f"SELECT count(*), coalesce(sum(size), 0) FROM {table} WHERE "
                        f"node_id=?{where} AND id<=?", (node_id, cut[0])).fetchone()
                    conn.execute(f"DELETE FROM {table} WHERE node_id=?{where} AND id<=?",
                                 (node_id, cut[0]))
                    self._pruned(conn, node_id, what, n, freed)
                    if what == "node_logs":
                        self._pruned(conn, node_id, "logs", n, freed)
                    continue
            extra = ", command_id IS NULL" if table == "logs" else ", 0"
            rows = conn.execute(f"SELECT id, size{extra} FROM {table} WHERE node_id=?{where} "
                                "ORDER BY id LIMIT 256", (node_id,)).fetchall()
            if not rows:  # the totals disagree with the table: trust the table
                conn.execute("UPDATE node_usage SET items=0, bytes=0 WHERE node_id=? AND "
                             "what=?", (node_id, what))
                return
            n = freed = freed_node_level = 0
            last_id = None
            for row_id, size, node_level in rows:
                if n >= over_items and freed >= over_bytes:
                    break
                n, freed, last_id = n + 1, freed + size, row_id
                freed_node_level += size if node_level else 0
            conn.execute(f"DELETE FROM {table} WHERE node_id=?{where} AND id<=?",
                         (node_id, last_id))
            self._pruned(conn, node_id, what, n, freed)
            if what == "logs" and freed_node_level:
                level_n = sum(1 for r in rows[:n] if r[2])
                self._pruned(conn, node_id, "node_logs", level_n, freed_node_level)
            elif what == "node_logs":
                self._pruned(conn, node_id, "logs", n, freed)

    @staticmethod
    def _pruned(conn: sqlite3.Connection, node_id: str, what: str, n: int,
                freed: int) -> None:
        conn.execute("UPDATE node_usage SET items = max(0, items - ?), bytes = max(0, bytes - "
                     "?), pruned_items = pruned_items + ?, pruned_bytes = pruned_bytes + ? "
                     "WHERE node_id=? AND what=?", (n, freed, n, freed, node_id, what))

    async def node_usage(self, node_id: str | None = None) -> dict[str, dict[str, int]]:
        """What each budget holds and has pruned or refused, summed over nodes (or for one
        node): for ``diag`` and the metrics."""
        def fn(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
            sql = ("SELECT what, sum(items), sum(bytes), sum(pruned_items), sum(pruned_bytes), "
                   "sum(refused_items), sum(refused_bytes) FROM node_usage")
            params: tuple[str, ...] = ()
            if node_id is not None:
                sql, params = sql + " WHERE node_id=?", (node_id,)
            return {r[0]: {"items": r[1], "bytes": r[2], "pruned_items": r[3],
                           "pruned_bytes": r[4], "refused_items": r[5],
                           "refused_bytes": r[6]}
                    for r in conn.execute(sql + " GROUP BY what", params)}
        return await self.db.read(fn)

    async def node_events(self, node_id: str, *, limit: int = 100) -> list[dict[str, Any]]:
        def fn(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            return [dict(r) for r in conn.execute(
                "SELECT id, kind, data, at FROM node_events WHERE node_id=? ORDER BY id DESC "
                "LIMIT ?", (node_id, limit))]
        return await self.db.read(fn)

    async def count_node_events(self, node_id: str, kind: str) -> int:
        return await self.db.read(lambda conn: conn.execute(
            "SELECT count(*) FROM node_events WHERE node_id=? AND kind=?",
            (node_id, kind)).fetchone()[0])

    # -- logs (class C) ----------------------------------------------------------------------

    async def append_logs(self, node_id: str,
                          chunks: Sequence[tuple[str | None, str, int, bytes, int]]
                          ) -> list[dict[str, Any]]:
        """Store log chunks (command_id, source, seq, data, dropped) within the budgets of
        quotas.py Rule 3: each command keeps its first ``log_bytes_per_command`` bytes
        (past it, bytes are counted in ``log_dropped_bytes``, not kept); the node keeps its
        newest bytes of all logs and of logs not tied to a command, the oldest are pruned
        and counted. Returns the rows stored, for live subscribers."""
        q = self.quotas
        limit = q.log_bytes_per_command

        def fn(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            now = _now()
            stored: list[dict[str, Any]] = []
            charged = {"logs": [0, 0], "node_logs": [0, 0]}  # rows, bytes
            for command_id, source, seq, data, dropped in chunks:
                if command_id is not None:
                    row = conn.execute("SELECT log_bytes, log_dropped_bytes FROM commands "
                                       "WHERE command_id=? AND node_id=?",
                                       (command_id, node_id)).fetchone()
                    if row is None:
                        continue
                    # once anything was dropped, nothing after it is kept: no splices
                    room = 0 if row[1] else max(0, limit - row[0])
                    if len(data) > room:
                        conn.execute("UPDATE commands SET log_dropped_bytes = "
                                     "log_dropped_bytes + ? WHERE command_id=?",
                                     (len(data) - room, command_id))
                        data = data[:room]
                    if not data:
                        continue
                    conn.execute("UPDATE commands SET log_bytes = log_bytes + ? "
                                 "WHERE command_id=?", (len(data), command_id))
                size = log_chunk_size(source, data)
                cur = conn.execute("INSERT INTO logs (command_id, node_id, source, seq, data, "
                                   "dropped, at, size) VALUES (?,?,?,?,?,?,?,?)",
                                   (command_id, node_id, source, seq, data, dropped, now,
                                    size))
                for what in ("logs",) if command_id is not None else ("logs", "node_logs"):
                    charged[what][0] += 1
                    charged[what][1] += size
                stored.append({"id": cur.lastrowid, "command_id": command_id,
                               "source": source, "seq": seq, "data": data,
                               "dropped": dropped})
            totals = {what: self._charge(conn, node_id, what, n, nbytes)
                      for what, (n, nbytes) in charged.items() if n}
            level = totals.get("node_logs")
            if level and (level[0] > q.node_log_chunks_per_node
                          or level[1] > q.node_log_bytes_per_node):
                self._prune(conn, node_id, "node_logs", max_items=q.node_log_chunks_per_node,
                            max_bytes=q.node_log_bytes_per_node)
            every = totals.get("logs")
            if every and every[1] > q.log_bytes_per_node:
                self._prune(conn, node_id, "logs", max_items=1 << 62,
                            max_bytes=q.log_bytes_per_node)
            return stored
        return await self.db.write(fn)

    async def node_logs(self, node_id: str, *, source: str | None, after: int = 0,
                        limit: int = 1000, max_bytes: int | None = None) -> LogPage:
        """Node-level log chunks (apps, runtime): those not tied to a command, after chunk
        id ``after``, at most ``limit`` of them and (when given) at most ``max_bytes`` of
        data, though always the first chunk; ``.more`` says whether more follow."""
        def fn(conn: sqlite3.Connection) -> LogPage:
            sql = ("SELECT id, source, seq, data, dropped FROM logs WHERE node_id=? AND "
                   "command_id IS NULL AND id>?")
            params: list[Any] = [node_id, after]
            if source is not None:
                sql += " AND source=?"
                params.append(source)
            return _page(conn.execute(sql + " ORDER BY id LIMIT ?", [*params, limit + 1]),
                         limit, max_bytes)
        return await self.db.read(fn)

    async def command_logs(self, command_id: str, *, after: int = 0, limit: int = 1000,
                           max_bytes: int | None = None) -> LogPage:
        """A command's log chunks after chunk id ``after``, bounded as :meth:`node_logs`."""
        def fn(conn: sqlite3.Connection) -> LogPage:
            return _page(conn.execute(
                "SELECT id, source, seq, data, dropped FROM logs WHERE command_id=? AND id>? "
                "ORDER BY id LIMIT ?", (command_id, after, limit + 1)), limit, max_bytes)
        return await self.db.read(fn)

    # -- audit ------------------------------------------------------------------------------

    def _audit(self, conn: sqlite3.Connection, actor: str, action: str, target: str | None,
               detail: Any) -> None:
        conn.execute("INSERT INTO audit_log (at, actor, action, target, detail) "
                     "VALUES (?,?,?,?,?)",
                     (_now(), actor, action, target, json.dumps(detail)))


