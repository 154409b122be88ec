"""Jobs across replicas (PostgreSQL + NATS): a job submitted on replica B over nodes held by
replica A runs on every node, judges A's nodes online (``offline="fail"`` does not fail
them), is driven under max_in_flight by whichever replica leads, and shows each node's
result on B's ``/ws``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx

from tether.protocol.codec import decode_json, encode_json
from tether.protocol.frames import Frame

from ..controller.conftest import browser_connect
from ..controller.jobsim import eventually, labelled_fleet
from ..helpers import ControllerProc

LAB = {"env": "lab"}


async def test_a_job_on_replica_b_runs_on_the_nodes_replica_a_holds(
        controller: ControllerProc, make_replica: Callable[..., ControllerProc]) -> None:
    replica_b = make_replica("r-b")
    async with labelled_fleet(controller.url, controller.token) as fleet, \
            httpx.AsyncClient(base_url=replica_b.url, timeout=10, headers={
                "Authorization": f"Bearer {replica_b.token}"}) as api_b:
        for node_id in ("lab-1", "lab-2", "lab-3", "lab-4"):
            await fleet.enroll(node_id, LAB)
        for node_id in ("lab-1", "lab-2", "lab-3"):
            await fleet.start(node_id)  # held by replica A; lab-4 stays offline

        async def online_on_b() -> bool:
            items = (await api_b.get("/api/v1/nodes",
                                     params={"liveness": "online"})).json()["items"]
            return len(items) == 3
        await eventually(online_on_b)
        ws = await browser_connect(replica_b.url.replace("http", "ws") + "/ws")
        try:
            await ws.send(encode_json(Frame(t="hello", b={"token": replica_b.token})))
            resp = await api_b.post("/api/v1/jobs", json={
                "selector": {"labels": LAB}, "kind": "diag.ping", "offline": "fail",
                "max_in_flight": 1})
            assert resp.status_code == 202, resp.text
            job_id = resp.json()["job_id"]
            assert resp.json()["nodes"]["lab-4"]["state"] == "offline"
            await ws.send(encode_json(Frame(t="subscribe", id="s",
                                            b={"topics": [f"job:{job_id}"]})))
            seen: dict[str, str] = {}
            async with asyncio.timeout(30):
                while [seen.get(n) for n in ("lab-1", "lab-2", "lab-3")] != [
                        "succeeded"] * 3:
                    frame = decode_json(await ws.recv())
                    data = frame.b.get("data") if frame.t in ("snapshot", "event") else None
                    if isinstance(data, dict) and isinstance(data.get("nodes"), dict):
                        seen.update({n: p["state"] for n, p in data["nodes"].items()})
        finally:
            await ws.close()
        job = (await api_b.get(f"/api/v1/jobs/{job_id}")).json()
        assert job["summary"] == {"offline": 1, "succeeded": 3}
        assert job["state"] == "done"
        spans = []
        for node_id in ("lab-1", "lab-2", "lab-3"):
            cmd = (await api_b.get(f"/api/v1/commands/{job['nodes'][node_id]['command_id']}"
                                   )).json()
            times = {e["state"]: e["at"] for e in cmd["timeline"]}
            spans.append((times["queued"], times["succeeded"]))
        spans.sort()
        # max_in_flight 1: each command was queued only after the one before it ended
        assert all(spans[i][1] <= spans[i + 1][0] for i in range(len(spans) - 1))
