"""Jobs: one command over many nodes (docs/protocol.md §8 ``/api/v1/jobs``; the rules are
``domain/jobs.py``, the rows ``store/jobs.py``).

Each node's part is an ordinary command, submitted through :class:`CommandService` (stored
with its outbox row, nudged, published, listed in ``/api/v1/commands``) with the
idempotency key ``job:<job_id>``: submitting a part twice gives back its one command.

**Who releases parts, and where it runs.** A part is released by claiming it in the store
(``claim_job_parts``: a transaction under the job's row lock that counts what is in flight,
``domain/jobs.py`` Rule 3) and then submitting its command. The replica that takes the
``POST`` releases the first parts at once. The rest (``max_in_flight``), a job's end
(``done``), and cancelling the commands of a cancelled job are the **job driver**'s: a loop
that runs on every replica but acts only while that replica is leader
(``services/leader.py``: one replica in a cluster, always the process on SQLite). It keeps
nothing the store does not: every tick re-reads the unfinished jobs, so a leader that
restarts or hands over resumes where the store says. Its duties are idempotent (a claim is
a compare-and-set under a row lock, a submit carries its idempotency key, ``finish_job``
happens once), so two replicas that both believe they lead for a moment do no harm. A part
waits for a slot at most one tick (``tick_s``) after a command of its job ends.

**Events** (``/ws``): topic ``job:<id>``, kind ``job.updated``, data ``{"job_id", "state",
"summary", "nodes": {node_id: {"command_id", "state"}}}``, where ``nodes`` holds only the
parts that changed (at most :data:`EVENT_NODES` per event; a job whose many parts changed
at once sends several): a patch of ``GET /api/v1/jobs/{id}``. Topic ``jobs`` gets the
same without ``nodes``. The driver publishes a part's change within a tick of it; whoever
creates or cancels a job publishes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tether.protocol.errors import Conflict, InvalidRequest, NotFound, TetherError
from tether.protocol.frames import TERMINAL_STATES

from ..domain.jobs import (
    MAX_JOB_NODES,
    PART_TERMINAL,
    REACHABLE,
    Selector,
    initial_part,
    job_state,
    matches,
)
from ..store.jobs import JobRecord
from ..store.records import NodeRecord
from ..views import iso
from .bus import EventBus
from .commands import CommandService
from .driver import LeaderDriver

logger = logging.getLogger(__name__)

EVENT_NODES = 100  # parts per job.updated event: keeps each event a few KiB
FIRST_RELEASE = 500  # parts the POST releases itself (the driver releases the rest at once)
SUBMIT_CONCURRENCY = 64  # part submissions in flight at a time (group commit batches them)


class JobStore(Protocol):
    """The store methods jobs use (store/jobs.py, and the nodes)."""

    async def create_job(self, *, kind: str, args: dict[str, Any], selector: dict[str, Any],
                         offline: str, max_in_flight: int | None, ttl_s: float | None,
                         actor: str, parts: Sequence[tuple[str, str]]) -> JobRecord: ...

    async def claim_job_parts(self, job_id: str, *, limit: int | None = ...
                              ) -> list[str]: ...

    async def set_job_part(self, job_id: str, node_id: str, *, state: str,
                           command_id: str | None = ..., detail: str | None = ...
                           ) -> bool: ...

    async def cancel_job(self, job_id: str, *, actor: str) -> JobRecord: ...

    async def finish_job(self, job_id: str) -> bool: ...

    async def unfinished_jobs(self, *, limit: int = ...) -> list[JobRecord]: ...

    async def get_job(self, job_id: str) -> JobRecord: ...

    async def list_jobs(self, *, limit: int) -> list[JobRecord]: ...

    async def list_nodes(self) -> list[NodeRecord]: ...

    async def get_node(self, node_id: str) -> NodeRecord | None: ...


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A checked job request (api/jobs.py parses it): ``args`` already checked by
    ``command_args`` for ``kind``; ``max_in_flight`` None or at least 1."""

    selector: Selector
    kind: str
    args: dict[str, Any]
    offline: str = "queue"
    max_in_flight: int | None = None
    ttl_s: float | None = None


def job_view(job: JobRecord, *, with_nodes: bool = True) -> dict[str, Any]:
    """The API shape of a job (docs/protocol.md §8). ``state`` is Rule 4's, not only the
    stored one: a job whose parts all ended is ``done`` before the driver records it."""
    out: dict[str, Any] = {
        "job_id": job.job_id,
        "state": job_state(job.state, job.summary if not job.parts
                           else [p.state for p in job.parts]),
        "kind": job.kind, "args": job.args, "selector": job.selector,
        "offline": job.offline, "max_in_flight": job.max_in_flight, "ttl_s": job.ttl_s,
        "actor": job.actor, "created_at": iso(job.created_at),
        "finished_at": iso(job.finished_at), "summary": job.summary,
    }
    if with_nodes:
        out["nodes"] = {p.node_id: {"command_id": p.command_id, "state": p.state,
                                    **({"detail": p.detail} if p.detail else {})}
                        for p in job.parts}
    return out


