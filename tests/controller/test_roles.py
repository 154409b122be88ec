"""Roles, operator tokens, audit, join-token management and node removal, against a real
controller process (issue 13, "Operator auth and audit")."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tether.protocol.signing import generate_private_key

from ..helpers import FAST, ControllerProc
from .conftest import (
    NET_TIMEOUT_S,
    Edge,
    Identity,
    assert_error,
    browser_connect,
    eventually,
    json_expect_close,
    json_recv,
)

Enroll = Callable[..., Awaitable[Identity]]

# every mutating route, with a body it would accept from a caller of the right role
MUTATING: list[tuple[str, str, Any, str]] = [  # (method, path, body, role needed)
    ("POST", "/api/v1/nodes/{node}/commands", {"kind": "exec", "args": {"argv": ["true"]}},
     "operator"),
    ("POST", "/api/v1/commands/{command}/pause", None, "operator"),
    ("POST", "/api/v1/commands/{command}/resume", None, "operator"),
    ("POST", "/api/v1/commands/{command}/cancel", None, "operator"),
    ("POST", "/api/v1/nodes/{node}/disable", None, "admin"),
    ("POST", "/api/v1/nodes/{node}/enable", None, "admin"),
    ("DELETE", "/api/v1/nodes/{node}", None, "admin"),
    ("POST", "/api/v1/join-tokens", {"uses": 1}, "admin"),
    ("DELETE", "/api/v1/join-tokens/{join_token}", None, "admin"),
    ("POST", "/api/v1/tokens", {"role": "viewer"}, "admin"),
    ("DELETE", "/api/v1/tokens/{token}", None, "admin"),
]
READS = ["/api/v1/whoami", "/api/v1/nodes", "/api/v1/nodes/{node}", "/api/v1/nodes/{node}/sessions",
         "/api/v1/nodes/{node}/events", "/api/v1/nodes/{node}/monitor",
         "/api/v1/nodes/{node}/logs", "/api/v1/nodes/{node}/dead-letters",
         "/api/v1/commands", "/api/v1/commands/{command}",
         "/api/v1/commands/{command}/logs", "/api/v1/diag"]
ADMIN_READS = ["/api/v1/tokens", "/api/v1/join-tokens", "/api/v1/audit"]


async def new_token(api: httpx.AsyncClient, role: str, **body: Any) -> dict[str, Any]:
    resp = await api.post("/api/v1/tokens", json={"role": role, **body})
    assert resp.status_code == 201, resp.text
    out: dict[str, Any] = resp.json()
    assert {"token", "token_id", "role"} <= set(out) and out["role"] == role
    return out


@pytest.fixture
async def as_role(controller: ControllerProc, api: httpx.AsyncClient
                  ) -> AsyncIterator[Callable[[str], Awaitable[httpx.AsyncClient]]]:
    clients: list[httpx.AsyncClient] = []

    async def make(role: str) -> httpx.AsyncClient:
        token = (await new_token(api, role, name=f"test {role}"))["token"]
        client = httpx.AsyncClient(base_url=controller.url, timeout=NET_TIMEOUT_S,
                                   headers={"Authorization": f"Bearer {token}"})
        clients.append(client)
        return client
    try:
        yield make
    finally:
        for client in clients:
            await client.aclose()


async def targets(api: httpx.AsyncClient, enroll: Enroll) -> dict[str, str]:
    """A fresh node, a command queued for it, a join token and an operator token to act
    on (each mutating route gets its own, so one route's effect does not hide another's)."""
    ident = await enroll()
    cmd = await api.post(f"/api/v1/nodes/{ident.node_id}/commands",
                         json={"kind": "exec", "args": {"argv": ["true"]}})
    assert cmd.status_code == 202, cmd.text
    jt = await api.post("/api/v1/join-tokens", json={"uses": 1})
    return {"node": ident.node_id, "command": cmd.json()["command_id"],
            "join_token": jt.json()["token_id"],
            "token": (await new_token(api, "viewer"))["token_id"]}


def permitted(resp: httpx.Response) -> bool:
    """Past the role check: done, or refused for a reason other than auth (pausing a
    command that is not running yet is 409 whoever asks)."""
    return resp.status_code < 300 or resp.status_code == 409


def route_of(path: str) -> str:
    """The route template the audit log names for one of MUTATING's paths."""
    for short, param in (("{node}", "{node_id}"), ("{command}", "{command_id}"),
                         ("{join_token}", "{token_id}"), ("{token}", "{token_id}")):
        path = path.replace(short, param)
    return path


