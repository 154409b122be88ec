"""The REST API under /api/v1 against a real controller: auth, validation, error shape,
commands (idempotency, cancel, expiry) and logs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from tether.common import __version__

from ..helpers import ControllerProc
from .conftest import Edge, Identity, assert_error, eventually

Enroll = Callable[..., Awaitable[Identity]]

PROTECTED = [
    ("POST", "/api/v1/join-tokens"),
    ("GET", "/api/v1/nodes"),
    ("GET", "/api/v1/nodes/n-1"),
    ("GET", "/api/v1/nodes/n-1/sessions"),
    ("POST", "/api/v1/nodes/n-1/disable"),
    ("POST", "/api/v1/nodes/n-1/enable"),
    ("GET", "/api/v1/nodes/n-1/events"),
    ("POST", "/api/v1/nodes/n-1/commands"),
    ("GET", "/api/v1/commands/c_1"),
    ("POST", "/api/v1/commands/c_1/cancel"),
    ("GET", "/api/v1/commands/c_1/logs"),
]


async def submit_raw(api: httpx.AsyncClient, node_id: str, body: Any,
                     **kw: Any) -> httpx.Response:
    return await api.post(f"/api/v1/nodes/{node_id}/commands", json=body, **kw)


async def submit(api: httpx.AsyncClient, node_id: str, **body: Any) -> dict[str, Any]:
    resp = await submit_raw(api, node_id, {"kind": "exec", "args": {"argv": ["true"]},
                                           **body})
    assert resp.status_code == 202, resp.text
    return resp.json()  # type: ignore[no-any-return]


async def get_command(api: httpx.AsyncClient, command_id: str) -> dict[str, Any]:
    resp = await api.get(f"/api/v1/commands/{command_id}")
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


# -- health and auth ---------------------------------------------------------------------

async def test_health_needs_no_auth_and_reports_ok_and_the_version(
        anon: httpx.AsyncClient) -> None:
    resp = await anon.get("/api/v1/health")
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "ok"
    assert body["version"] == __version__
    assert isinstance(body["replica_id"], str)  # behind a load balancer: who answered


async def test_every_other_route_without_a_token_is_401(anon: httpx.AsyncClient) -> None:
    for method, path in PROTECTED:
        resp = await anon.request(method, path, json={})
        assert_error(resp, 401, "unauthorized")


async def test_every_other_route_with_a_wrong_token_is_401(
        anon: httpx.AsyncClient, controller: ControllerProc) -> None:
    for method, path in PROTECTED:
        resp = await anon.request(method, path, json={},
                                  headers={"Authorization": "Bearer tok_not-a-real-token"})
        assert_error(resp, 401, "unauthorized")
    resp = await anon.get("/api/v1/nodes", headers={"Authorization": "Bearer"})
    assert_error(resp, 401, "unauthorized")
    # the right token under another scheme is not accepted either
    token = controller.token
    resp = await anon.get("/api/v1/nodes", headers={"Authorization": f"Basic {token}"})
    assert_error(resp, 401, "unauthorized")


async def test_a_valid_token_lists_nodes(api: httpx.AsyncClient, enroll: Enroll) -> None:
    ident = await enroll()
    resp = await api.get("/api/v1/nodes")
    assert resp.status_code == 200
    items = resp.json()["items"]
    assert [n["node_id"] for n in items] == [ident.node_id]
    assert items[0]["liveness"] == "offline"
    assert items[0]["enabled"] is True


async def test_an_unknown_route_is_a_404_json_error(api: httpx.AsyncClient,
                                                    anon: httpx.AsyncClient) -> None:
    assert_error(await api.get("/api/v1/no-such-thing"), 404, "not_found")
    assert_error(await anon.get("/nope"), 404, "not_found")
    # and a known route with the wrong method is a JSON error too
    assert_error(await api.delete("/api/v1/nodes"), 405, "method_not_allowed")


# -- join tokens -------------------------------------------------------------------------

async def test_a_join_token_is_created_with_its_expiry_and_uses(api: httpx.AsyncClient) -> None:
    resp = await api.post("/api/v1/join-tokens", json={"ttl_s": 60, "uses": 3})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert isinstance(body["token"], str) and body["token"]
    assert body["uses"] == 3
    assert isinstance(body["expires_at"], str)


async def test_a_join_token_request_with_bad_json_is_400(api: httpx.AsyncClient) -> None:
    resp = await api.post("/api/v1/join-tokens", content=b"{not json",
                          headers={"Content-Type": "application/json"})
    assert_error(resp, 400, "invalid_request")


async def test_a_request_body_over_1_mib_is_413(api: httpx.AsyncClient) -> None:
    resp = await api.post("/api/v1/join-tokens", content=b" " * ((1 << 20) + 1),
                          headers={"Content-Type": "application/json"})
    assert_error(resp, 413, "frame_too_large")


async def test_a_join_token_request_that_is_not_an_object_is_400(
        api: httpx.AsyncClient) -> None:
    for raw in (b"[1, 2]", b'"token"', b"3", b"null"):
        resp = await api.post("/api/v1/join-tokens", content=raw,
                              headers={"Content-Type": "application/json"})
        assert_error(resp, 400, "invalid_request")


async def test_a_join_token_with_a_negative_ttl_is_400(api: httpx.AsyncClient) -> None:
    resp = await api.post("/api/v1/join-tokens", json={"ttl_s": -5})
    assert_error(resp, 400, "invalid_request")


async def test_a_join_token_with_a_ttl_under_one_second_or_not_a_number_is_400(
        api: httpx.AsyncClient) -> None:
    for ttl in (0, 0.001, 0.5, "60", True, None):
        resp = await api.post("/api/v1/join-tokens", json={"ttl_s": ttl}
                              if ttl is not None else {"ttl_s": [60]})
        assert_error(resp, 400, "invalid_request")


async def test_a_join_token_with_zero_uses_is_400(api: httpx.AsyncClient) -> None:
    resp = await api.post("/api/v1/join-tokens", json={"uses": 0})
    assert_error(resp, 400, "invalid_request")


async def test_a_join_token_with_negative_fractional_or_non_integer_uses_is_400(
        api: httpx.AsyncClient) -> None:
    for uses in (-1, 1.5, "2", True):
        resp = await api.post("/api/v1/join-tokens", json={"uses": uses})
        assert_error(resp, 400, "invalid_request")


# -- nodes -------------------------------------------------------------------------------

async def test_an_unknown_node_is_404(api: httpx.AsyncClient) -> None:
    assert_error(await api.get("/api/v1/nodes/no-such-node"), 404, "not_found")
    assert_error(await api.get("/api/v1/nodes/no-such-node/sessions"), 404, "not_found")
    assert_error(await api.get("/api/v1/nodes/no-such-node/events"), 404, "not_found")
    assert_error(await api.post("/api/v1/nodes/no-such-node/disable"), 404, "not_found")
    assert_error(await api.post("/api/v1/nodes/no-such-node/enable"), 404, "not_found")


async def test_a_never_connected_node_is_offline_with_no_session(
        api: httpx.AsyncClient, enroll: Enroll) -> None:
    ident = await enroll()
    resp = await api.get(f"/api/v1/nodes/{ident.node_id}")
    assert resp.status_code == 200
    node = resp.json()
    assert node["node_id"] == ident.node_id
    assert node["liveness"] == "offline"
    assert node["session"] is None
    assert (await api.get(f"/api/v1/nodes/{ident.node_id}/sessions")).json() == {"items": []}


# -- commands ----------------------------------------------------------------------------

async def test_a_command_for_an_unknown_node_is_404(api: httpx.AsyncClient) -> None:
    resp = await submit_raw(api, "no-such-node", {"kind": "exec", "args": {"argv": ["true"]}})
    assert_error(resp, 404, "not_found")


async def assert_all_400(api: httpx.AsyncClient, node_id: str,
                         bodies: list[dict[str, Any]]) -> None:
    for body in bodies:
        resp = await submit_raw(api, node_id, body)
        assert_error(resp, 400, "invalid_request")
    assert (await api.get(f"/api/v1/nodes/{node_id}")).status_code == 200


async def test_a_command_without_a_kind_is_400(api: httpx.AsyncClient,
                                               enroll: Enroll) -> None:
    ident = await enroll()
    await assert_all_400(api, ident.node_id, [
        {"args": {"argv": ["true"]}}, {"kind": "", "args": {}}, {"kind": 5, "args": {}},
        {"kind": "k" * 65, "args": {}}])


async def test_a_command_whose_args_are_not_an_object_is_400(api: httpx.AsyncClient,
                                                             enroll: Enroll) -> None:
    ident = await enroll()
    await assert_all_400(api, ident.node_id, [
        {"kind": "exec", "args": ["true"]}, {"kind": "diag.ping", "args": "x"},
        {"kind": "diag.ping", "args": 3}])


async def test_an_exec_command_without_a_valid_argv_is_400(api: httpx.AsyncClient,
                                                           enroll: Enroll) -> None:
    ident = await enroll()
    await assert_all_400(api, ident.node_id, [
        {"kind": "exec", "args": {}}, {"kind": "exec", "args": {"argv": []}},
        {"kind": "exec", "args": {"argv": "true"}},
        {"kind": "exec", "args": {"argv": ["true", 1]}},
        {"kind": "cancel", "args": {}}])


async def test_a_command_with_ttl_0_is_400(api: httpx.AsyncClient, enroll: Enroll) -> None:
    ident = await enroll()
    await assert_all_400(api, ident.node_id, [
        {"kind": "exec", "args": {"argv": ["true"]}, "ttl_s": 0},
        {"kind": "exec", "args": {"argv": ["true"]}, "ttl_s": -1},
        {"kind": "exec", "args": {"argv": ["true"]}, "ttl_s": "10"}])
    listed = (await api.get("/api/v1/nodes")).json()["items"]
    assert [n["node_id"] for n in listed] == [ident.node_id]


async def test_a_command_body_that_is_not_json_is_400(api: httpx.AsyncClient,
                                                      enroll: Enroll) -> None:
    ident = await enroll()
    resp = await api.post(f"/api/v1/nodes/{ident.node_id}/commands", content=b"kind=exec",
                          headers={"Content-Type": "application/json"})
    assert_error(resp, 400, "invalid_request")


async def test_a_queued_command_has_its_view(api: httpx.AsyncClient, enroll: Enroll) -> None:
    ident = await enroll()
    cmd = await submit(api, ident.node_id, ttl_s=600)
    assert cmd["command_id"]
    assert cmd["node_id"] == ident.node_id
    assert cmd["kind"] == "exec"
    assert cmd["args"] == {"argv": ["true"]}
    assert cmd["state"] == "queued"
    assert cmd["deadline"] is not None
    assert [e["state"] for e in cmd["timeline"]] == ["queued"]
    assert (await get_command(api, cmd["command_id"]))["state"] == "queued"


async def test_the_idempotency_key_returns_the_same_command_twice(
        api: httpx.AsyncClient, enroll: Enroll) -> None:
    ident = await enroll()
    body = {"kind": "exec", "args": {"argv": ["true"]}}
    headers = {"Idempotency-Key": "deploy-2024-01"}
    first = await submit_raw(api, ident.node_id, body, headers=headers)
    assert first.status_code == 202, first.text
    second = await submit_raw(api, ident.node_id, body, headers=headers)
    assert second.status_code == 200, second.text
    assert second.json()["command_id"] == first.json()["command_id"]
    third = await submit_raw(api, ident.node_id, body, headers={"Idempotency-Key": "other"})
    assert third.status_code == 202
    assert third.json()["command_id"] != first.json()["command_id"]
    resp = await submit_raw(api, ident.node_id, body, headers={"Idempotency-Key": "k" * 129})
    assert_error(resp, 400, "invalid_request")


async def test_an_unknown_command_is_404(api: httpx.AsyncClient) -> None:
    assert_error(await api.get("/api/v1/commands/c_nope"), 404, "not_found")
    assert_error(await api.post("/api/v1/commands/c_nope/cancel"), 404, "not_found")
    assert_error(await api.get("/api/v1/commands/c_nope/logs"), 404, "not_found")


async def test_cancelling_a_queued_command_of_an_offline_node_cancels_it(
        api: httpx.AsyncClient, enroll: Enroll) -> None:
    ident = await enroll()
    cmd = await submit(api, ident.node_id)
    resp = await api.post(f"/api/v1/commands/{cmd['command_id']}/cancel")
    assert resp.status_code == 202, resp.text
    assert resp.json()["state"] == "cancelled"
    got = await get_command(api, cmd["command_id"])
    assert got["state"] == "cancelled"
    assert [e["state"] for e in got["timeline"]] == ["queued", "cancelled"]


async def test_a_cancelled_command_is_not_delivered_when_the_node_connects(
        api: httpx.AsyncClient, enroll: Enroll, edge: Edge) -> None:
    ident = await enroll()
    dead = await submit(api, ident.node_id)
    resp = await api.post(f"/api/v1/commands/{dead['command_id']}/cancel")
    assert resp.status_code == 202
    client = await edge.session(ident)
    live = await submit(api, ident.node_id)
    deliver = await client.recv_type("cmd.deliver")
    assert deliver.b["command_id"] == live["command_id"]
    assert deliver.q == 1


async def test_cancelling_a_terminal_command_is_409(api: httpx.AsyncClient,
                                                    enroll: Enroll) -> None:
    ident = await enroll()
    cmd = await submit(api, ident.node_id)
    assert (await api.post(f"/api/v1/commands/{cmd['command_id']}/cancel")).status_code == 202
    resp = await api.post(f"/api/v1/commands/{cmd['command_id']}/cancel")
    assert_error(resp, 409, "command_terminal")
    assert (await get_command(api, cmd["command_id"]))["state"] == "cancelled"


async def test_logs_with_a_negative_after_are_400(api: httpx.AsyncClient,
                                                  enroll: Enroll) -> None:
    ident = await enroll()
    cmd = await submit(api, ident.node_id)
    for after in ("-1", "x", "1.5"):
        resp = await api.get(f"/api/v1/commands/{cmd['command_id']}/logs",
                             params={"after": after})
        assert_error(resp, 400, "invalid_request")


async def test_logs_with_limit_0_are_400(api: httpx.AsyncClient, enroll: Enroll) -> None:
    ident = await enroll()
    cmd = await submit(api, ident.node_id)
    for limit in ("0", "-5", "10001"):
        resp = await api.get(f"/api/v1/commands/{cmd['command_id']}/logs",
                             params={"limit": limit})
        assert_error(resp, 400, "invalid_request")


async def test_logs_of_a_command_without_output_are_empty(api: httpx.AsyncClient,
                                                          enroll: Enroll) -> None:
    ident = await enroll()
    cmd = await submit(api, ident.node_id)
    resp = await api.get(f"/api/v1/commands/{cmd['command_id']}/logs",
                         params={"after": "0", "limit": "10"})
    assert resp.status_code == 200
    assert resp.json() == {"items": [], "next_after": 0, "more": False}


async def test_a_command_for_a_never_connected_node_expires_after_its_ttl_undelivered(
        api: httpx.AsyncClient, enroll: Enroll, edge: Edge) -> None:
    ident = await enroll()
    cmd = await submit(api, ident.node_id, ttl_s=1)

    async def expired() -> dict[str, Any] | None:
        got = await get_command(api, cmd["command_id"])
        return got if got["state"] == "expired" else None

    got = await eventually(expired, timeout_s=6, what="command expired")
    assert [e["state"] for e in got["timeline"]] == ["queued", "expired"]
    # it never reaches the node: the first thing the node is sent is a later command
    client = await edge.session(ident)
    later = await submit(api, ident.node_id)
    deliver = await client.recv_type("cmd.deliver")
    assert deliver.b["command_id"] == later["command_id"]
    assert deliver.q == 1
    assert (await get_command(api, cmd["command_id"]))["state"] == "expired"
