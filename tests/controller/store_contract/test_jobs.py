"""Store contract: jobs and their parts (store/jobs.py), on every backend: a job is stored
with its parts, a claim releases no more than max_in_flight, a part is recorded once, a
cancel stops what was not released, and a job finishes once."""

from __future__ import annotations

import pytest

from tether.controller.store.controller_store import ControllerStore
from tether.protocol.errors import Conflict, NotFound

from .helpers import enrolled, evt, hello, status

EXEC = {"argv": ["true"]}


async def job(store: ControllerStore, nodes: list[str], *, max_in_flight: int | None = None,
              states: list[str] | None = None) -> str:
    record = await store.create_job(
        kind="exec", args=EXEC, selector={"nodes": nodes}, offline="queue",
        max_in_flight=max_in_flight, ttl_s=None, actor="admin",
        parts=list(zip(nodes, states or ["pending"] * len(nodes), strict=True)))
    assert record.state == "running" and [p.node_id for p in record.parts] == nodes
    return record.job_id


async def submit_part(store: ControllerStore, job_id: str, node_id: str) -> str:
    command, _ = await store.submit_command(node_id=node_id, kind="exec", args=EXEC,
                                            ttl_s=None, idem_key=f"job:{job_id}",
                                            actor="admin")
    assert await store.set_job_part(job_id, node_id, state="submitted",
                                    command_id=command.command_id)
    return command.command_id


async def test_a_job_is_stored_with_its_parts_in_order_and_a_summary(
        store: ControllerStore) -> None:
    for n in ("n1", "n2", "n3"):
        await enrolled(store, n)
    job_id = await job(store, ["n3", "n1", "n2"], states=["pending", "skipped", "offline"])
    got = await store.get_job(job_id)
    assert [(p.node_id, p.state) for p in got.parts] == [
        ("n3", "pending"), ("n1", "skipped"), ("n2", "offline")]
    assert got.summary == {"offline": 1, "pending": 1, "skipped": 1}
    assert got.args == EXEC and got.selector == {"nodes": ["n3", "n1", "n2"]}
    listed = await store.list_jobs(limit=10)
    assert [j.job_id for j in listed] == [job_id] and listed[0].summary == got.summary
    with pytest.raises(NotFound):
        await store.get_job("j_nope")


async def test_a_claim_releases_at_most_max_in_flight_and_more_as_commands_end(
        store: ControllerStore) -> None:
    nodes = [await enrolled(store, f"n{i}") for i in range(4)]
    job_id = await job(store, nodes, max_in_flight=2)
    assert await store.claim_job_parts(job_id) == ["n0", "n1"]
    # a second claim before anything was recorded: the same two, nothing more
    assert await store.claim_job_parts(job_id) == ["n0", "n1"]
    first = await submit_part(store, job_id, "n0")
    await submit_part(store, job_id, "n1")
    assert not await store.set_job_part(job_id, "n0", state="submitted", command_id=first)
    assert await store.claim_job_parts(job_id) == []
    opened = await hello(store, "n0")
    await store.apply_evt(node_id="n0", session_id=opened.session_id,
                          frames=[evt(1, status(first, "succeeded"))])
    assert await store.claim_job_parts(job_id) == ["n2"]
    got = await store.get_job(job_id)
    assert [p.state for p in got.parts] == ["succeeded", "queued", "pending", "pending"]


async def test_a_cancel_stops_the_parts_not_yet_released_and_cannot_undo_a_done_job(
        store: ControllerStore) -> None:
    nodes = [await enrolled(store, f"n{i}") for i in range(3)]
    job_id = await job(store, nodes, max_in_flight=1)
    assert await store.claim_job_parts(job_id) == ["n0"]
    cancelled = await store.cancel_job(job_id, actor="admin")
    assert cancelled.state == "cancelled"
    assert [p.state for p in cancelled.parts] == ["cancelled"] * 3
    assert await store.claim_job_parts(job_id) == []
    # the releasing part's submitter finds it cancelled: it is not recorded
    assert not await store.set_job_part(job_id, "n0", state="submitted", command_id="c_x")
    assert (await store.cancel_job(job_id, actor="admin")).state == "cancelled"
    assert await store.finish_job(job_id) and not await store.finish_job(job_id)
    assert (await store.get_job(job_id)).state == "cancelled"
    other = await job(store, ["n1"], states=["skipped"])
    with pytest.raises(Conflict):  # every part ended: done, before the driver records it
        await store.cancel_job(other, actor="admin")
    assert await store.finish_job(other)
    assert (await store.get_job(other)).state == "done"
    with pytest.raises(Conflict):
        await store.cancel_job(other, actor="admin")
    with pytest.raises(NotFound):
        await store.cancel_job("j_nope", actor="admin")


async def test_unfinished_jobs_are_the_ones_the_driver_looks_after(
        store: ControllerStore) -> None:
    await enrolled(store, "n1")
    running = await job(store, ["n1"])
    ended = await job(store, ["n1"], states=["skipped"])
    await store.finish_job(ended)
    assert [j.job_id for j in await store.unfinished_jobs()] == [running]


async def test_a_claim_with_a_limit_takes_no_more_new_parts_than_it(
        store: ControllerStore) -> None:
    nodes = [await enrolled(store, f"n{i}") for i in range(5)]
    job_id = await job(store, nodes)
    assert await store.claim_job_parts(job_id, limit=2) == ["n0", "n1"]
    # the next claim returns those still releasing, and the rest it may take
    assert await store.claim_job_parts(job_id) == nodes