# -- the role matrix -------------------------------------------------------------------------

async def test_a_viewer_reads_everything_but_is_refused_every_change_with_403(
        api: httpx.AsyncClient, enroll: Enroll,
        as_role: Callable[[str], Awaitable[httpx.AsyncClient]]) -> None:
    viewer = await as_role("viewer")
    ids = await targets(api, enroll)
    for path in READS:
        resp = await viewer.get(path.format(**ids))
        assert resp.status_code == 200, (path, resp.text)
    for path in ADMIN_READS:
        assert_error(await viewer.get(path), 403, "forbidden")
    for method, path, body, _ in MUTATING:
        resp = await viewer.request(method, path.format(**ids), json=body)
        err = assert_error(resp, 403, "forbidden")
        assert "viewer" in err["message"], err
    # nothing changed: the node is there and enabled, the command still queued
    node = (await api.get(f"/api/v1/nodes/{ids['node']}")).json()
    assert node["enabled"] is True
    assert (await api.get(f"/api/v1/commands/{ids['command']}")).json()["state"] == "queued"


async def test_an_operator_runs_commands_but_admin_routes_answer_403(
        api: httpx.AsyncClient, enroll: Enroll,
        as_role: Callable[[str], Awaitable[httpx.AsyncClient]]) -> None:
    operator = await as_role("operator")
    ids = await targets(api, enroll)
    for method, path, body, needs in MUTATING:
        resp = await operator.request(method, path.format(**ids), json=body)
        if needs == "admin":
            assert_error(resp, 403, "forbidden")
        else:
            assert permitted(resp), (path, resp.text)
    for path in ADMIN_READS:
        assert_error(await operator.get(path), 403, "forbidden")


async def test_an_admin_token_made_by_the_api_may_do_everything(
        api: httpx.AsyncClient, enroll: Enroll,
        as_role: Callable[[str], Awaitable[httpx.AsyncClient]]) -> None:
    admin = await as_role("admin")
    ids = await targets(api, enroll)
    for method, path, body, _ in MUTATING:
        resp = await admin.request(method, path.format(**ids), json=body)
        assert permitted(resp), (method, path, resp.text)


# -- tokens ------------------------------------------------------------------------------------

async def test_a_revoked_token_gets_401_at_its_next_request(
        api: httpx.AsyncClient, controller: ControllerProc) -> None:
    made = await new_token(api, "operator")
    headers = {"Authorization": f"Bearer {made['token']}"}
    async with httpx.AsyncClient(base_url=controller.url, headers=headers,
                                 timeout=NET_TIMEOUT_S) as client:
        assert (await client.get("/api/v1/nodes")).status_code == 200
        resp = await api.delete(f"/api/v1/tokens/{made['token_id']}")
        assert resp.status_code == 200, resp.text
        err = assert_error(await client.get("/api/v1/nodes"), 401, "unauthorized")
        assert "revoked" in err["message"]
    listed = {t["token_id"]: t for t in (await api.get("/api/v1/tokens")).json()["items"]}
    assert listed[made["token_id"]]["state"] == "revoked"
    assert_error(await api.delete("/api/v1/tokens/tk_nosuchtoken"), 404, "not_found")


async def test_whoami_names_the_callers_token_and_role(
        api: httpx.AsyncClient, as_role: Callable[[str], Awaitable[httpx.AsyncClient]]
        ) -> None:
    viewer = await as_role("viewer")
    me = (await viewer.get("/api/v1/whoami")).json()
    assert me["role"] == "viewer" and me["name"] == "test viewer"
    assert me["token_id"].startswith("tk_")
    admin = (await api.get("/api/v1/whoami")).json()
    assert (admin["role"], admin["name"]) == ("admin", "admin")


