"""The node runtime's durable store: uplink outbox, downlink cursor, epochs, command rows.

Rule 1 (at most once): a command moves delivered -> running in the same transaction that
queues its ``running`` status, before its process starts; after a crash a ``running`` row is
reported ``failed``/``interrupted`` and never started again.
Rule 2 (exactly-once effect): a ``cmd.deliver`` is applied together with the cursor move, in
one transaction, before it is acked.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import msgpack

from tether.common import failpoints
from tether.common.sqlitedb import Database
from tether.protocol.classes import EVT_STREAM
from tether.protocol.codec import encode_sequenced
from tether.protocol.errors import BadFrame, StoreError, TetherError
from tether.protocol.fields import MAX_ERROR_LEN, MAX_ID_LEN, MAX_KIND_LEN, bounded_text
from tether.protocol.frames import (
    CONTROL_KINDS,
    TERMINAL_STATES,
    CmdDeliver,
    CmdStatus,
    Frame,
)
from tether.protocol.local import frame_local
from tether.protocol.streams import MAX_EPOCH
from tether.protocol.update import (
    BUNDLE_STOP_KIND,
    UPDATE_KIND,
    parse_bundle_stop,
    parse_update_offer,
)
from tether.tools.soak import recorder

from .outbox_tail import OutboxTail

T = TypeVar("T")

MIGRATIONS = [
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value);
    CREATE TABLE uplink_outbox (
        q INTEGER PRIMARY KEY, t TEXT NOT NULL, body BLOB NOT NULL, created_at REAL NOT NULL);
    CREATE TABLE commands (
        command_id TEXT PRIMARY KEY, q INTEGER, kind TEXT NOT NULL, args TEXT NOT NULL,
        state TEXT NOT NULL, deadline_ms INTEGER, created_ms INTEGER, received_ms INTEGER,
        started_ms INTEGER, finished_ms INTEGER, exit_code INTEGER, error TEXT);
    CREATE INDEX commands_state ON commands (state, q);
    CREATE TABLE idempotency_keys (k TEXT PRIMARY KEY, at REAL NOT NULL);
    CREATE TABLE incidents (
        id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, class TEXT NOT NULL,
        message TEXT NOT NULL)
    """,
]

MAX_REJECT_ERROR_CHARS = 1024  # the error of a bad cmd.deliver's rejected status

APP_KINDS = frozenset({"app.start", "app.stop", "app.restart", "app.status"})
KNOWN_KINDS = frozenset({"exec", "shell", "diag.ping", "file.send", *CONTROL_KINDS,
                         *APP_KINDS, UPDATE_KIND, BUNDLE_STOP_KIND})


def _ms() -> int:
    return int(time.time() * 1000)


def _bad_offer(args: Mapping[str, Any]) -> str | None:
    """Why ``update.now`` args break the contract (protocol/update.py), naming the field;
    such an offer is rejected here, before anything is fetched."""
    try:
        parse_update_offer(args)
    except BadFrame as exc:
        return exc.message
    return None


def _bad_stop(args: Mapping[str, Any]) -> str | None:
    """Why ``bundle.stop`` args break the contract, naming the field (rejected here)."""
    try:
        parse_bundle_stop(args)
    except BadFrame as exc:
        return exc.message
    return None


def _fit_error(error: str | None) -> str | None:
    """``error`` within the :data:`MAX_ERROR_LEN` characters a ``cmd.status`` error may hold,
    cut with a trailing ``…``. Errors quote what a command asked for (argv[0], paths), so a
    long request made a status the controller refused as a poison frame, and the command
    stayed ``delivered`` there for good."""
    if error is None or len(error) <= MAX_ERROR_LEN:
        return error
    return error[:MAX_ERROR_LEN - 1] + "…"


class _Appends:
    """``append_event`` calls gathered for one write closure. Rows join on the event loop
    until the writer thread closes the group as it starts inserting them (a lock orders
    the two); a call that finds it closed starts the next group."""

    __slots__ = ("_closed", "_lock", "futures", "rows")

    def __init__(self) -> None:
        self.rows: list[tuple[str, dict[str, Any]]] = []
        self.futures: list[asyncio.Future[int]] = []
        self._closed = False
        self._lock = threading.Lock()

    def join(self, t: str, body: dict[str, Any], future: asyncio.Future[int]) -> bool:
        with self._lock:
            if self._closed:
                return False
            self.rows.append((t, body))
            self.futures.append(future)
            return True

    def close(self) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            self._closed = True
        return self.rows


