"""Jobs: one command over many nodes (``domain/jobs.py`` states their rules; this module
only stores them). A job is a ``jobs`` row and one ``job_nodes`` row per node; each node's
command is an ordinary command (``commands.py``), submitted by the job service with the
idempotency key ``job:<job_id>``, so submitting it twice (a retry, a second leader) gives
back the same command.

Concurrency: every change to a job's parts locks its ``jobs`` row first (PostgreSQL), so a
claim's count of parts in flight (``domain/jobs.py`` Rule 3) cannot race another claim or
a cancel, whichever replica runs them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tether.protocol.errors import Conflict, NotFound

from ..domain.jobs import in_flight, job_state, release_slots, shown_state
from ..domain.jobs import summary as summarize
from .base import FOR_UPDATE, StoreBase, add_audit, opt_peer_text, peer_text, wall_now
from .records import _int, _text, _time, loads
from .sql import Tx

_SHOWN = ("CASE WHEN jn.state='submitted' THEN COALESCE(c.state, 'queued') "
          "WHEN jn.state='releasing' THEN 'pending' ELSE jn.state END")
_PARTS = ("SELECT jn.job_id, jn.node_id, jn.pos, jn.state, jn.command_id, jn.detail, "
          "c.state AS command_state FROM job_nodes jn LEFT JOIN commands c "
          "ON c.command_id=jn.command_id")


@dataclass(frozen=True, slots=True)
class JobPart:
    """One node's part of a job: its stored state, its command (once submitted) and that
    command's state."""

    node_id: str
    pos: int
    stored: str
    command_id: str | None
    command_state: str | None
    detail: str | None

    @property
    def state(self) -> str:
        return shown_state(self.stored, self.command_state)

    @classmethod
    def from_row(cls, row: Any) -> JobPart:
        return cls(node_id=str(row["node_id"]), pos=int(row["pos"]), stored=str(row["state"]),
                   command_id=_text(row["command_id"]),
                   command_state=_text(row["command_state"]), detail=_text(row["detail"]))


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job as stored. ``state`` is the stored one (``running`` / ``done`` /
    ``cancelled``; ``domain/jobs.py`` Rule 4 gives the shown one); ``parts`` is empty
    when read in a list; ``summary`` counts parts by shown state."""

    COLUMNS = ("job_id, kind, args, selector, offline, max_in_flight, ttl_s, state, actor, "
               "created_at, updated_at, finished_at")

    job_id: str
    kind: str
    args: dict[str, Any]
    selector: dict[str, Any]
    offline: str
    max_in_flight: int | None
    ttl_s: float | None
    state: str
    actor: str
    created_at: float | None
    updated_at: float | None
    finished_at: float | None
    summary: dict[str, int]
    parts: tuple[JobPart, ...] = ()

    @classmethod
    def from_row(cls, row: Any, summary: dict[str, int],
                 parts: tuple[JobPart, ...] = ()) -> JobRecord:
        args, selector = loads(row["args"], {}), loads(row["selector"], {})
        return cls(job_id=str(row["job_id"]), kind=str(row["kind"]),
                   args=args if isinstance(args, dict) else {},
                   selector=selector if isinstance(selector, dict) else {},
                   offline=str(row["offline"]), max_in_flight=_int(row["max_in_flight"]),
                   ttl_s=_time(row["ttl_s"]), state=str(row["state"]),
                   actor=str(row["actor"]), created_at=_time(row["created_at"]),
                   updated_at=_time(row["updated_at"]), finished_at=_time(row["finished_at"]),
                   summary=summary, parts=parts)


class JobTransactions(StoreBase):
    """Jobs and their parts."""

    async def create_job(self, *, kind: str, args: dict[str, Any], selector: dict[str, Any],
                         offline: str, max_in_flight: int | None, ttl_s: float | None,
                         actor: str, parts: Sequence[tuple[str, str]]) -> JobRecord:
        """Store a running job with ``parts`` = (node_id, initial stored state) in release
        order; nothing is submitted here (the job service releases parts). ``args`` were
        checked by ``command_args``."""
        job_id = "j_" + uuid.uuid4().hex

        async def fn(tx: Tx) -> JobRecord:
            now = wall_now()
            await tx.execute(
                "INSERT INTO jobs (job_id, kind, args, selector, offline, max_in_flight, "
                "ttl_s, state, actor, created_at, updated_at) "
                "VALUES ($1,$2,$3,$4,$5,$6,$7,'running',$8,$9,$9)",
                job_id, peer_text(kind), json.dumps(args, allow_nan=False),
                json.dumps(selector), offline, max_in_flight, ttl_s, peer_text(actor), now)
            await tx.executemany(
                "INSERT INTO job_nodes (job_id, node_id, pos, state, updated_at) "
                "VALUES ($1,$2,$3,$4,$5)",
                [(job_id, peer_text(node), pos, state, now)
                 for pos, (node, state) in enumerate(parts)])
            await add_audit(tx, actor, "job.submit", job_id,
                            {"kind": kind, "nodes": len(parts)})
            return await self._job(tx, job_id)
        return await self.driver.write(fn)

    async def claim_job_parts(self, job_id: str, *, limit: int | None = None) -> list[str]:
        """Release what ``domain/jobs.py`` Rule 3 allows of a running job's pending parts,
        at most ``limit`` of them (they become ``releasing``), and return every part now
        ``releasing``, lowest
        ``pos`` first: the caller submits their commands (idempotently) and records each
        with :meth:`set_job_part`. A part left ``releasing`` by a caller that died is
        returned again to the next claim."""
        job_id = peer_text(job_id)

        async def fn(tx: Tx) -> list[str]:
            job = await tx.fetchrow("SELECT state, max_in_flight FROM jobs WHERE job_id=$1"
                                    f"{FOR_UPDATE[tx.dialect]}", job_id)
            if job is None or job["state"] != "running":
                return []
            rows = await tx.fetch(f"{_PARTS} WHERE jn.job_id=$1 ORDER BY jn.pos", job_id)
            parts = [JobPart.from_row(r) for r in rows]
            flying = in_flight((p.stored, p.command_state) for p in parts)
            pending = [p.node_id for p in parts if p.stored == "pending"]
            slots = release_slots(_int(job["max_in_flight"]), flying, len(pending))
            take = pending[:slots if limit is None else min(slots, limit)]
            if take:
                now = wall_now()
                await tx.executemany("UPDATE job_nodes SET state='releasing', updated_at=$1 "
                                     "WHERE job_id=$2 AND node_id=$3 AND state='pending'",
                                     [(now, job_id, node) for node in take])
            chosen = set(take)
            return [p.node_id for p in parts if p.stored == "releasing" or p.node_id in chosen]
        return await self.driver.write(fn)

    async def set_job_part(self, job_id: str, node_id: str, *, state: str,
                           command_id: str | None = None, detail: str | None = None
                           ) -> bool:
        """A ``releasing`` part becomes ``state`` (``submitted`` with its command, or an
        end without one). False when the part was not ``releasing`` (already recorded)."""
        async def fn(tx: Tx) -> bool:
            await tx.fetchval(f"SELECT state FROM jobs WHERE job_id=$1{FOR_UPDATE[tx.dialect]}",
                              job_id)
            return bool(await tx.execute(
                "UPDATE job_nodes SET state=$1, command_id=$2, detail=$3, updated_at=$4 "
                "WHERE job_id=$5 AND node_id=$6 AND state='releasing'",
                state, command_id, opt_peer_text(detail), wall_now(), job_id, node_id))
        return await self.driver.write(fn)

    async def cancel_job(self, job_id: str, *, actor: str) -> JobRecord:
        """Cancel a job: its pending and releasing parts become ``cancelled`` (a
        releasing part's submitter then cancels the command it made); the
        commands of its parts in flight are the job service's to cancel. Cancelling a
        cancelled job changes nothing. Raises NotFound; Conflict ``job_done`` for a job
        that already ended."""
        job_id = peer_text(job_id)

        async def fn(tx: Tx) -> JobRecord:
            state = await tx.fetchval("SELECT state FROM jobs WHERE job_id=$1"
                                      f"{FOR_UPDATE[tx.dialect]}", job_id)
            if state is None:
                raise NotFound(f"job {job_id!r} does not exist; see 'tether jobs list'")
            parts = [JobPart.from_row(r) for r in await tx.fetch(
                f"{_PARTS} WHERE jn.job_id=$1", job_id)]
            # done by Rule 4 even before the driver records it (its parts all ended)
            if state == "done" or (state == "running"
                                   and job_state(state, (p.state for p in parts)) == "done"):
                raise Conflict(f"job {job_id} is already done", code="job_done")
            if state == "running":
                now = wall_now()
                await tx.execute("UPDATE jobs SET state='cancelled', updated_at=$1 "
                                 "WHERE job_id=$2", now, job_id)
                await tx.execute("UPDATE job_nodes SET state='cancelled', updated_at=$1, "
                                 "detail='cancelled before release' WHERE job_id=$2 AND "
                                 "state IN ('pending', 'releasing')", now, job_id)
                await add_audit(tx, actor, "job.cancel", job_id, None)
            return await self._job(tx, job_id)
        return await self.driver.write(fn)

    async def finish_job(self, job_id: str) -> bool:
        """Record that every part of a job ended: a running job becomes ``done`` (a
        cancelled one stays cancelled). False when it was already finished."""
        async def fn(tx: Tx) -> bool:
            now = wall_now()
            return bool(await tx.execute(
                "UPDATE jobs SET state=CASE WHEN state='running' THEN 'done' ELSE state END, "
                "finished_at=$1, updated_at=$1 WHERE job_id=$2 AND finished_at IS NULL",
                now, job_id))
        return await self.driver.write(fn)

    async def unfinished_jobs(self, *, limit: int = 1000) -> list[JobRecord]:
        """Jobs not yet finished (running, or cancelled with parts still in flight), oldest
        first, each with its parts: what the job driver looks after."""
        async def fn(tx: Tx) -> list[JobRecord]:
            ids = [str(r[0]) for r in await tx.fetch(
                "SELECT job_id FROM jobs WHERE finished_at IS NULL ORDER BY seq LIMIT $1",
                limit)]
            return [await self._job(tx, job_id) for job_id in ids]
        return await self.driver.read(fn)

    async def get_job(self, job_id: str) -> JobRecord:
        """The job with its parts. Raises NotFound."""
        job_id = peer_text(job_id)

        async def fn(tx: Tx) -> JobRecord:
            return await self._job(tx, job_id)
        return await self.driver.read(fn)

    async def list_jobs(self, *, limit: int) -> list[JobRecord]:
        """Newest first, without parts, each with its summary."""
        async def fn(tx: Tx) -> list[JobRecord]:
            rows = await tx.fetch(f"SELECT {JobRecord.COLUMNS} FROM jobs "
                                  "ORDER BY seq DESC LIMIT $1", limit)
            out = []
            for row in rows:
                counts = {str(r[0]): int(r[1]) for r in await tx.fetch(
                    f"SELECT {_SHOWN} AS shown, count(*) FROM job_nodes jn LEFT JOIN "
                    "commands c ON c.command_id=jn.command_id WHERE jn.job_id=$1 "
                    "GROUP BY shown", row["job_id"])}
                out.append(JobRecord.from_row(row, dict(sorted(counts.items()))))
            return out
        return await self.driver.read(fn)

    @staticmethod
    async def _job(tx: Tx, job_id: str) -> JobRecord:
        row = await tx.fetchrow(f"SELECT {JobRecord.COLUMNS} FROM jobs WHERE job_id=$1",
                                job_id)
        if row is None:
            raise NotFound(f"job {job_id!r} does not exist; see 'tether jobs list'")
        parts = tuple(JobPart.from_row(r) for r in await tx.fetch(
            f"{_PARTS} WHERE jn.job_id=$1 ORDER BY jn.pos", job_id))
        return JobRecord.from_row(row, summarize(p.state for p in parts), parts)
