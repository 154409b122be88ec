"""Jobs through the REST API against a real controller process, with simulated nodes:
a label selector while one node is offline under each ``offline`` policy, max_in_flight
(checked from the command timelines), cancel, the /ws events, and hostile bodies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from tether.protocol.codec import decode_json, encode_json
from tether.protocol.frames import Frame

from ..helpers import ControllerProc
from .conftest import assert_error, browser_connect
from .jobsim import LabelledFleet, eventually, labelled_fleet

LAB = {"env": "lab"}


@pytest.fixture
async def fleet(controller: ControllerProc) -> AsyncIterator[LabelledFleet]:
    async with labelled_fleet(controller.url, controller.token) as f:
        yield f


async def lab_with_one_offline(fleet: LabelledFleet) -> None:
    """lab-1 and lab-2 online, lab-3 enrolled but offline, and prod-1 online (not lab)."""
    for node_id in ("lab-1", "lab-2", "lab-3"):
        await fleet.enroll(node_id, LAB)
    await fleet.enroll("prod-1", {"env": "prod"})
    for node_id in ("lab-1", "lab-2", "prod-1"):
        await fleet.start(node_id)


async def post_job(api: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    resp = await api.post("/api/v1/jobs", json={"kind": "diag.ping", **body})
    assert resp.status_code == 202, resp.text
    assert resp.json()["job_id"].startswith("j_")
    return resp.json()  # type: ignore[no-any-return]


async def job_when(api: httpx.AsyncClient, job_id: str, state: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        job = (await api.get(f"/api/v1/jobs/{job_id}")).json()
        return job if job["state"] == state else None
    return await eventually(check)  # type: ignore[no-any-return]


def node_states(job: dict[str, Any]) -> dict[str, str]:
    return {n: part["state"] for n, part in job["nodes"].items()}


async def test_queue_holds_the_offline_nodes_command_until_it_comes_back(
        api: httpx.AsyncClient, fleet: LabelledFleet) -> None:
    await lab_with_one_offline(fleet)
    job = await post_job(api, selector={"labels": LAB}, offline="queue")
    assert set(job["nodes"]) == {"lab-1", "lab-2", "lab-3"}

    async def two_done() -> dict[str, Any] | None:
        got = (await api.get(f"/api/v1/jobs/{job['job_id']}")).json()
        return got if got["summary"].get("succeeded") == 2 else None
    got = await eventually(two_done)
    assert got["state"] == "running" and got["nodes"]["lab-3"]["state"] == "queued"
    command_id = got["nodes"]["lab-3"]["command_id"]
    listed = (await api.get("/api/v1/commands", params={"node_id": "lab-3"})).json()
    assert [c["command_id"] for c in listed["items"]] == [command_id]  # an ordinary command
    await fleet.start("lab-3")
    done = await job_when(api, job["job_id"], "done")
    assert node_states(done) == {"lab-1": "succeeded", "lab-2": "succeeded",
                                 "lab-3": "succeeded"}
    assert done["summary"] == {"succeeded": 3}


@pytest.mark.parametrize("policy", ["fail", "skip"])
async def test_fail_and_skip_end_the_offline_nodes_part_at_once_without_a_command(
        api: httpx.AsyncClient, fleet: LabelledFleet, policy: str) -> None:
    await lab_with_one_offline(fleet)
    job = await post_job(api, selector={"labels": LAB}, offline=policy)
    shown = {"fail": "offline", "skip": "skipped"}[policy]
    assert job["nodes"]["lab-3"] == {"command_id": None, "state": shown}
    done = await job_when(api, job["job_id"], "done")
    assert node_states(done) == {"lab-1": "succeeded", "lab-2": "succeeded", "lab-3": shown}
    assert done["summary"] == {"succeeded": 2, shown: 1}
    listed = (await api.get("/api/v1/commands", params={"node_id": "lab-3"})).json()
    assert listed["items"] == []


async def test_a_liveness_selector_picks_only_online_nodes(
        api: httpx.AsyncClient, fleet: LabelledFleet) -> None:
    await lab_with_one_offline(fleet)
    job = await post_job(api, selector={"labels": LAB, "liveness": ["online"]})
    assert set(job["nodes"]) == {"lab-1", "lab-2"}
    job = await post_job(api, nodes=["prod-1", "lab-2"])
    assert list(job["nodes"]) == ["prod-1", "lab-2"]
    await job_when(api, job["job_id"], "done")


def _intervals(cmd: dict[str, Any]) -> tuple[float, float]:
    times = {e["state"]: datetime.fromisoformat(e["at"]).timestamp()
             for e in cmd["timeline"]}
    end = next(times[s] for s in ("succeeded", "failed", "cancelled") if s in times)
    return times["queued"], end


async def test_max_in_flight_is_never_exceeded_by_the_commands_timelines(
        api: httpx.AsyncClient, fleet: LabelledFleet) -> None:
    for i in range(6):
        await fleet.enroll(f"w-{i}", {"role": "worker"})
        await fleet.start(f"w-{i}")
    job = await post_job(api, selector={"labels": {"role": "worker"}}, max_in_flight=2)
    assert sum(n for s, n in job["summary"].items() if s != "pending") <= 2
    done = await job_when(api, job["job_id"], "done")
    assert done["summary"] == {"succeeded": 6}
    spans = [_intervals((await api.get(f"/api/v1/commands/{p['command_id']}")).json())
             for p in done["nodes"].values()]
    for start, _ in spans:  # at each start, how many were in flight (itself included)
        assert sum(1 for s, e in spans if s <= start < e) <= 2


async def test_cancel_stops_the_parts_not_started_and_the_job_ends_cancelled(
        api: httpx.AsyncClient, fleet: LabelledFleet) -> None:
    for node_id in ("c-1", "c-2", "c-3"):
        await fleet.enroll(node_id, {"grp": "c"})  # all offline: nothing can end
    job = await post_job(api, selector={"labels": {"grp": "c"}}, max_in_flight=1)
    resp = await api.post(f"/api/v1/jobs/{job['job_id']}/cancel")
    assert resp.status_code == 202, resp.text
    assert resp.json()["state"] == "cancelled"
    done = await job_when(api, job["job_id"], "cancelled")
    first = done["nodes"]["c-1"]
    assert node_states(done) == {"c-1": "cancelled", "c-2": "cancelled", "c-3": "cancelled"}
    cmd = (await api.get(f"/api/v1/commands/{first['command_id']}")).json()
    assert cmd["state"] == "cancelled"  # its queued command was cancelled too
    listed = (await api.get("/api/v1/jobs")).json()["items"]
    assert listed[0]["job_id"] == job["job_id"] and "nodes" not in listed[0]


async def test_each_nodes_result_arrives_as_a_job_event_on_ws(
        controller: ControllerProc, ws_url: str, api: httpx.AsyncClient,
        fleet: LabelledFleet) -> None:
    await fleet.enroll("e-1", LAB)
    await fleet.enroll("e-2", LAB)
    ws = await browser_connect(ws_url)
    try:
        await ws.send(encode_json(Frame(t="hello", b={"token": controller.token})))
        job = await post_job(api, nodes=["e-1", "e-2"])
        await ws.send(encode_json(Frame(t="subscribe", id="s",
                                        b={"topics": [f"job:{job['job_id']}"]})))
        seen: dict[str, str] = {}
        await fleet.start("e-1")
        await fleet.start("e-2")
        async with asyncio.timeout(15):
            while set(seen.values()) != {"succeeded"} or len(seen) < 2:
                frame = decode_json(await ws.recv())
                if frame.t == "snapshot":
                    seen.update(node_states(frame.b["data"]))
                if frame.t == "event" and frame.b["kind"] == "job.updated":
                    seen.update({n: p["state"] for n, p in frame.b["data"]["nodes"].items()})
    finally:
        await ws.close()
    assert seen == {"e-1": "succeeded", "e-2": "succeeded"}


HOSTILE = [
    ({"kind": "diag.ping"}, "neither selector nor nodes"),
    ({"kind": "diag.ping", "nodes": ["a"], "selector": {"labels": {}}}, "both"),
    ({"kind": "diag.ping", "selector": "env=lab"}, "selector not an object"),
    ({"kind": "diag.ping", "selector": {"labels": {"env": 1}}}, "label value not text"),
    ({"kind": "diag.ping", "selector": {"labels": {}, "where": 1}}, "unknown selector key"),
    ({"kind": "diag.ping", "selector": {"liveness": ["asleep"]}}, "unknown liveness"),
    ({"kind": "diag.ping", "selector": {"liveness": []}}, "empty liveness"),
    ({"kind": "diag.ping", "nodes": []}, "no nodes"),
    ({"kind": "diag.ping", "nodes": "lab-1"}, "nodes not a list"),
    ({"kind": "diag.ping", "nodes": ["Bad Id"]}, "bad node id"),
    ({"kind": "diag.ping", "nodes": ["a", "a"]}, "a node twice"),
    ({"kind": "diag.ping", "nodes": [f"n-{i}" for i in range(10_001)]}, "over 10,000 nodes"),
    ({"kind": "exec", "args": {"argv": "uptime"}, "nodes": ["a"]}, "exec argv not a list"),
    ({"kind": "", "nodes": ["a"]}, "empty kind"),
    ({"kind": "diag.ping", "nodes": ["a"], "offline": "wait"}, "unknown offline policy"),
    ({"kind": "diag.ping", "nodes": ["a"], "max_in_flight": -1}, "negative max_in_flight"),
    ({"kind": "diag.ping", "nodes": ["a"], "max_in_flight": 0}, "zero max_in_flight"),
    ({"kind": "diag.ping", "nodes": ["a"], "max_in_flight": True}, "boolean max_in_flight"),
    ({"kind": "diag.ping", "nodes": ["a"], "max_in_flight": 2**64}, "huge max_in_flight"),
    ({"kind": "diag.ping", "nodes": ["a"], "ttl_s": -5}, "negative ttl"),
    ({"kind": "diag.ping", "nodes": ["a"], "extra": 1}, "unknown field"),
]


@pytest.mark.parametrize(("body", "why"), HOSTILE, ids=[w for _, w in HOSTILE])
async def test_a_hostile_job_body_is_a_400_and_stores_nothing(
        api: httpx.AsyncClient, body: dict[str, Any], why: str) -> None:
    assert_error(await api.post("/api/v1/jobs", json=body), 400, "invalid_request")
    assert (await api.get("/api/v1/jobs")).json()["items"] == []


async def test_jobs_need_an_operator_token_and_unknown_targets_are_404(
        anon: httpx.AsyncClient, api: httpx.AsyncClient) -> None:
    for method, path in [("POST", "/api/v1/jobs"), ("GET", "/api/v1/jobs"),
                         ("GET", "/api/v1/jobs/j_1"), ("POST", "/api/v1/jobs/j_1/cancel")]:
        assert_error(await anon.request(method, path, json={}), 401)
    assert_error(await api.post("/api/v1/jobs", json={"kind": "diag.ping",
                                                      "nodes": ["ghost"]}), 404)
    assert_error(await api.post("/api/v1/jobs", json={
        "kind": "diag.ping", "selector": {"labels": {"env": "nowhere"}}}), 404)
    assert_error(await api.get("/api/v1/jobs/j_nope"), 404)
    assert_error(await api.post("/api/v1/jobs/j_nope/cancel"), 404)


async def test_a_job_waiting_for_a_slot_survives_a_controller_restart(
        controller: ControllerProc, api: httpx.AsyncClient) -> None:
    async with labelled_fleet(controller.url, controller.token) as fleet:
        for node_id in ("r-1", "r-2"):
            await fleet.enroll(node_id, {"grp": "r"})  # offline: r-1's command waits
        job = await post_job(api, selector={"labels": {"grp": "r"}}, max_in_flight=1)
        assert node_states(job) == {"r-1": "queued", "r-2": "pending"}
        controller.terminate()
        controller.start()  # same data dir and port: the driver starts from the store
        await fleet.start("r-1")
        await fleet.start("r-2")
        done = await job_when(api, job["job_id"], "done")
        assert node_states(done) == {"r-1": "succeeded", "r-2": "succeeded"}


async def test_a_done_job_cannot_be_cancelled_and_a_cancel_twice_changes_nothing(
        api: httpx.AsyncClient, fleet: LabelledFleet) -> None:
    await fleet.enroll("d-1", {"grp": "d"})
    await fleet.start("d-1")
    job = await post_job(api, nodes=["d-1"])
    await job_when(api, job["job_id"], "done")
    assert_error(await api.post(f"/api/v1/jobs/{job['job_id']}/cancel"), 409, "job_done")
    await fleet.enroll("d-2", {"grp": "d"})  # offline: its job stays running
    other = await post_job(api, nodes=["d-2"])
    for _ in range(2):
        resp = await api.post(f"/api/v1/jobs/{other['job_id']}/cancel")
        assert resp.status_code == 202 and resp.json()["state"] == "cancelled"


@pytest.mark.parametrize("params", [{"label": "env"}, {"label": "=lab"},
                                    {"liveness": "asleep"}, {"liveness": "online,"}])
async def test_a_bad_node_filter_is_a_400(api: httpx.AsyncClient,
                                          params: dict[str, str]) -> None:
    assert_error(await api.get("/api/v1/nodes", params=params), 400, "invalid_request")
