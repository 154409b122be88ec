"""A rollout across replicas (PostgreSQL + NATS): started on replica B, whose nodes B holds,
driven by the leader A; A is killed with SIGKILL mid-rollout and B, now leader, goes on
from what the store says: the next ring is offered once, nothing is offered twice."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from ..controller.conftest import Edge, eventually
from ..controller.rollout_nodes import commands_of, enroll_labelled, publish, rollout_when
from ..helpers import ControllerProc


async def test_a_leader_killed_mid_rollout_hands_the_rollout_to_the_next_leader(
        controller: ControllerProc, make_replica: Callable[..., ControllerProc],
        edges: Callable[[ControllerProc], Edge]) -> None:
    replica_b = make_replica("r-b")
    async with httpx.AsyncClient(base_url=controller.url, timeout=10, headers={
            "Authorization": f"Bearer {controller.token}"}) as api_a, \
            httpx.AsyncClient(base_url=replica_b.url, timeout=10, headers={
                "Authorization": f"Bearer {replica_b.token}"}) as api_b:
        async def a_leads() -> bool:
            return bool((await api_a.get("/api/v1/diag")).json()["cluster"]["leader"])
        await eventually(a_leads, timeout_s=15, what="replica A to lead")
        n1 = await enroll_labelled(api_b, "n1", {"app": "web"})
        n2 = await enroll_labelled(api_b, "n2", {"app": "web"})
        await publish(api_b, "web", 1)
        edge = edges(replica_b)
        try:
            await n1.connect(edge)
            await n2.connect(edge)
            resp = await api_b.post("/api/v1/rollouts", json={
                "bundle": "web", "version": 1, "probation_s": 1,
                "rings": [{"name": "one", "nodes": ["n1"]},
                          {"name": "two", "nodes": ["n2"]}]})
            assert resp.status_code == 202, resp.text
            rid = resp.json()["rollout_id"]
            offer = await n1.offer()  # made by A's engine, sent by B, which holds n1
            assert offer["args"]["rollout_id"] == rid
            await n1.report(offer, "activated", active=1, lkg=None)
            await rollout_when(api_b, rid, "n1 activated",
                               lambda v: v["nodes"]["n1"]["state"] == "activated")
            controller.kill9()

            async def b_leads() -> bool:
                return bool((await api_b.get("/api/v1/diag")).json()["cluster"]["leader"])
            await eventually(b_leads, timeout_s=20, what="replica B to lead")
            await n1.report(offer, "healthy", active=1, lkg=None)
            await n1.end(offer, "succeeded")
            o2 = await n2.offer(timeout_s=20)
            assert o2["args"]["rollout_id"] == rid
            await n2.update(o2, previous=None)
            done = await rollout_when(api_b, rid, "completed",
                                      lambda v: v["state"] == "completed")
            assert {n: s["state"] for n, s in done["nodes"].items()} == {
                "n1": "healthy", "n2": "healthy"}
            assert len(await commands_of(api_b, "n1")) == 1  # offered once, whoever led
            assert len(await commands_of(api_b, "n2")) == 1
        finally:
            await n1.aclose()
            await n2.aclose()