async def test_an_expired_token_gets_401(api: httpx.AsyncClient,
                                         controller: ControllerProc) -> None:
    made = await new_token(api, "admin", ttl_s=1)
    headers = {"Authorization": f"Bearer {made['token']}"}
    async with httpx.AsyncClient(base_url=controller.url, headers=headers,
                                 timeout=NET_TIMEOUT_S) as client:
        async def refused() -> bool:
            return (await client.get("/api/v1/nodes")).status_code == 401
        await eventually(refused, timeout_s=5, what="the token to expire")
        err = assert_error(await client.get("/api/v1/nodes"), 401, "unauthorized")
        assert "expired" in err["message"]


async def test_the_token_list_never_shows_a_secret_nor_its_hash(
        api: httpx.AsyncClient, controller: ControllerProc) -> None:
    made = await new_token(api, "viewer", name="ci")
    text = (await api.get("/api/v1/tokens")).text
    for secret in (made["token"], controller.token):
        assert secret not in text
        assert hashlib.sha256(secret.encode()).hexdigest() not in text
    items = json.loads(text)["items"]
    mine = next(t for t in items if t["token_id"] == made["token_id"])
    assert mine["name"] == "ci" and mine["role"] == "viewer" and mine["state"] == "active"
    assert any(t["role"] == "admin" and t["name"] == "admin" for t in items)  # the start one


@pytest.mark.parametrize("body", [
    {"role": "root"}, {"role": "ADMIN"}, {"role": None}, {"role": ["admin"]}, {},
    {"role": "viewer", "name": "x" * 65}, {"role": "viewer", "name": ""},
    {"role": "viewer", "name": "a\nb"}, {"role": "viewer", "name": 7},
    {"role": "viewer", "ttl_s": -5}, {"role": "viewer", "ttl_s": 0},
    {"role": "viewer", "ttl_s": "60"}, {"role": "viewer", "ttl_s": True},
    {"role": "viewer", "ttl_s": 1e300}, {"role": "viewer", "admin": True},
    [{"role": "viewer"}], "viewer",
])
async def test_a_hostile_token_body_is_refused_with_400(api: httpx.AsyncClient,
                                                        body: Any) -> None:
    assert_error(await api.post("/api/v1/tokens", json=body), 400, "invalid_request")


async def test_a_huge_or_broken_token_body_is_refused_without_a_500(
        api: httpx.AsyncClient) -> None:
    resp = await api.post("/api/v1/tokens", content=b'{"role": "viewer", "name": "'
                          + b"x" * (2 << 20) + b'"}')
    assert resp.status_code in (400, 413), resp.text
    resp = await api.post("/api/v1/tokens", content=b'{"role": ',
                          headers={"content-type": "application/json"})
    assert_error(resp, 400)


async def test_missing_and_unknown_tokens_get_401_on_the_new_routes(
        anon: httpx.AsyncClient) -> None:
    for method, path in [("GET", "/api/v1/tokens"), ("POST", "/api/v1/tokens"),
                         ("DELETE", "/api/v1/tokens/tk_x"), ("GET", "/api/v1/audit"),
                         ("GET", "/api/v1/join-tokens"), ("DELETE", "/api/v1/nodes/n-1"),
                         ("DELETE", "/api/v1/join-tokens/jt_x")]:
        assert_error(await anon.request(method, path), 401, "unauthorized")
        assert_error(await anon.request(method, path, headers={
            "Authorization": "Bearer tok_forged"}), 401, "unauthorized")


# -- audit ---------------------------------------------------------------------------------------