class JobService:
    """Creates, cancels and releases jobs. ``view(row)`` is a node's API view
    (services/nodes.py: its ``liveness`` is judged across replicas from the store); ``wake``
    tells this process's job driver to look now."""

    def __init__(self, store: JobStore, commands: CommandService, bus: EventBus, *,
                 view: Callable[[NodeRecord], dict[str, Any]],
                 wake: Callable[[], None] = lambda: None) -> None:
        self._store = store
        self._commands = commands
        self._bus = bus
        self._view = view
        self.wake = wake

    async def create(self, spec: JobSpec, *, actor: str) -> JobRecord:
        """Select the nodes (Rule 1), decide each part (Rule 2), store the job, release its
        first parts and publish it. Raises NotFound when a named node is not enrolled or
        nothing matches; InvalidRequest over :data:`MAX_JOB_NODES`."""
        sel = spec.selector
        rows = {r.node_id: r for r in await self._store.list_nodes()}
        if sel.nodes is not None:
            missing = [n for n in sel.nodes if n not in rows]
            if missing:
                raise NotFound(f"node(s) not enrolled: {', '.join(missing[:5])}"
                               f"{' ...' if len(missing) > 5 else ''}; see 'tether nodes list'")
            chosen = [(n, self._view(rows[n])["liveness"]) for n in sel.nodes]
        else:
            chosen = []
            for node_id, row in rows.items():
                live = self._view(row)["liveness"]
                if matches(row.labels, live, want_labels=sel.labels,
                           want_liveness=sel.liveness):
                    chosen.append((node_id, live))
        if not chosen:
            raise NotFound("no enrolled node matches the selector; see 'tether nodes list'")
        if len(chosen) > MAX_JOB_NODES:
            raise InvalidRequest(f"the selector matches {len(chosen)} nodes; a job has at "
                                 f"most {MAX_JOB_NODES}: narrow it")
        job = await self._store.create_job(
            kind=spec.kind, args=spec.args, selector=sel.to_json(), offline=spec.offline,
            max_in_flight=spec.max_in_flight, ttl_s=spec.ttl_s, actor=actor,
            parts=[(n, initial_part(live, spec.offline)) for n, live in chosen])
        await self.release(job, limit=FIRST_RELEASE)  # the request stays short
        job = await self._store.get_job(job.job_id)
        self.publish(job, {p.node_id for p in job.parts})
        self.wake()
        return job

    async def release(self, job: JobRecord, *, limit: int | None = None) -> int:
        """Claim what may be released of ``job`` now (at most ``limit`` new parts) and
        submit those commands, :data:`SUBMIT_CONCURRENCY` at a time; returns how many
        parts were recorded."""
        claimed = await self._store.claim_job_parts(job.job_id, limit=limit)
        done = 0
        for i in range(0, len(claimed), SUBMIT_CONCURRENCY):
            done += sum(await asyncio.gather(*(
                self._submit_part(job, node_id)
                for node_id in claimed[i:i + SUBMIT_CONCURRENCY])))
        return done

    async def _submit_part(self, job: JobRecord, node_id: str) -> int:
        if job.offline == "fail":  # Rule 2, again at release
            row = await self._store.get_node(node_id)
            if row is not None and self._view(row)["liveness"] not in REACHABLE:
                return int(await self._store.set_job_part(
                    job.job_id, node_id, state="offline", detail="node offline at release"))
        try:
            command, _ = await self._commands.submit(
                node_id, kind=job.kind, args=job.args, ttl_s=job.ttl_s,
                idem_key=f"job:{job.job_id}", actor=job.actor, offline="queue")
        except TetherError as exc:  # NotFound (node removed), CommandTooLarge (its cap)
            return int(await self._store.set_job_part(job.job_id, node_id, state="failed",
                                                      detail=exc.message))
        if await self._store.set_job_part(job.job_id, node_id, state="submitted",
                                          command_id=command.command_id):
            return 1
        # The part is no longer releasing. Either the job was cancelled while its command
        # was being submitted (cancel that command), or another release of the same part
        # (the create request's and the driver's tick overlap: a releasing part is
        # everyone's to finish) recorded it first with the same command, the submit being
        # idempotent per job and node: then that command is the part's, and stays.
        part = next((p for p in (await self._store.get_job(job.job_id)).parts
                     if p.node_id == node_id), None)
        if part is None or part.command_id != command.command_id:
            await self._cancel_command(command.command_id, job.actor)
        return 0

    async def cancel(self, job_id: str, *, actor: str) -> JobRecord:
        """Cancel the job: pending parts never start, and the commands in flight are
        cancelled (``CommandService.control``). Raises NotFound, Conflict ``job_done``."""
        job = await self._store.cancel_job(job_id, actor=actor)
        await self.cancel_in_flight(job)
        job = await self._store.get_job(job_id)
        self.publish(job, {p.node_id for p in job.parts})
        self.wake()
        return job

    async def cancel_in_flight(self, job: JobRecord, *,
                               skip: Callable[[str], bool] = lambda _: False) -> None:
        for part in job.parts:
            if (part.stored == "submitted" and part.command_id is not None
                    and part.state not in TERMINAL_STATES and not skip(part.command_id)):
                await self._cancel_command(part.command_id, job.actor)

    async def _cancel_command(self, command_id: str, actor: str) -> None:
        with contextlib.suppress(Conflict, NotFound):  # ended meanwhile: nothing to do
            await self._commands.control(command_id, "cancel", actor=actor)

    async def get(self, job_id: str) -> JobRecord:
        return await self._store.get_job(job_id)

    async def list_jobs(self, *, limit: int) -> list[JobRecord]:
        return await self._store.list_jobs(limit=limit)

    def publish(self, job: JobRecord, changed: set[str]) -> None:
        """``job.updated`` on ``job:<id>`` (the parts in ``changed``, in events of at most
        :data:`EVENT_NODES`) and on ``jobs`` (module docstring)."""
        view = job_view(job, with_nodes=False)
        head = {"job_id": job.job_id, "state": view["state"], "summary": view["summary"]}
        parts = [p for p in job.parts if p.node_id in changed]
        for i in range(0, max(1, len(parts)), EVENT_NODES):
            nodes = {p.node_id: {"command_id": p.command_id, "state": p.state}
                     for p in parts[i:i + EVENT_NODES]}
            self._bus.publish(f"job:{job.job_id}", "job.updated", {**head, "nodes": nodes})
        self._bus.publish("jobs", "job.updated", head)


