"""Session ownership across replicas (real processes on one PostgreSQL and one nats-server):
a node that says hello on replica B while replica A holds its session takes it over. A is
told over NATS and closes its session with 4409 at once (well before ``stale_after_s``,
even when the old connection is silent); the history never shows two open sessions for the
node; and nothing the old connection sends afterwards is applied (the store's fence)."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed

from ..controller.conftest import NET_TIMEOUT_S, Edge, EdgeClient, eventually
from ..helpers import ControllerProc
from .conftest import enrolled, event

PROMPTLY_S = 2.5  # under stale_after_s (3 s, FAST): a silent session would end 4408 then


async def history(api: httpx.AsyncClient, node_id: str) -> list[dict[str, Any]]:
    resp = await api.get(f"/api/v1/nodes/{node_id}/sessions")
    assert resp.status_code == 200, resp.text
    return resp.json()["items"]  # type: ignore[no-any-return]


async def test_a_hello_on_replica_b_ends_replica_a_s_session_with_4409_and_applies_nothing_after(
        make_replica: Callable[[str], ControllerProc],
        edges: Callable[[ControllerProc], Edge]) -> None:
    a, b = make_replica("r-a"), make_replica("r-b")
    async with httpx.AsyncClient(base_url=a.url, timeout=NET_TIMEOUT_S, headers={
            "Authorization": f"Bearer {a.token}"}) as api:
        ident = await enrolled(api, "n-own")
        old = await edges(a).session(ident)
        await old.send(event(1, "before.takeover"))
        assert (await old.recv_type("edge.ack")).b["acks"] == {"evt": 1}
        assert old.welcome is not None
        old_sid = old.welcome.b["session_id"]

        new = await edges(b).session(ident)
        assert new.welcome is not None
        new_sid = new.welcome.b["session_id"]
        assert new.welcome.b["acks"]["evt"] == 1
        # the old connection speaks on: whatever reaches A now is not applied
        with contextlib.suppress(ConnectionClosed):
            await old.send(event(2, "after.takeover"))
        # A closes with 4409 whichever comes first: B's word over NATS, or the store's
        # fence refusing that frame (a fenced write ends the session, it is no 1011)
        closed = await old.expect_close(timeout_s=PROMPTLY_S)
        assert closed.code == 4409, closed
        assert not [f for f in closed.frames if f.t == "edge.ack"
                    and f.b["acks"].get("evt", 0) >= 2], closed.frames

        rows = {s["session_id"]: s for s in await history(api, "n-own")}
        assert rows[old_sid]["replica_id"] == "r-a"
        assert rows[old_sid]["close_code"] == 4409
        assert rows[old_sid]["closed_at"] is not None
        assert rows[old_sid]["closed_at"] <= rows[new_sid]["opened_at"]
        assert rows[new_sid]["replica_id"] == "r-b" and rows[new_sid]["closed_at"] is None
        node = (await api.get(f"{b.url}/api/v1/nodes/n-own")).json()  # B's presence
        assert node["session"]["session_id"] == new_sid
        await new.heartbeat()  # B's session is untouched by A's close

        events = (await api.get("/api/v1/nodes/n-own/events")).json()["items"]
        kinds = [e["kind"] for e in events]
        assert "before.takeover" in kinds and "after.takeover" not in kinds, kinds
        # the evt cursor did not move: the next session is welcomed with what B had
        await new.close()
        again = await edges(b).session(ident)
        assert again.welcome is not None
        assert again.welcome.b["acks"]["evt"] == 1


async def test_a_silent_session_on_another_replica_is_closed_with_4409_when_its_node_moves(
        make_replica: Callable[[str], ControllerProc],
        edges: Callable[[ControllerProc], Edge]) -> None:
    a, b = make_replica("r-a"), make_replica("r-b")
    async with httpx.AsyncClient(base_url=a.url, timeout=NET_TIMEOUT_S, headers={
            "Authorization": f"Bearer {a.token}"}) as api:
        ident = await enrolled(api, "n-hop")
        clients: list[EdgeClient] = []
        for ctl in (a, b, a, b):
            clients.append(await edges(ctl).session(ident))
        for client in clients[:-1]:  # silent: only B's word over NATS can close them
            assert (await client.expect_close(timeout_s=PROMPTLY_S)).code == 4409
        await clients[-1].heartbeat()  # the newest session, on B, lives on

        async def all_closed_but_the_newest() -> list[dict[str, Any]] | None:
            rows = await history(api, "n-hop")
            return rows if sum(r["closed_at"] is None for r in rows) == 1 else None
        rows = await eventually(all_closed_but_the_newest, timeout_s=NET_TIMEOUT_S,
                                what="one open session")
        assert [r["replica_id"] for r in rows] == ["r-b", "r-a", "r-b", "r-a"]
        assert [r["close_code"] for r in rows] == [None, 4409, 4409, 4409]
        # never two open at once: each closed no later than the next one opened
        by_open = sorted(rows, key=lambda r: r["opened_at"])
        for older, newer in itertools.pairwise(by_open):
            assert older["closed_at"] <= newer["opened_at"], (older, newer)