async def test_every_mutating_request_is_audited_with_its_token_role_and_status(
        api: httpx.AsyncClient, enroll: Enroll,
        as_role: Callable[[str], Awaitable[httpx.AsyncClient]]) -> None:
    admin, viewer = await as_role("admin"), await as_role("viewer")
    ids = await targets(api, enroll)
    me = (await api.get("/api/v1/tokens")).json()["items"]
    admin_ids = {t["token_id"] for t in me if t["name"] == "test admin"}
    viewer_ids = {t["token_id"] for t in me if t["name"] == "test viewer"}
    for method, path, body, _ in MUTATING:
        assert (await viewer.request(method, path.format(**ids), json=body)
                ).status_code == 403
        assert permitted(await admin.request(method, path.format(**ids), json=body))
    items = (await api.get("/api/v1/audit", params={"limit": 1000})).json()["items"]
    requests = [a for a in items if a["status"] is not None]
    for method, path, _, _ in MUTATING:
        action = f"{method} {route_of(path)}"
        done = [a for a in requests if a["action"] == action and a["token_id"] in admin_ids]
        refused = [a for a in requests
                   if a["action"] == action and a["token_id"] in viewer_ids]
        assert done and done[0]["status"] not in (401, 403), action
        assert done[0]["role"] == "admin", done[0]
        assert done[0]["actor"].startswith("test admin (tk_"), done[0]
        assert refused and refused[0]["status"] == 403 and refused[0]["role"] == "viewer"
    assert all(a["at"] for a in items)


async def test_the_audit_log_pages_newest_first(
        api: httpx.AsyncClient) -> None:
    for _ in range(5):
        await new_token(api, "viewer")
    first = (await api.get("/api/v1/audit", params={"limit": 3})).json()
    assert len(first["items"]) == 3 and first["next_before"] == first["items"][-1]["id"]
    second = (await api.get("/api/v1/audit", params={
        "limit": 3, "before": first["next_before"]})).json()
    ids = [a["id"] for a in first["items"] + second["items"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids)
    for bad in ("0", "-1", "x", "1e3"):
        assert_error(await api.get("/api/v1/audit", params={"before": bad}), 400)
    assert_error(await api.get("/api/v1/audit", params={"limit": "5000"}), 400)


# -- join tokens --------------------------------------------------------------------------------

async def test_join_tokens_are_listed_without_secrets_and_a_revoked_one_enrolls_nothing(
        api: httpx.AsyncClient, anon: httpx.AsyncClient) -> None:
    made = (await api.post("/api/v1/join-tokens", json={"uses": 3,
                                                        "labels": {"site": "a"}})).json()
    listing = await api.get("/api/v1/join-tokens")
    assert made["token"] not in listing.text
    mine = next(t for t in listing.json()["items"] if t["token_id"] == made["token_id"])
    assert mine["uses_left"] == 3 and mine["labels"] == {"site": "a"}
    assert (await api.delete(f"/api/v1/join-tokens/{made['token_id']}")).status_code == 200
    assert all(t["token_id"] != made["token_id"]
               for t in (await api.get("/api/v1/join-tokens")).json()["items"])
    ident = Identity("n-revoked", generate_private_key())
    resp = await anon.post("/v1/edge/enroll", json={
        "join_token": made["token"], "node_id": ident.node_id,
        "public_key": ident.public_b64})
    assert_error(resp, 401)
    assert_error(await api.delete(f"/api/v1/join-tokens/{made['token_id']}"), 404)


# -- node removal --------------------------------------------------------------------------------

async def test_deleting_a_node_closes_its_session_and_the_id_enrolls_again(
        api: httpx.AsyncClient, edge: Edge, enroll: Enroll) -> None:
    ident = await enroll("n-gone")
    client = await edge.session(ident)
    resp = await api.delete("/api/v1/nodes/n-gone")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"node_id": "n-gone", "deleted": True, "session_closed": True}
    assert (await client.expect_close()).code == 4403
    assert_error(await api.get("/api/v1/nodes/n-gone"), 404, "not_found")
    assert_error(await api.delete("/api/v1/nodes/n-gone"), 404, "not_found")
    assert (await api.get("/api/v1/commands", params={"node_id": "n-gone"})
            ).json()["items"] == []
    # the old key is gone: its hello is refused; a new key enrolls the same id
    refused = await edge.open()
    await refused.send(refused.hello(ident))
    assert (await refused.expect_close()).code in (4401, 4403, 4404)
    again = await enroll("n-gone")
    assert again.key is not ident.key
    fresh = await edge.session(again)
    assert fresh.welcome is not None
    node = (await api.get("/api/v1/nodes/n-gone")).json()
    assert node["node_id"] == "n-gone"
    sessions = (await api.get("/api/v1/nodes/n-gone/sessions")).json()["items"]
    assert len(sessions) == 1  # the deleted node's history went with it