class JobDriver(LeaderDriver):
    """The job driver (module docstring; the loop is :class:`LeaderDriver`'s): looks after
    every unfinished job. Its only memory is what it last published per part (for events)
    and which commands it asked to cancel; both are rebuilt from nothing after a restart
    (at worst an event or a cancel is repeated)."""

    def __init__(self, jobs: JobService, store: JobStore, *, is_leader: Callable[[], bool],
                 tick_s: float = 0.5) -> None:
        super().__init__(name="job driver", is_leader=is_leader, tick_s=tick_s,
                         logger=logger)
        self._jobs = jobs
        self._store = store
        self._seen: dict[str, dict[str, tuple[str | None, str]]] = {}
        self._cancel_asked: dict[str, set[str]] = {}

    def forget(self) -> None:
        self._seen.clear()

    async def tick(self) -> None:
        """One pass over the unfinished jobs (see the class)."""
        live: set[str] = set()
        for job in await self._store.unfinished_jobs():
            live.add(job.job_id)
            if job.state == "running" and any(p.stored in ("pending", "releasing")
                                               for p in job.parts):
                if await self._jobs.release(job):
                    job = await self._store.get_job(job.job_id)
            elif job.state == "cancelled":
                asked = self._cancel_asked.setdefault(job.job_id, set())
                await self._jobs.cancel_in_flight(job, skip=asked.__contains__)
                asked.update(p.command_id for p in job.parts if p.command_id)
            self._publish_changes(job)
            if all(p.state in PART_TERMINAL for p in job.parts):
                if await self._store.finish_job(job.job_id):
                    self._jobs.publish(await self._store.get_job(job.job_id), set())
                self._seen.pop(job.job_id, None)
                self._cancel_asked.pop(job.job_id, None)
        for gone in set(self._seen) - live:  # finished by another replica, or deleted
            del self._seen[gone]

    def _publish_changes(self, job: JobRecord) -> None:
        seen = self._seen.setdefault(job.job_id, {})
        changed = {p.node_id for p in job.parts
                   if seen.get(p.node_id) != (p.command_id, p.state)}
        if changed:
            self._jobs.publish(job, changed)
            seen.update({p.node_id: (p.command_id, p.state) for p in job.parts})
