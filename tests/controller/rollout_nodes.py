"""Raw edge clients playing nodes for the rollout tests: each connects with its own key,
takes ``update.now`` offers from ``cmd.deliver`` (acking them as a node does) and answers
``bundle.status`` frames as the test tells it to. Nothing of the real node is used, so the
controller's engine is tested alone (the real node's end-to-end comes with it)."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import httpx

from tether.common.tasks import cancel_and_wait
from tether.protocol.frames import Ack, CmdStatus, Frame
from tether.protocol.signing import generate_private_key, public_key_raw
from tether.protocol.update import UPDATE_KIND, BundleStatus, parse_bundle_status

from .bundlefiles import make_bundle
from .conftest import Edge, EdgeClient, Identity, b64url, eventually

OCTETS = {"Content-Type": "application/octet-stream"}
_ids = itertools.count(1)


class PlayedNode:
    """One node: its identity, and its session while connected (``client``), which a
    heartbeat task it owns keeps alive (the test controller closes a session that sends
    nothing for a few seconds); :meth:`disconnect` and :meth:`aclose` end it."""

    HEARTBEAT_S = 0.5

    def __init__(self, ident: Identity) -> None:
        self.ident = ident
        self.client: EdgeClient | None = None
        self._beat: asyncio.Task[None] | None = None
        self.q = 0  # the evt stream's last sequence number sent
        self.cmd = 0  # the highest cmd sequence number acked

    @property
    def node_id(self) -> str:
        return self.ident.node_id

    async def connect(self, edge: Edge) -> None:
        self.client = await edge.session(self.ident, epoch=7, acks={"cmd": self.cmd})
        self._beat = asyncio.create_task(self._heartbeats(self.client))

    async def _heartbeats(self, client: EdgeClient) -> None:
        while True:  # acks come back among the other frames: recv_type skips them
            await client.send(Frame(t="edge.heartbeat", id=f"hb-{next(_ids)}", b={
                "uptime_s": 1.0, "runtime": {"state": "attached"},
                "outbox": {"depth": 0, "oldest_age_s": 0}, "acks": {}}))
            await asyncio.sleep(self.HEARTBEAT_S)

    async def disconnect(self) -> None:
        assert self.client is not None
        await self.aclose()
        await self.client.close()
        self.client = None

    async def aclose(self) -> None:
        """Stop the heartbeats (the connection is the Edge factory's to close)."""
        task, self._beat = self._beat, None
        if task is not None:
            await cancel_and_wait(task)

    async def offer(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """The next ``update.now`` this node receives (acked), as its body."""
        assert self.client is not None
        frame = await self.client.recv_type("cmd.deliver", timeout_s=timeout_s)
        assert frame.b["kind"] == UPDATE_KIND, frame
        self.cmd = max(self.cmd, frame.q or 0)
        await self.client.send(Ack(acks={"cmd": self.cmd}).frame())
        return dict(frame.b)

    async def report(self, offer: dict[str, Any], state: str, *, active: int | None,
                     lkg: int | None, code: str | None = None, reason: str = "") -> None:
        """One ``bundle.status`` about the offered version (class A on evt)."""
        args = offer["args"]
        st = BundleStatus(name=args["name"], version=args["version"], state=state,
                          at_ms=1_700_000_000_000, code=code, reason=reason,
                          rollout_id=args["rollout_id"], active=active,
                          last_known_good=lkg)
        parse_bundle_status(st.body())  # a test's own mistake fails here, not as poison
        await self._send_evt("bundle.status", st.body())

    async def end(self, offer: dict[str, Any], state: str, error: str | None = None) -> None:
        """The offer's command ends (``cmd.status``), as protocol/update.py says it does."""
        body = CmdStatus(command_id=offer["command_id"], state=state, error=error).to_body()
        await self._send_evt("cmd.status", body)

    async def update(self, offer: dict[str, Any], *, previous: int | None) -> None:
        """The happy steps of one offer: downloading, verified, activated, healthy."""
        version = offer["args"]["version"]
        await self.report(offer, "downloading", active=previous, lkg=None)
        await self.report(offer, "verified", active=previous, lkg=None)
        await self.report(offer, "activated", active=version, lkg=previous)
        await self.report(offer, "healthy", active=version, lkg=previous)
        await self.end(offer, "succeeded")

    async def _send_evt(self, t: str, body: dict[str, Any]) -> None:
        assert self.client is not None
        self.q += 1
        await self.client.send(Frame(t=t, s="evt", q=self.q, id=f"e{self.q}", b=body))


async def enroll_labelled(api: httpx.AsyncClient, node_id: str,
                          labels: dict[str, str]) -> PlayedNode:
    resp = await api.post("/api/v1/join-tokens", json={"uses": 1, "labels": labels})
    assert resp.status_code == 201, resp.text
    key = generate_private_key()
    resp = await api.post("/v1/edge/enroll", json={
        "join_token": resp.json()["token"], "node_id": node_id,
        "public_key": b64url(public_key_raw(key))})
    assert resp.status_code == 201, resp.text
    return PlayedNode(Identity(node_id, key))


async def publish(api: httpx.AsyncClient, name: str, version: int) -> dict[str, Any]:
    resp = await api.post("/api/v1/bundles", content=make_bundle(name, version),
                          headers=OCTETS)
    assert resp.status_code == 201, resp.text
    return resp.json()  # type: ignore[no-any-return]


async def rollout_when(api: httpx.AsyncClient, rollout_id: str, what: str,
                       check: Any) -> dict[str, Any]:
    """The rollout once ``check(view)`` holds (polled, with a deadline)."""
    async def get() -> dict[str, Any] | None:
        view = (await api.get(f"/api/v1/rollouts/{rollout_id}")).json()
        return view if check(view) else None
    return await eventually(get, timeout_s=15, what=what)  # type: ignore[no-any-return]


async def commands_of(api: httpx.AsyncClient, node_id: str) -> list[dict[str, Any]]:
    resp = await api.get("/api/v1/commands", params={"node_id": node_id})
    assert resp.status_code == 200, resp.text
    return resp.json()["items"]  # type: ignore[no-any-return]
