"""Rollouts end to end against a real controller process, with raw edge clients playing the
nodes (tests/controller/rollout_nodes.py): rings advance only on healthy *and* connected
nodes, a failure halts the rollout fleet-wide with a machine-readable why, rollback offers
go out, pause/resume/abort, an offline node gets its offer on return, progress on /ws."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from ..helpers import ControllerProc
from .conftest import Edge, browser_connect, eventually, json_recv
from .rollout_nodes import PlayedNode, commands_of, enroll_labelled, publish, rollout_when

WEB = {"app": "web"}


@pytest.fixture
async def three(api: httpx.AsyncClient) -> AsyncIterator[list[PlayedNode]]:
    """n1, n2, n3 enrolled with app=web, bundle web 1 and 2 published; not connected."""
    nodes = [await enroll_labelled(api, f"n{i}", WEB) for i in (1, 2, 3)]
    await publish(api, "web", 1)
    await publish(api, "web", 2)
    try:
        yield nodes
    finally:
        for n in nodes:
            await n.aclose()


async def start(api: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    resp = await api.post("/api/v1/rollouts", json={
        "bundle": "web", "version": 2, "selector": WEB, "probation_s": 5, **body})
    assert resp.status_code == 202, resp.text
    view = resp.json()
    assert view["rollout_id"].startswith("r_") and view["state"] == "running"
    return view  # type: ignore[no-any-return]


def node_state(view: dict[str, Any], node_id: str) -> str:
    return str(view["nodes"][node_id]["state"])


async def test_three_nodes_in_two_rings_ring_two_is_offered_only_after_ring_one_is_healthy(
        api: httpx.AsyncClient, edge: Edge, three: list[PlayedNode], ws_url: str,
        controller: ControllerProc) -> None:
    n1, n2, n3 = three
    for n in three:
        await n.connect(edge)
    ws = await browser_connect(ws_url)
    await ws.send(json.dumps({"t": "hello", "id": "h", "b": {"token": controller.token}}))
    assert (await json_recv(ws))["t"] == "welcome"
    view = await start(api, rings=[{"name": "canary", "nodes": ["n1"]},
                                   {"name": "rest", "percent": 100}], max_unavailable=2)
    rid = view["rollout_id"]
    assert [r["size"] for r in view["rings"]] == [1, 2]
    await ws.send(json.dumps({"t": "subscribe", "id": "s",
                              "b": {"topics": [f"rollout:{rid}", "rollouts"]}}))
    while (await json_recv(ws))["t"] != "subscribed":
        pass

    offer = await n1.offer()
    args = offer["args"]
    assert (args["name"], args["version"], args["rollout_id"], args["rollback"]) == (
        "web", 2, rid, False)
    assert args["probation_s"] == 5 and args["failure_threshold"] == 3
    await n1.report(offer, "activated", active=2, lkg=None)
    await rollout_when(api, rid, "n1 activated", lambda v: node_state(v, "n1") == "activated")
    assert await commands_of(api, "n2") == [] and await commands_of(api, "n3") == []
    await n1.report(offer, "healthy", active=2, lkg=None)
    await n1.end(offer, "succeeded")

    o2, o3 = await n2.offer(), await n3.offer()  # both at once: max_unavailable 2
    await n2.update(o2, previous=None)
    await n3.update(o3, previous=None)
    done = await rollout_when(api, rid, "completed", lambda v: v["state"] == "completed")
    assert {n: s["state"] for n, s in done["nodes"].items()} == {
        "n1": "healthy", "n2": "healthy", "n3": "healthy"}
    assert all(s["active"] == 2 and s["connected"] for s in done["nodes"].values())
    assert done["why"] is None and done["counts"] == {"healthy": 3}
    node = (await api.get("/api/v1/nodes/n2")).json()
    assert node["bundles"]["web"]["active"] == 2 and node["bundles"]["web"]["state"] \
        == "healthy"
    listed = (await api.get("/api/v1/nodes")).json()["items"]
    assert {n["node_id"]: n["bundles"]["web"]["active"] for n in listed} == {
        "n1": 2, "n2": 2, "n3": 2}
    assert (await api.get("/api/v1/rollouts")).json()["items"][0]["state"] == "completed"

    seen: dict[str, str] = {}
    while True:  # the live progress: every node's change, then the rollout's end
        frame = await json_recv(ws)
        if frame["t"] != "event" or frame["b"]["topic"] != f"rollout:{rid}":
            continue
        data = frame["b"]["data"]
        seen.update({n: s["state"] for n, s in data["nodes"].items()})
        if data["state"] == "completed":
            break
    assert seen == {"n1": "healthy", "n2": "healthy", "n3": "healthy"}
    await ws.close()


async def test_a_node_of_ring_one_that_rolls_back_halts_the_rollout_and_ring_two_never_gets_it(
        api: httpx.AsyncClient, edge: Edge, three: list[PlayedNode]) -> None:
    n1, _n2, _n3 = three
    for n in three:
        await n.connect(edge)
    rid = (await start(api, rings=[{"name": "one", "nodes": ["n1"]},
                                   {"name": "two", "nodes": ["n2", "n3"]}]))["rollout_id"]
    offer = await n1.offer()
    await n1.report(offer, "activated", active=2, lkg=1)
    await n1.report(offer, "rolled_back", active=1, lkg=None, code="start_failed",
                    reason="the app exited 3 times within probation")
    await n1.end(offer, "failed", "rolled_back: start_failed: the app exited 3 times")
    halted = await rollout_when(api, rid, "halted", lambda v: v["state"] == "halted")
    why = halted["why"]
    assert why["check"] == "failure_threshold" and why["nodes"] == ["n1"]
    assert why["figures"]["failed"] == 1 and why["figures"]["threshold"] == 0
    assert why["reasons"]["n1"].startswith("rolled_back: start_failed: the app exited")
    assert node_state(halted, "n1") == "rolled_back"
    assert node_state(halted, "n2") == node_state(halted, "n3") == "skipped"
    await rollout_when(api, rid, "finished", lambda v: v["finished_at"] is not None)
    assert await commands_of(api, "n2") == [] and await commands_of(api, "n3") == []
    resp = await api.post(f"/api/v1/rollouts/{rid}/resume")
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "rollout_state"


async def test_a_node_that_reported_healthy_then_vanished_blocks_its_ring_until_it_is_back(
        api: httpx.AsyncClient, edge: Edge, three: list[PlayedNode], ws_url: str,
        controller: ControllerProc) -> None:
    n1, n2, n3 = three
    for n in three:
        await n.connect(edge)
    rid = (await start(api, rings=[{"name": "one", "nodes": ["n1", "n2"]},
                                   {"name": "two", "nodes": ["n3"]}],
                       max_unavailable=2))["rollout_id"]
    ws = await browser_connect(ws_url)
    await ws.send(json.dumps({"t": "hello", "id": "h", "b": {"token": controller.token}}))
    assert (await json_recv(ws))["t"] == "welcome"
    await ws.send(json.dumps({"t": "subscribe", "id": "s", "b": {"topics": [f"rollout:{rid}"]}}))
    while (await json_recv(ws))["t"] != "subscribed":
        pass
    o1, o2 = await n1.offer(), await n2.offer()
    await n1.update(o1, previous=1)
    await rollout_when(api, rid, "n1 healthy", lambda v: node_state(v, "n1") == "healthy")
    await n1.disconnect()  # healthy, then gone
    await eventually(lambda: _liveness_not_online(api, "n1"), what="n1 not online")
    await n2.update(o2, previous=1)
    while True:  # the engine has judged ring one with n2 healthy ...
        frame = await json_recv(ws)
        if frame["t"] == "event" and frame["b"]["data"].get("nodes", {}).get(
                "n2", {}).get("state") == "healthy":
            break
    blocked = (await api.get(f"/api/v1/rollouts/{rid}")).json()
    assert blocked["state"] == "running" and blocked["ring"]["index"] == 0  # ... not moved
    assert blocked["nodes"]["n1"]["connected"] is False
    assert blocked["waiting"]["check"] == "ring_ready"
    assert blocked["waiting"]["nodes"] == ["n1"] and blocked["waiting"]["not_connected"] \
        == ["n1"]
    assert await commands_of(api, "n3") == []
    await ws.close()
    await n1.connect(edge)  # back on a new session: now it counts
    o3 = await n3.offer()
    assert o3["args"]["rollout_id"] == rid
    await n3.update(o3, previous=1)
    await rollout_when(api, rid, "completed", lambda v: v["state"] == "completed")


async def _liveness_not_online(api: httpx.AsyncClient, node_id: str) -> bool:
    return bool((await api.get(f"/api/v1/nodes/{node_id}")).json()["liveness"] != "online")


async def test_on_failure_rollback_offers_the_last_known_good_to_the_ring_that_activated(
        api: httpx.AsyncClient, edge: Edge, three: list[PlayedNode]) -> None:
    n1, n2, _n3 = three
    for n in three:
        await n.connect(edge)
    rid = (await start(api, rings=[{"name": "one", "nodes": ["n1", "n2"]},
                                   {"name": "two", "nodes": ["n3"]}],
                       max_unavailable=2, on_failure="rollback"))["rollout_id"]
    o1, o2 = await n1.offer(), await n2.offer()
    await n1.update(o1, previous=1)  # healthy on 2, keeps 1 as last-known-good
    await rollout_when(api, rid, "n1 healthy", lambda v: node_state(v, "n1") == "healthy")
    await n2.report(o2, "rejected", active=1, lkg=None, code="untrusted_key",
                    reason="no trusted key signed it")
    back = await n1.offer()
    args = back["args"]
    assert (args["version"], args["rollback"], args["rollout_id"]) == (1, True, rid)
    # the offer is stored, and sent, a moment before the rollout records it as n1's
    halted = await rollout_when(api, rid, "halted, n1's rollback recorded",
                                lambda v: v["state"] == "halted"
                                and "rollback" in v["nodes"]["n1"])
    assert halted["why"]["nodes"] == ["n2"]
    assert halted["why"]["reasons"]["n2"].startswith("rejected: untrusted_key")
    assert halted["nodes"]["n1"]["rollback"]["state"] == "offered"
    await n1.report(back, "healthy", active=1, lkg=None)
    done = await rollout_when(api, rid, "rolled back",
                              lambda v: v["nodes"]["n1"]["rollback"]["state"] == "healthy")
    assert "rollback" not in done["nodes"]["n2"]  # it never ran 2: nothing to roll back
    await rollout_when(api, rid, "finished", lambda v: v["finished_at"] is not None)
    assert await commands_of(api, "n3") == []
    assert [c["args"]["version"] for c in await commands_of(api, "n1")] == [1, 2]


async def test_pause_holds_the_next_ring_resume_releases_it_and_abort_stops_for_good(
        api: httpx.AsyncClient, edge: Edge, three: list[PlayedNode], ws_url: str,
        controller: ControllerProc) -> None:
    n1, n2, _n3 = three
    for n in three:
        await n.connect(edge)
    rid = (await start(api, rings=[{"name": "one", "nodes": ["n1"]},
                                   {"name": "two", "nodes": ["n2"]},
                                   {"name": "three", "nodes": ["n3"]}]))["rollout_id"]
    offer = await n1.offer()
    paused = await api.post(f"/api/v1/rollouts/{rid}/pause")
    assert paused.status_code == 202 and paused.json()["state"] == "paused"
    assert paused.json()["why"]["check"] == "operator"
    ws = await browser_connect(ws_url)
    await ws.send(json.dumps({"t": "hello", "id": "h", "b": {"token": controller.token}}))
    assert (await json_recv(ws))["t"] == "welcome"
    await ws.send(json.dumps({"t": "subscribe", "id": "s", "b": {"topics": [f"rollout:{rid}"]}}))
    while (frame := await json_recv(ws))["t"] != "subscribed":
        if frame["t"] == "snapshot":
            assert frame["b"]["data"]["state"] == "paused"
    await n1.update(offer, previous=1)
    while True:  # the engine saw n1 healthy while paused ...
        frame = await json_recv(ws)
        if frame["t"] == "event" and frame["b"]["data"].get("nodes", {}).get(
                "n1", {}).get("state") == "healthy":
            break
    data = frame["b"]["data"]
    assert data["state"] == "paused" and data["ring"]["index"] == 0  # the view's shape
    assert await commands_of(api, "n2") == []  # ... and offered nothing more
    await ws.close()
    resumed = await api.post(f"/api/v1/rollouts/{rid}/resume")
    assert resumed.status_code == 202 and resumed.json()["state"] == "running"
    o2 = await n2.offer()
    aborted = await api.post(f"/api/v1/rollouts/{rid}/abort")
    assert aborted.status_code == 202 and aborted.json()["state"] == "aborted"
    await n2.update(o2, previous=1)  # an offer in flight goes on to its end
    done = await rollout_when(api, rid, "finished", lambda v: v["finished_at"] is not None)
    assert (done["state"], node_state(done, "n2"), node_state(done, "n3")) == (
        "aborted", "healthy", "skipped")
    assert await commands_of(api, "n3") == []
    for action in ("pause", "resume", "abort"):
        resp = await api.post(f"/api/v1/rollouts/{rid}/{action}")
        assert resp.status_code == 409, (action, resp.text)
    audit = (await api.get("/api/v1/audit", params={"limit": 50})).json()["items"]
    actions = {a["action"] for a in audit}
    assert {"rollout.start", "rollout.pause", "rollout.resume", "rollout.abort"} <= actions


async def test_an_offline_node_gets_its_offer_when_it_returns_and_a_halt_cancels_one_still_queued(
        api: httpx.AsyncClient, edge: Edge, three: list[PlayedNode]) -> None:
    n1, n2, _ = three
    rid = (await start(api, rings=[{"name": "one", "nodes": ["n1"]}]))["rollout_id"]
    queued = await eventually(lambda: commands_of(api, "n1"), what="n1's offer stored")
    assert queued[0]["state"] == "queued" and queued[0]["kind"] == "update.now"
    await n1.connect(edge)  # it was offline: the offer reaches it now
    offer = await n1.offer()
    assert offer["command_id"] == queued[0]["command_id"]
    await n1.update(offer, previous=1)
    await rollout_when(api, rid, "completed", lambda v: v["state"] == "completed")

    await n2.connect(edge)
    other = await api.post("/api/v1/rollouts", json={
        "bundle": "web", "version": 2, "selector": WEB, "max_unavailable": 2,
        "rings": [{"name": "one", "nodes": ["n2", "n3"]}]})  # n3 is offline
    assert other.status_code == 202, other.text
    rid2 = other.json()["rollout_id"]
    o2 = await n2.offer()
    n3_cmds = await eventually(lambda: commands_of(api, "n3"), what="n3's offer stored")
    await n2.report(o2, "failed", active=1, lkg=None, code="download_failed",
                    reason="404 after 5 tries")
    done = await rollout_when(api, rid2, "finished", lambda v: v["finished_at"] is not None)
    assert done["state"] == "halted" and node_state(done, "n3") == "skipped"
    cancelled = (await api.get(f"/api/v1/commands/{n3_cmds[0]['command_id']}")).json()
    assert cancelled["state"] == "cancelled"  # n3 will not get it when it returns


async def test_bundle_status_updates_the_node_live_and_a_hostile_one_is_a_poison_frame(
        api: httpx.AsyncClient, edge: Edge, three: list[PlayedNode], ws_url: str,
        controller: ControllerProc) -> None:
    n1 = three[0]
    await n1.connect(edge)
    ws = await browser_connect(ws_url)
    await ws.send(json.dumps({"t": "hello", "id": "h", "b": {"token": controller.token}}))
    assert (await json_recv(ws))["t"] == "welcome"
    await ws.send(json.dumps({"t": "subscribe", "id": "s", "b": {"topics": ["node:n1"]}}))
    while (await json_recv(ws))["t"] != "subscribed":
        pass
    fake = {"command_id": "c", "args": {"name": "web", "version": 2, "rollout_id": None}}
    await n1.report(fake, "activated", active=2, lkg=1)
    while (event := await json_recv(ws))["b"].get("kind") != "bundle.updated":
        pass
    entry = event["b"]["data"]["bundles"]["web"]
    assert (entry["active"], entry["last_known_good"], entry["state"]) == (2, 1, "activated")
    assert client_of(n1) is not None
    await client_of(n1).send(_frame(n1, {"name": "web", "version": 2, "state": "exploded",
                                         "at_ms": 1}))
    while (frame := await client_of(n1).recv()).t != "error":
        pass
    assert frame.b["code"] == "poison_frame"
    node = (await api.get("/api/v1/nodes/n1")).json()
    assert node["bundles"]["web"]["state"] == "activated"
    await ws.close()


def client_of(n: PlayedNode) -> Any:
    return n.client


def _frame(n: PlayedNode, body: dict[str, Any]) -> Any:
    from tether.protocol.frames import Frame
    n.q += 1
    return Frame(t="bundle.status", s="evt", q=n.q, id=f"x{n.q}", b=body)


HOSTILE: list[tuple[dict[str, Any], str]] = [
    ({"bundle": "Web!"}, "bundle"),
    ({"version": 0}, "version"), ({"version": "2"}, "version"), ({"version": True}, "version"),
    ({"version": 2**60}, "version"),
    ({"selector": ["app"]}, "selector"), ({"selector": {"app": 1}}, "selector"),
    ({"selector": {f"k{i}": "v" for i in range(65)}}, "selector"),
    ({"rings": []}, "rings"), ({"rings": "all"}, "rings"),
    ({"rings": [{"name": "a", "percent": 0}]}, "rings[0].percent"),
    ({"rings": [{"name": "a", "percent": 101}]}, "rings[0].percent"),
    ({"rings": [{"name": "a", "percent": float("inf")}]}, "invalid"),
    ({"rings": [{"name": "a", "percent": 50, "nodes": ["n1"]}]}, "rings[0]"),
    ({"rings": [{"name": "a"}]}, "rings[0]"),
    ({"rings": [{"name": "", "percent": 5}]}, "rings[0].name"),
    ({"rings": [{"name": "a", "nodes": ["N1"]}]}, "rings[0].nodes"),
    ({"rings": [{"name": "a", "nodes": ["n1", "n1"]}]}, "rings[0].nodes"),
    ({"rings": [{"name": "a", "percent": 5}, {"name": "a", "percent": 9}]}, "rings"),
    ({"rings": [{"name": f"r{i}", "percent": 5} for i in range(17)]}, "rings"),
    ({"rings": [{"name": "a", "percent": 5, "extra": 1}]}, "rings[0].extra"),
    ({"max_unavailable": 0}, "max_unavailable"), ({"max_unavailable": 1.5}, "max_unavailable"),
    ({"probation_s": -1}, "probation_s"), ({"probation_s": 1e9}, "probation_s"),
    ({"failure_threshold": -1}, "failure_threshold"),
    ({"on_failure": "explode"}, "on_failure"),
    ({"max_failed_starts": 0}, "max_failed_starts"), ({"force": "yes"}, "force"),
    ({"surprise": 1}, "surprise"),
]


@pytest.mark.parametrize(("change", "field"), HOSTILE, ids=[f for _, f in HOSTILE])
async def test_a_hostile_rollout_request_is_400_naming_the_field_and_stores_nothing(
        api: httpx.AsyncClient, change: dict[str, Any], field: str) -> None:
    body = {"bundle": "web", "version": 2, "selector": WEB,
            "rings": [{"name": "all", "percent": 100}], **change}
    if field == "invalid":  # not even JSON (inf): the body parser refuses it
        resp = await api.post("/api/v1/rollouts", content=json.dumps(body),
                              headers={"Content-Type": "application/json"})
    else:
        resp = await api.post("/api/v1/rollouts", json=body)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == "invalid_request"
    if field != "invalid":
        assert field in error["message"], error
    assert (await api.get("/api/v1/rollouts")).json()["items"] == []


async def test_an_unpublished_version_a_missing_node_and_a_second_rollout_are_refused(
        api: httpx.AsyncClient, three: list[PlayedNode], anon: httpx.AsyncClient) -> None:
    rings = [{"name": "all", "percent": 100}]
    resp = await api.post("/api/v1/rollouts", json={"bundle": "web", "version": 3,
                                                    "rings": rings})
    assert resp.status_code == 404 and "not published" in resp.json()["error"]["message"]
    resp = await api.post("/api/v1/rollouts", json={
        "bundle": "web", "version": 2, "rings": [{"name": "a", "nodes": ["n9"]}]})
    assert resp.status_code == 404 and "n9" in resp.json()["error"]["message"]
    resp = await api.post("/api/v1/rollouts", json={
        "bundle": "web", "version": 2, "selector": {"app": "db"}, "rings": rings})
    assert resp.status_code == 404
    first = await start(api, rings=rings)
    resp = await api.post("/api/v1/rollouts", json={"bundle": "web", "version": 2,
                                                    "rings": rings})
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "rollout_running"
    assert first["rollout_id"] in resp.json()["error"]["message"]
    assert (await anon.post("/api/v1/rollouts", json={})).status_code == 401
    assert (await api.get("/api/v1/rollouts/r_nope")).status_code == 404
    assert (await api.post("/api/v1/rollouts/r_nope/pause")).status_code == 404


async def test_on_failure_pause_pauses_with_the_why_and_resume_accepts_that_failure(
        api: httpx.AsyncClient, edge: Edge, three: list[PlayedNode]) -> None:
    n1, n2 = three[0], three[1]
    await n1.connect(edge)
    await n2.connect(edge)
    rid = (await start(api, rings=[{"name": "one", "nodes": ["n1", "n2"]}],
                       on_failure="pause"))["rollout_id"]
    o1 = await n1.offer()
    await n1.report(o1, "rejected", active=1, lkg=None, code="bundle_expired",
                    reason="the manifest expired")
    paused = await rollout_when(api, rid, "paused", lambda v: v["state"] == "paused")
    assert paused["why"]["check"] == "failure_threshold" and paused["why"]["nodes"] == ["n1"]
    assert node_state(paused, "n2") == "pending" and await commands_of(api, "n2") == []
    resumed = (await api.post(f"/api/v1/rollouts/{rid}/resume")).json()
    assert resumed["state"] == "running" and resumed["accepted_failures"] == 1
    o2 = await n2.offer()
    await n2.update(o2, previous=1)
    done = await rollout_when(api, rid, "completed", lambda v: v["state"] == "completed")
    assert done["counts"] == {"healthy": 1, "rejected": 1}