# -- /ws -----------------------------------------------------------------------------------------

async def test_a_viewer_subscribes_on_ws_and_a_revoked_token_cannot_say_hello(
        api: httpx.AsyncClient, ws_url: str) -> None:
    made = await new_token(api, "viewer")
    ws = await browser_connect(ws_url)
    await ws.send(json.dumps({"t": "hello", "id": "h", "b": {"token": made["token"]}}))
    assert (await json_recv(ws))["b"]["role"] == "viewer"
    await ws.send(json.dumps({"t": "subscribe", "id": "s", "b": {"topics": ["nodes"]}}))
    assert (await json_recv(ws))["t"] == "snapshot"
    await ws.close()
    await api.delete(f"/api/v1/tokens/{made['token_id']}")
    ws = await browser_connect(ws_url)
    await ws.send(json.dumps({"t": "hello", "id": "h", "b": {"token": made["token"]}}))
    assert await json_expect_close(ws) == 4401


async def test_on_ws_a_viewer_may_only_subscribe_and_ping(
        api: httpx.AsyncClient, ws_url: str) -> None:
    """Any other frame changes something: ``forbidden`` for a viewer, whatever its type
    (one added later included); an operator gets past the role check."""
    for role, code in (("viewer", "forbidden"), ("operator", "unknown_type")):
        made = await new_token(api, role)
        ws = await browser_connect(ws_url)
        await ws.send(json.dumps({"t": "hello", "id": "h", "b": {"token": made["token"]}}))
        assert (await json_recv(ws))["t"] == "welcome"
        await ws.send(json.dumps({"t": "shell.open", "id": "x", "b": {"node_id": "n-1"}}))
        error = await json_recv(ws)
        assert (error["t"], error["re"], error["b"]["code"]) == ("error", "x", code)
        await ws.send(json.dumps({"t": "ping", "id": "p"}))
        assert (await json_recv(ws))["t"] == "pong"
        await ws.close()


@pytest.mark.parametrize("origin", ["http://evil.example", "null",
                                    "http://127.0.0.1.evil.example"])
async def test_a_hostile_origin_is_refused_with_4403_even_with_a_valid_token(
        ws_url: str, controller: ControllerProc, origin: str) -> None:
    ws = await browser_connect(ws_url, origin=origin)
    with contextlib.suppress(ConnectionClosed):  # refused before any hello: may be closed
        await ws.send(json.dumps({"t": "hello", "id": "h", "b": {
            "token": controller.token}}))
    assert await json_expect_close(ws) == 4403


async def test_an_allowed_origin_is_accepted_and_every_other_site_refused(
        tmp_path: Path) -> None:
    ctl = ControllerProc(tmp_path / "ctl", extra=[*FAST, "--allowed-origin",
                                                  "https://dash.example"])
    ctl.start()
    try:
        url = ctl.url.replace("http", "ws", 1) + "/ws"
        ws = await browser_connect(url, origin="https://dash.example")
        await ws.send(json.dumps({"t": "hello", "id": "h", "b": {"token": ctl.token}}))
        assert (await json_recv(ws))["t"] == "welcome"
        await ws.close()
        for origin in ("https://dash.example.evil", "http://dash.example"):
            ws = await browser_connect(url, origin=origin)
            assert await json_expect_close(ws) == 4403, origin
    finally:
        ctl.terminate()