@dataclass(slots=True)
class StreamState:
    evt_epoch: int
    evt_last: int
    evt_acked: int
    cmd_epoch: int | None
    cmd_applied: int
    session_id: str | None


@dataclass(frozen=True, slots=True)
class Applied:
    """What one applied downlink batch produced: commands to run, and whether any status
    went into the outbox (so the uplink should be woken)."""

    to_run: list[dict[str, Any]]
    to_control: list[tuple[str, str, dict[str, Any]]]  # (id, cancel|pause|resume, args)
    outbox_last: int


class NodeStore:
    def __init__(self, path: Path, *, durability: str = "fsync") -> None:
        self.db = Database(path, migrations=MIGRATIONS, durability=durability)
        # The last evt sequence assigned, as the writer thread's open transaction sees it;
        # None: read it from the store. Touched only in the writer thread; dropped on any
        # rollback, so that it never runs ahead of what is on disk.
        self._evt_last_w: int | None = None
        self.db.on_rollback = self._forget_evt_last
        # The rows the running closure appended (writer thread only; see _write), and the
        # generation of the outbox's sequence numbers as the writer thread sees it (a new
        # evt epoch moves it).
        self._fresh_w: list[tuple[int, str, bytes]] = []
        self._generation_w = 0
        self.tail = OutboxTail()
        self._appends: _Appends | None = None
        self._append_writes: set[asyncio.Task[None]] = set()  # owned: close() awaits them
        # History recorder only (tools/soak/recorder.py): the evt epoch, and the frame id of
        # each re-sequenced row (new q -> the id of its first append), so that a frame keeps
        # one id across epochs within this process. Records of what a write closure did wait
        # in _rec_pending_w (writer thread) and are written right after the COMMIT, in the
        # writer thread, before any caller hears of it: a crash after that COMMIT (another
        # closure's failpoint, kill -9) cannot leave a committed frame unrecorded.
        self._rec_epoch = 0
        self._rec_ids: dict[int, str] = {}
        self._rec_pending_w: list[dict[str, Any]] = []
        self.rec_node = ""  # the node's id, set by the runtime (recorder records only)
        if recorder.ARMED:
            self.db.on_commit = self._rec_committed

    def _forget_evt_last(self) -> None:
        self._evt_last_w = None

    @staticmethod
    def _read_evt_last(conn: sqlite3.Connection) -> int:
        """``evt_last`` is not written per append: it is the highest of the recorded value,
        the acked cursor and the outbox's last row (appends only insert their row)."""
        row = conn.execute(
            "SELECT max((SELECT CAST(value AS INTEGER) FROM meta WHERE key='evt_last'), "
            "(SELECT CAST(value AS INTEGER) FROM meta WHERE key='evt_acked'), "
            "(SELECT coalesce(max(q), 0) FROM uplink_outbox))").fetchone()
        return int(row[0])

    async def open(self) -> StreamState:
        await self.db.open()
        created: list[int] = []  # the evt epoch of a store created by this open
        unacked: list[int] = []  # recorder only: the outbox's rows

        def fn(conn: sqlite3.Connection) -> StreamState:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            if recorder.ARMED:
                unacked.extend(q for (q,) in conn.execute(
                    "SELECT q FROM uplink_outbox ORDER BY q"))
            if "evt_epoch" not in meta:
                meta = {"evt_epoch": secrets.randbelow(MAX_EPOCH) + 1, "evt_last": 0,
                        "evt_acked": 0, "cmd_epoch": None, "cmd_applied": 0,
                        "session_id": None}
                conn.executemany("INSERT INTO meta VALUES (?,?)", list(meta.items()))
                created.append(int(meta["evt_epoch"]))
            return StreamState(int(meta["evt_epoch"]), self._read_evt_last(conn),
                               int(meta["evt_acked"]),
                               None if meta["cmd_epoch"] is None else int(meta["cmd_epoch"]),
                               int(meta["cmd_applied"]), meta["session_id"])
        state = await self.db.write(fn)
        self._rec_epoch = state.evt_epoch
        if recorder.ARMED and created:  # a new store: what an older one held is lost
            recorder.record("epoch", node=self.rec_node, stream="evt", epoch=created[0],
                            reason="sender_store_lost")
        elif recorder.ARMED:  # what a kill between a COMMIT and its records left unrecorded
            if state.cmd_epoch is not None:
                recorder.record("recovered", node=self.rec_node, stream="cmd",
                                epoch=state.cmd_epoch, cursor=state.cmd_applied)
            for q in unacked:
                recorder.record("pending", node=self.rec_node, stream="evt",
                                epoch=state.evt_epoch, q=q, frame_id=f"{state.evt_epoch}.{q}")
        return state

    async def close(self) -> None:
        """Finish the writes queued (appends included), then close the database."""
        await asyncio.gather(*self._append_writes, return_exceptions=True)
        await self.db.close()

    # -- outbox (evt) -------------------------------------------------------------------

    def _insert(self, conn: sqlite3.Connection, t: str,
                body: dict[str, Any]) -> tuple[int, bytes]:
        """Insert one outbox row (one statement); writer thread only. Returns its sequence
        number and encoded body: encoded once, the row holds it and the frame the link
        sends is spliced around it."""
        last = self._evt_last_w
        if last is None:
            last = self._read_evt_last(conn)
        packed: bytes = msgpack.packb(body, use_bin_type=True)
        conn.execute("INSERT INTO uplink_outbox VALUES (?,?,?,?)",
                     (last + 1, t, packed, time.time()))
        self._evt_last_w = last + 1
        return last + 1, packed

    def _append(self, conn: sqlite3.Connection, t: str, body: dict[str, Any]) -> int:
        """:meth:`_insert`, the row noted for :attr:`tail` (see :meth:`_write`)."""
        q, packed = self._insert(conn, t, body)
        self._fresh_w.append((q, t, packed))
        return q

    async def _write(self, fn: Callable[[sqlite3.Connection], T], *,
                     savepoint: bool = True) -> T:
        """:meth:`Database.write` for a closure that may append to the outbox: what it
        appended reaches :attr:`tail` once its COMMIT is done (outbox_tail.py, Rule 1).
        A closure that raises was rolled back: what it appended is forgotten with it."""
        def run(conn: sqlite3.Connection) -> tuple[T, list[tuple[int, str, bytes]], int]:
            self._fresh_w = []
            try:
                result = fn(conn)
                if recorder.ARMED:
                    for q, _, _ in self._fresh_w:
                        self._rec_append_w(q)
                return result, self._fresh_w, self._generation_w
            finally:
                self._fresh_w = []
        result, fresh, generation = await self.db.write(run, savepoint=savepoint)
        if fresh:
            if failpoints.ARMED:  # committed (a command's status); nothing sent
                failpoints.hit("outbox.after_append")
            self.tail.add(fresh, generation)
        return result

    def _rec_append_w(self, q: int) -> None:
        """Writer thread, recorder armed: ``append`` of outbox row ``q`` once committed, under
        its first (epoch, q) as frame id (or the id it kept through a re-sequencing)."""
        self._rec_pending_w.append({
            "ev": "append", "node": self.rec_node, "stream": "evt", "epoch": self._rec_epoch,
            "frame_id": self._rec_ids.get(q, f"{self._rec_epoch}.{q}"), "q": q})

    def _rec_committed(self, committed: bool) -> None:
        """Writer thread (``Database.on_commit``): write the records of a committed batch;
        forget those of one rolled back."""
        pending, self._rec_pending_w = self._rec_pending_w, []
        if committed:
            for fields in pending:
                recorder.record(fields.pop("ev"), **fields)

    def _status(self, conn: sqlite3.Connection, status: CmdStatus) -> int:
        return self._append(conn, status.TYPE, status.to_body())

    async def append_event(self, t: str, body: dict[str, Any]) -> int:
        """Queue one class A evt frame; returns its sequence number once it is committed.

        The hot path of class A: calls made while a write of appends waits for the writer
        thread join it (:class:`_Appends`), so that many appends cost one closure and one
        ``executemany``; each caller still returns only after the COMMIT that holds its
        row, and a body that cannot be encoded fails alone. A caller cancelled while its
        row waits does not take it out of the group: the row may still be committed (as
        a write cancelled once the writer took it always could be)."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        group = self._appends
        if group is None or not group.join(t, body, future):
            group = self._appends = _Appends()
            group.join(t, body, future)
            task = asyncio.create_task(self._write_appends(group), name="node-store-appends")
            self._append_writes.add(task)
            task.add_done_callback(self._append_writes.discard)
        return await future

    async def _write_appends(self, group: _Appends) -> None:
        try:
            q0, packed, generation = await self.db.write(
                lambda conn: self._insert_appends(conn, group))
        except Exception as exc:
            group.close()  # (the writer may never have taken it) later calls start anew
            for future in group.futures:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:  # cancelled: the callers must not wait for good
            group.close()
            for future in group.futures:
                if not future.done():
                    future.set_exception(StoreError(
                        "the write of this event was cancelled (the node is stopping); it "
                        "may or may not be in the outbox", code="unavailable"))
            raise
        if failpoints.ARMED:  # committed; no caller told, nothing sent
            failpoints.hit("outbox.after_append")
        q = q0
        tail = self.tail
        for (t, _), future, body in zip(group.rows, group.futures, packed, strict=True):
            if isinstance(body, Exception):
                if not future.done():
                    future.set_exception(body)
                continue
            tail.add_one(q, t, body, generation)
            if not future.done():
                future.set_result(q)
            q += 1

    def _insert_appends(self, conn: sqlite3.Connection,
                        group: _Appends) -> tuple[int, list[bytes | Exception], int]:
        """Writer thread: close ``group`` and insert its rows in one statement."""
        rows = group.close()
        last = self._evt_last_w
        if last is None:
            last = self._read_evt_last(conn)
        packed: list[bytes | Exception] = []
        params: list[tuple[int, str, bytes, float]] = []
        now = time.time()
        for t, body in rows:
            try:
                data: bytes = msgpack.packb(body, use_bin_type=True)
            except Exception as exc:
                packed.append(exc)
                continue
            packed.append(data)
            params.append((last + 1 + len(params), t, data, now))
        conn.executemany("INSERT INTO uplink_outbox VALUES (?,?,?,?)", params)
        self._evt_last_w = last + len(params)
        if recorder.ARMED:
            for q in range(last + 1, last + 1 + len(params)):
                self._rec_append_w(q)
        return last + 1, packed, self._generation_w

    def encoded_run(self, first: int, last: int) -> list[bytes]:
        """Frames ``first``..``last`` from memory, encoded for the link, as far as they are
        there in a row (outbox_tail.py); the rest is for :meth:`outbox_after`."""
        return self.tail.run(first, last)

    async def outbox_after(self, after: int, limit: int, *,
                           max_bytes: int = 1 << 20) -> list[Frame]:
        """Up to ``limit`` outbox frames after ``after``, in order, stopping once their
        bodies reach ``max_bytes`` (at least one frame when there is one)."""
        def fn(conn: sqlite3.Connection) -> list[Frame]:
            out: list[Frame] = []
            size = 0
            for q, t, body in conn.execute("SELECT q, t, body FROM uplink_outbox WHERE q>? "
                                           "ORDER BY q LIMIT ?", (after, limit)):
                out.append(Frame(t=t, b=msgpack.unpackb(body, raw=False), s=EVT_STREAM, q=q))
                size += len(body)
                if size >= max_bytes:
                    break
            return out
        return await self.db.read(fn)

    async def outbox_encoded_after(self, after: int, limit: int, *,
                                   max_bytes: int = 1 << 20) -> list[bytes]:
        """:meth:`outbox_after`, each frame encoded for the link as the uplink sends it: the
        envelope is spliced around the stored body, which is not decoded. Raises
        LocalProtocolError for a frame over the local limit (as encoding it would)."""
        def fn(conn: sqlite3.Connection) -> list[bytes]:
            out: list[bytes] = []
            size = 0
            for q, t, body in conn.execute("SELECT q, t, body FROM uplink_outbox WHERE q>? "
                                           "ORDER BY q LIMIT ?", (after, limit)):
                out.append(frame_local(encode_sequenced(t, EVT_STREAM, q, body)))
                size += len(body)
                if size >= max_bytes:
                    break
            return out
        return await self.db.read(fn)

    async def ack_evt(self, n: int, *, epoch: int | None = None) -> bool:
        """The controller applied ``evt`` up to ``n``: drop those outbox rows and record the
        cursor. With ``epoch``, nothing happens unless it is still the store's ``evt`` epoch
        (an ack heard before :meth:`rotate_evt_epoch` must not delete re-sequenced rows);
        returns whether the ack was recorded."""
        if failpoints.ARMED:  # the ack read; the acked rows still in the outbox
            failpoints.hit("outbox.after_ack_before_delete")

        def fn(conn: sqlite3.Connection) -> bool:
            if epoch is not None:
                current = conn.execute("SELECT value FROM meta WHERE key='evt_epoch'"
                                       ).fetchone()[0]
                if int(current) != epoch:
                    return False
            conn.execute("DELETE FROM uplink_outbox WHERE q<=?", (n,))
            conn.execute("UPDATE meta SET value=MAX(CAST(value AS INTEGER), ?) "
                         "WHERE key='evt_acked'", (n,))
            return True
        if not await self.db.write(fn):
            return False
        if recorder.ARMED:
            recorder.record("acked", node=self.rec_node, stream="evt", epoch=self._rec_epoch,
                            q=n)
            self._rec_ids = {q: i for q, i in self._rec_ids.items() if q > n}  # (one swap:
            # the writer thread may be reading the old dict)
        self.tail.drop_through(n)
        return True

    async def rotate_evt_epoch(self) -> StreamState:
        """The controller's cursor does not fit this epoch (it lost or restored its store):
        start a new epoch and re-sequence every unacked frame from 1, in order."""
        def fn(conn: sqlite3.Connection) -> int:
            rows = conn.execute("SELECT t, body, created_at, q FROM uplink_outbox ORDER BY q"
                                ).fetchall()
            conn.execute("DELETE FROM uplink_outbox")
            conn.executemany("INSERT INTO uplink_outbox VALUES (?,?,?,?)",
                             [(i, r[0], r[1], r[2]) for i, r in enumerate(rows, start=1)])
            new_epoch = secrets.randbelow(MAX_EPOCH) + 1
            conn.execute("UPDATE meta SET value=? WHERE key='evt_epoch'", (new_epoch,))
            old_epoch, self._rec_epoch = self._rec_epoch, new_epoch
            if recorder.ARMED:  # every unacked frame keeps its id under its new number
                self._rec_pending_w.append({"ev": "epoch", "node": self.rec_node,
                                            "stream": "evt", "epoch": new_epoch})
                self._rec_ids = {i: self._rec_ids.get(r[3], f"{old_epoch}.{r[3]}")
                                 for i, r in enumerate(rows, start=1)}
                for i in self._rec_ids:
                    self._rec_append_w(i)
            conn.execute("UPDATE meta SET value=? WHERE key='evt_last'", (len(rows),))
            conn.execute("UPDATE meta SET value=0 WHERE key='evt_acked'")
            self._evt_last_w = len(rows)
            self._incident(conn, "protocol", "controller cursor did not fit: new evt epoch")
            self._generation_w += 1  # appends from here on carry the new numbering
            return self._generation_w
        # Nothing is cached from now until the new numbering is known (outbox_tail.py,
        # Rule 2); should the write fail, nothing is cached for good, which is only slower.
        self.tail.reset(None)
        self.tail.reset(await self.db.write(fn))
        return await self.stream_state()

    async def stream_state(self) -> StreamState:
        def fn(conn: sqlite3.Connection) -> StreamState:
            m = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            return StreamState(int(m["evt_epoch"]), self._read_evt_last(conn),
                               int(m["evt_acked"]),
                               None if m["cmd_epoch"] is None else int(m["cmd_epoch"]),
                               int(m["cmd_applied"]), m["session_id"])
        return await self.db.read(fn)

    async def outbox_stats(self) -> dict[str, Any]:
        def fn(conn: sqlite3.Connection) -> dict[str, Any]:
            depth, oldest = conn.execute("SELECT count(*), min(created_at) FROM uplink_outbox"
                                         ).fetchone()
            return {"depth": depth,
                    "oldest_age_s": 0.0 if oldest is None else round(time.time() - oldest, 3)}
        return await self.db.read(fn)

    # -- downlink (cmd) ---------------------------------------------------------------------

    async def set_session(self, session_id: str, cmd_epoch: int) -> bool:
        """Record the session and the controller's cmd epoch; a new epoch resets the cursor.
        Returns True when it did."""
        def fn(conn: sqlite3.Connection) -> bool:
            conn.execute("UPDATE meta SET value=? WHERE key='session_id'", (session_id,))
            old = conn.execute("SELECT value FROM meta WHERE key='cmd_epoch'").fetchone()[0]
            if old is not None and int(old) == cmd_epoch:
                return False
            conn.execute("UPDATE meta SET value=? WHERE key='cmd_epoch'", (cmd_epoch,))
            conn.execute("UPDATE meta SET value=0 WHERE key='cmd_applied'")
            if recorder.ARMED:  # this receiver's cmd cursor starts at 0 in the epoch
                self._rec_pending_w.append({"ev": "epoch", "node": self.rec_node,
                                            "stream": "cmd", "epoch": cmd_epoch})
            if old is not None:
                self._incident(conn, "protocol",
                               f"controller started a new cmd epoch ({old} -> {cmd_epoch})")
            return old is not None
        return await self.db.write(fn)

    async def apply_downlink(self, frames: Sequence[Frame],
                             check: Callable[[str, Mapping[str, Any]], str | None]
                             = lambda kind, args: None) -> Applied:
        """Apply consecutive ``cmd`` frames and move the cursor in one transaction.

        ``exec`` becomes a ``delivered`` row to run; ``diag.ping`` is answered in the same
        transaction; unknown kinds, and commands ``check`` (the policy) refuses, are
        ``rejected`` with the reason; past-deadline commands ``expired``."""
        received_ms = _ms()
        seen: list[tuple[str, int, str | None]] = []  # recorder: (applied|duplicate, q, id)

        def fn(conn: sqlite3.Connection) -> Applied:
            to_run: list[dict[str, Any]] = []
            to_control: list[tuple[str, str, dict[str, Any]]] = []
            now = time.time()
            seen.clear()  # (a closure run again starts over)
            for frame in frames:
                if recorder.ARMED:
                    body = frame.b if isinstance(frame.b, Mapping) else {}
                    command_id = body.get("command_id")
                    seen.append(("applied", frame.q or 0,
                                 command_id if isinstance(command_id, str) else None))
                if frame.k is not None:  # PROTOCOL.md §2: a key is applied at most once
                    if conn.execute("INSERT OR IGNORE INTO idempotency_keys VALUES (?,?)",
                                    (frame.k, now)).rowcount == 0:
                        if recorder.ARMED:
                            seen[-1] = ("duplicate", *seen[-1][1:])
                        continue
                try:
                    cmd = CmdDeliver.parse(frame)
                except Exception as exc:
                    self._incident(conn, "protocol", f"malformed cmd.deliver q={frame.q}: {exc}")
                    self._reject_malformed(conn, frame, exc, received_ms)
                    continue
                if conn.execute("SELECT 1 FROM commands WHERE command_id=?",
                                (cmd.command_id,)).fetchone():
                    if recorder.ARMED:
                        seen[-1] = ("duplicate", *seen[-1][1:])
                    continue  # the same command under a new epoch: applied already
                state, error = "delivered", None
                rule = check(cmd.kind, cmd.args)
                if rule is not None:  # the operator's rule is the more useful reason
                    state, error = "rejected", f"rejected by policy: {rule}"
                elif cmd.kind not in KNOWN_KINDS:
                    state, error = "rejected", f"unknown command kind {cmd.kind!r}"
                elif cmd.deadline_ms is not None and cmd.deadline_ms <= received_ms:
                    state, error = "expired", "deadline passed before it reached the node"
                elif cmd.kind == UPDATE_KIND and (bad := _bad_offer(cmd.args)) is not None:
                    state, error = "rejected", f"bad update.now args: {bad}"
                elif cmd.kind == BUNDLE_STOP_KIND and (bad := _bad_stop(cmd.args)) is not None:
                    state, error = "rejected", f"bad bundle.stop args: {bad}"
                conn.execute(
                    "INSERT INTO commands (command_id, q, kind, args, state, deadline_ms, "
                    "created_ms, received_ms, error) VALUES (?,?,?,?,?,?,?,?,?)",
                    (cmd.command_id, frame.q, cmd.kind, json.dumps(dict(cmd.args)), state,
                     cmd.deadline_ms, cmd.created_ms, received_ms, error))
                if state != "delivered":
                    self._finish(conn, cmd.command_id, state, error=error)
                elif cmd.kind == "diag.ping":
                    self._finish(conn, cmd.command_id, "succeeded", result={
                        "received_ms": received_ms, "sent_ms": _ms(),
                        "created_ms": cmd.created_ms})
                elif cmd.kind in CONTROL_KINDS:
                    to_control.append((cmd.command_id, cmd.kind, dict(cmd.args)))
                else:
                    to_run.append({"command_id": cmd.command_id, "kind": cmd.kind,
                                   "args": dict(cmd.args)})
            conn.execute("UPDATE meta SET value=? WHERE key='cmd_applied'", (frames[-1].q,))
            conn.execute("DELETE FROM idempotency_keys WHERE at < ?", (now - 2 * 86400,))
            if recorder.ARMED:
                meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN "
                                         "('cmd_epoch', 'session_id')").fetchall())
                self._rec_pending_w.extend({
                    "ev": kind, "node": self.rec_node, "stream": "cmd", "q": q,
                    "epoch": int(meta.get("cmd_epoch") or 0),
                    "session": str(meta.get("session_id")), "frame_id": command_id}
                    for kind, q, command_id in seen)
            if failpoints.ARMED:  # applied, cursor moved, not committed
                failpoints.hit("inbox.after_apply_before_commit")
            last = self._evt_last_w
            return Applied(to_run, to_control,
                           self._read_evt_last(conn) if last is None else last)
        return await self._write(fn)

    def _reject_malformed(self, conn: sqlite3.Connection, frame: Frame, exc: Exception,
                          received_ms: int) -> None:
        """A ``cmd.deliver`` whose body breaks the rules is skipped (its cursor moves), but
        when its ``command_id`` reads as an id its command must still end: it is recorded
        ``rejected`` with ``bad cmd.deliver: <reason>`` and that status is queued (class
        A, on ``evt``), once per command id. Nothing of the body is run or kept."""
        body = frame.b if isinstance(frame.b, Mapping) else {}
        try:
            command_id = bounded_text(body.get("command_id"), "command_id",
                                      max_len=MAX_ID_LEN, min_len=1)
        except BadFrame:
            return  # nothing to report it against: the incident is all there is
        if conn.execute("SELECT 1 FROM commands WHERE command_id=?",
                        (command_id,)).fetchone():
            return  # applied, or rejected, already (a resend under a new epoch)
        try:
            kind = bounded_text(body.get("kind"), "kind", max_len=MAX_KIND_LEN, min_len=1)
        except BadFrame:
            kind = "?"
        reason = exc.message if isinstance(exc, TetherError) else str(exc)
        error = f"bad cmd.deliver: {reason}"[:MAX_REJECT_ERROR_CHARS]
        conn.execute("INSERT INTO commands (command_id, q, kind, args, state, received_ms, "
                     "error) VALUES (?,?,?,'{}','rejected',?,?)",
                     (command_id, frame.q, kind, received_ms, error))
        self._finish(conn, command_id, "rejected", error=error)

    # -- command lifecycle ------------------------------------------------------------------

    def _finish(self, conn: sqlite3.Connection, command_id: str, state: str, *,
                exit_code: int | None = None, error: str | None = None,
                result: dict[str, Any] | None = None) -> int:
        now = _ms()
        error = _fit_error(error)  # the status must parse on the other side (§5 value rules)
        conn.execute("UPDATE commands SET state=?, finished_ms=?, exit_code=?, error=? "
                     "WHERE command_id=?", (state, now, exit_code, error, command_id))
        started = conn.execute("SELECT started_ms FROM commands WHERE command_id=?",
                               (command_id,)).fetchone()
        return self._status(conn, CmdStatus(
            command_id=command_id, state=state, exit_code=exit_code, error=error,
            started_ms=started[0] if started else None, finished_ms=now, result=result))

    async def start_command(self, command_id: str) -> int | None:
        """delivered -> running with its status queued; None when it is no longer
        ``delivered`` (cancelled meanwhile), so it must not start."""
        def fn(conn: sqlite3.Connection) -> int | None:
            now = _ms()
            cur = conn.execute("UPDATE commands SET state='running', started_ms=? "
                               "WHERE command_id=? AND state='delivered'", (now, command_id))
            if cur.rowcount != 1:
                return None
            return self._status(conn, CmdStatus(command_id=command_id, state="running",
                                                started_ms=now))
        return await self._write(fn)

    async def finish_command(self, command_id: str, state: str, *,
                             exit_code: int | None = None, error: str | None = None,
                             result: dict[str, Any] | None = None) -> int | None:
        """Make a command terminal and queue its status; None if it already was."""
        if state not in TERMINAL_STATES:
            raise ValueError(f"{state!r} is not a terminal state")

        def fn(conn: sqlite3.Connection) -> int | None:
            row = conn.execute("SELECT state FROM commands WHERE command_id=?",
                               (command_id,)).fetchone()
            if row is None or row[0] in TERMINAL_STATES:
                return None
            return self._finish(conn, command_id, state, exit_code=exit_code, error=error,
                                result=result)
        return await self._write(fn)

    async def set_paused(self, command_id: str, paused: bool) -> int | None:
        """running -> paused (or back) with its status queued; None if it was not in the
        state to leave."""
        src, dst = ("running", "paused") if paused else ("paused", "running")

        def fn(conn: sqlite3.Connection) -> int | None:
            cur = conn.execute("UPDATE commands SET state=? WHERE command_id=? AND state=?",
                               (dst, command_id, src))
            if cur.rowcount != 1:
                return None
            return self._status(conn, CmdStatus(command_id=command_id, state=dst))
        return await self._write(fn)

    async def command_state(self, command_id: str) -> str | None:
        def fn(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT state FROM commands WHERE command_id=?",
                               (command_id,)).fetchone()
            return None if row is None else str(row[0])
        return await self.db.read(fn)

    async def recover(self, keep: Collection[str] = ()) -> list[dict[str, Any]]:
        """At start: ``running`` rows become failed/interrupted (never re-run), except those
        in ``keep`` (a runtime self-update's command, finished by node/selfupdate.py);
        ``delivered`` rows (cancels included) are returned to run, in delivery order."""
        def fn(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            for (command_id,) in conn.execute(
                    "SELECT command_id FROM commands WHERE state IN ('running', 'paused')"
                    ).fetchall():
                if command_id in keep:
                    continue
                self._finish(conn, command_id, "failed",
                             error="interrupted: the runtime stopped while it ran")
            return [{"command_id": r[0], "kind": r[1], "args": json.loads(r[2])}
                    for r in conn.execute("SELECT command_id, kind, args FROM commands "
                                          "WHERE state='delivered' ORDER BY q")]
        return await self._write(fn)

    async def command_counts(self) -> dict[str, int]:
        return await self.db.read(lambda conn: {r[0]: r[1] for r in conn.execute(
            "SELECT state, count(*) FROM commands GROUP BY state")})

    # -- incidents ----------------------------------------------------------------------

    @staticmethod
    def _incident(conn: sqlite3.Connection, klass: str, message: str) -> None:
        conn.execute("INSERT INTO incidents (at, class, message) VALUES (?,?,?)",
                     (time.time(), klass, message[:500]))
        conn.execute("DELETE FROM incidents WHERE id <= (SELECT max(id) FROM incidents) - 200")
