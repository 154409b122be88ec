"""Commands and the cmd stream (downlink): submit, control, expiry, sequencing onto the
stream, acks, and epoch rotation. What a command may do next and what a delivery carries
are decided by ``domain/commands.py``; this module only stores the answers.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from tether.protocol.codec import MAX_FRAME_BYTES
from tether.protocol.deliver import encode_deliver, refused_placeholder
from tether.protocol.errors import Conflict, NotFound
from tether.protocol.frames import CONTROL_KINDS

from ..domain.commands import ControlAction, control_action, delivery
from ..domain.commands import resequence as resequence_frames
from .base import (
    FOR_UPDATE,
    Latencies,
    StoreBase,
    add_audit,
    add_timeline,
    new_epoch,
    opt_peer_text,
    peer_text,
    wall_now,
)
from .records import CommandEvent, CommandRecord
from .sql import Tx


class CommandTransactions(StoreBase):
    """Commands and the downlink."""

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

    async def _dispatch(self, tx: Tx, node_id: str, now: float,
                        max_frame: int = MAX_FRAME_BYTES) -> int:
        """Sequence the node's queued commands onto the cmd stream, oldest first, as
        ``domain/commands.py`` Rule 3 says: a command past its deadline becomes
        ``expired``, one whose frame cannot be built within ``max_frame`` (the node's frame
        cap) ``rejected``, and neither takes a sequence number. A stored frame over the cap
        (sequenced by an older version) is replaced by :func:`refused_placeholder` at the
        same number. The cmd cursor is locked first: what is queued is read after it."""
        cursor = await tx.fetchrow("SELECT epoch, last FROM stream_cursors WHERE node_id=$1 "
                                   f"AND stream='cmd'{FOR_UPDATE[tx.dialect]}", node_id)
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
                await add_timeline(tx, command_id, str(out.state), now, out.detail)
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
                await add_timeline(tx, command_id, "rejected", now, error)

    async def _ack_cmd(self, tx: Tx, node_id: str, epoch: int, n: int,
                       now: float, latencies: Latencies | None = None) -> list[str]:
        """``domain/commands.py`` Rule 4. Each command marked delivered adds its time since
        submission to ``latencies``."""
        applied = await tx.fetchval("SELECT applied FROM stream_cursors WHERE node_id=$1 AND "
                                    "stream='cmd' AND epoch=$2", node_id, epoch)
        if applied is None or n <= applied:
            return []
        await tx.execute("UPDATE stream_cursors SET applied=$1 WHERE node_id=$2 AND "
                         "stream='cmd'", n, node_id)
        await tx.execute("DELETE FROM downlink_outbox WHERE node_id=$1 AND epoch=$2 AND "
                         "q<=$3", node_id, epoch, n)
        delivered = await tx.fetch(
            "SELECT command_id, created_at FROM commands WHERE node_id=$1 AND epoch=$2 AND "
            "q<=$3 AND q>$4 AND state='queued' ORDER BY q", node_id, epoch, n, applied)
        done = []
        for row in delivered:  # unless a status moved it on since the read
            command_id = str(row[0])
            if await tx.execute("UPDATE commands SET state='delivered', updated_at=$1 "
                                "WHERE command_id=$2 AND state='queued'", now, command_id):
                await add_timeline(tx, command_id, "delivered", now)
                done.append(command_id)
                if latencies is not None:
                    latencies.append(("delivered", now - float(row[1])))
        return done

    async def ack_cmd(self, node_id: str, session_id: str, epoch: int, n: int) -> list[str]:
        """The node applied the downlink up to ``n``: drop those frames, mark delivered."""
        latencies: Latencies = []

        async def fn(tx: Tx) -> list[str]:
            latencies.clear()  # a transaction run again starts over
            await self._fence(tx, node_id, session_id)
            return await self._ack_cmd(tx, node_id, epoch, n, wall_now(), latencies)
        delivered = await self.driver.write(fn)
        self._observe(latencies)
        return delivered

    async def downlink_after(self, node_id: str, epoch: int, after: int,
                             limit: int) -> list[tuple[int, bytes]]:
        async def fn(tx: Tx) -> list[tuple[int, bytes]]:
            return [(int(r[0]), bytes(r[1])) for r in await tx.fetch(
                "SELECT q, frame FROM downlink_outbox WHERE node_id=$1 AND epoch=$2 AND q>$3 "
                "ORDER BY q LIMIT $4", node_id, epoch, after, limit)]
        return await self.driver.read(fn)

    async def downlink_pending(self) -> dict[str, tuple[int, int]]:
        """Every node with a current session and frames in its downlink outbox (sent or
        not: the outbox keeps a frame until its ack), as node_id -> (epoch, highest q).

        One query for the whole fleet, for the gateway's periodic downlink check (a lost
        nudge): a session whose ``sent`` is below that q has work it was not woken for. Its
        cost follows the outbox, which holds only unacked frames, so an idle fleet's is
        an empty scan."""
        async def fn(tx: Tx) -> dict[str, tuple[int, int]]:
            return {str(r[0]): (int(r[1]), int(r[2])) for r in await tx.fetch(
                "SELECT o.node_id, o.epoch, MAX(o.q) FROM downlink_outbox o JOIN nodes n "
                "ON n.node_id=o.node_id WHERE n.current_session IS NOT NULL "
                "GROUP BY o.node_id, o.epoch ORDER BY o.node_id, o.epoch")}
        return await self.driver.read(fn)

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
        node_id, kind, idem_key = peer_text(node_id), peer_text(kind), opt_peer_text(idem_key)
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
            now = wall_now()
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
            await add_timeline(tx, command_id, "queued", now)
            await add_audit(tx, actor, "command.submit", command_id,
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
        command_id = peer_text(command_id)

        async def fn(tx: Tx) -> tuple[CommandRecord, bool]:
            node_id = await tx.fetchval("SELECT node_id FROM commands WHERE command_id=$1",
                                        command_id)
            if node_id is None:
                raise NotFound(f"command {command_id!r} does not exist")
            # the node's cmd cursor first (the lock order of _dispatch), then its state
            await tx.fetchval("SELECT last FROM stream_cursors WHERE node_id=$1 AND "
                              f"stream='cmd'{FOR_UPDATE[tx.dialect]}", node_id)
            cmd = await tx.fetchrow("SELECT state, q FROM commands WHERE command_id=$1",
                                    command_id)
            assert cmd is not None  # commands are never deleted
            how = control_action(command_id, action, cmd["state"],
                                 sequenced=cmd["q"] is not None)
            now = wall_now()
            await add_audit(tx, actor, f"command.{action}", command_id, None)
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
                await add_timeline(tx, command_id, "cancelled", now, "cancelled before delivery")
                return await self._command(tx, command_id), False
            control_id = "c_" + uuid.uuid4().hex
            await tx.execute("INSERT INTO commands (command_id, node_id, kind, args, state, "
                             "created_at, updated_at) VALUES ($1,$2,$3,$4,'queued',$5,$6)",
                             control_id, node_id, action,
                             json.dumps({"command_id": command_id}), now, now)
            await add_timeline(tx, control_id, "queued", now)
            await add_timeline(tx, command_id, cmd["state"], now,
                            f"{action} requested ({control_id})")
            if await tx.fetchval("SELECT current_session FROM nodes WHERE node_id=$1",
                                 node_id):
                await self._dispatch(tx, node_id, now)
            return await self._command(tx, command_id), True
        return await self.driver.write(fn)

    async def expire_due(self) -> list[str]:
        """Queued, unsequenced commands past their deadline become ``expired``."""
        async def fn(tx: Tx) -> list[str]:
            now = wall_now()
            ids = [str(r[0]) for r in await tx.fetch(
                "SELECT command_id FROM commands WHERE state='queued' AND q IS NULL AND "
                "deadline IS NOT NULL AND deadline<=$1 ORDER BY seq", now)]
            expired = []
            for command_id in ids:  # unless sequenced or ended since the read (a replica)
                if await tx.execute("UPDATE commands SET state='expired', updated_at=$1, "
                                    "error=$2 WHERE command_id=$3 AND state='queued' AND "
                                    "q IS NULL", now, "deadline passed before delivery",
                                    command_id):
                    await add_timeline(tx, command_id, "expired", now, "deadline passed")
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
        command_id = peer_text(command_id)

        async def fn(tx: Tx) -> CommandRecord:
            return await self._command(tx, command_id)
        return await self.driver.read(fn)

    async def list_commands(self, *, node_id: str | None, state: str | None,
                            limit: int) -> tuple[list[CommandRecord], dict[str, int]]:
        """Newest first, without timelines; plus counts by state for the same filter."""
        node_id, state = opt_peer_text(node_id), opt_peer_text(state)

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
