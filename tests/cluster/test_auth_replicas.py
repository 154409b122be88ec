"""Roles and node removal across two replicas (one PostgreSQL, one nats-server): a token
made through one replica works, and is revoked, on the other; a node held by replica A is
deleted through replica B, which closes its session on A with 4403 over NATS."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from ..controller.conftest import NET_TIMEOUT_S, Edge, assert_error
from ..helpers import ControllerProc
from .conftest import enrolled


def client(ctl: ControllerProc, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=ctl.url, timeout=NET_TIMEOUT_S,
                             headers={"Authorization": f"Bearer {token}"})


async def test_a_token_made_on_one_replica_is_revoked_on_every_replica(
        make_replica: Callable[..., ControllerProc]) -> None:
    a, b = make_replica("r-a"), make_replica("r-b")
    async with client(a, a.token) as admin_a:
        made = (await admin_a.post("/api/v1/tokens", json={"role": "viewer"})).json()
        async with client(b, made["token"]) as viewer_b:
            assert (await viewer_b.get("/api/v1/nodes")).status_code == 200
            assert_error(await viewer_b.post("/api/v1/join-tokens", json={}), 403,
                         "forbidden")
            assert (await admin_a.delete(f"/api/v1/tokens/{made['token_id']}")
                    ).status_code == 200
            assert_error(await viewer_b.get("/api/v1/nodes"), 401, "unauthorized")


async def test_deleting_through_replica_b_closes_the_session_held_by_replica_a(
        make_replica: Callable[..., ControllerProc],
        edges: Callable[[ControllerProc], Edge]) -> None:
    a, b = make_replica("r-a"), make_replica("r-b")
    async with client(a, a.token) as api_a, client(b, b.token) as api_b:
        ident = await enrolled(api_a, "n-far")
        session = await edges(a).session(ident)
        resp = await api_b.delete("/api/v1/nodes/n-far")
        assert resp.status_code == 200, resp.text
        assert resp.json()["session_closed"] is True
        assert (await session.expect_close()).code == 4403
        assert_error(await api_a.get("/api/v1/nodes/n-far"), 404, "not_found")
        again = await enrolled(api_b, "n-far")
        assert (await edges(a).session(again)).welcome is not None
