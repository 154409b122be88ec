"""Simulated nodes with labels for the job tests (tools/fleet.py's SimNode: real keys, a
real ControllerLink, every command answered ``succeeded``), that can be stopped (goodbye:
offline at once) and started again with the same key."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx

from tether.protocol.signing import generate_private_key, public_key_raw
from tether.sidecar.transport import ControllerLink
from tether.tools.fleet import SimNode

NET_TIMEOUT_S = 10.0


async def eventually(check: Callable[[], Awaitable[Any]], *, timeout_s: float = 15.0) -> Any:
    """Poll ``check`` until it returns something truthy (a condition with a deadline)."""
    async with asyncio.timeout(timeout_s):
        while True:
            value = await check()
            if value:
                return value
            await asyncio.sleep(0.05)


class LabelledFleet:
    """Nodes enrolled with labels; ``start``/``stop`` each by id. Every link task belongs
    to this fleet's TaskGroup and is cancelled and awaited on exit."""

    def __init__(self, url: str, token: str, tg: asyncio.TaskGroup) -> None:
        self.url = url
        self.http = httpx.AsyncClient(base_url=url, timeout=NET_TIMEOUT_S,
                                      headers={"Authorization": f"Bearer {token}"})
        self._tg = tg
        self.keys: dict[str, Any] = {}
        self.sims: dict[str, SimNode] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def enroll(self, node_id: str, labels: dict[str, str]) -> None:
        resp = await self.http.post("/api/v1/join-tokens", json={"uses": 1, "labels": labels})
        resp.raise_for_status()
        key = generate_private_key()
        resp = await self.http.post("/v1/edge/enroll", json={
            "join_token": resp.json()["token"], "node_id": node_id, "public_key":
            base64.urlsafe_b64encode(public_key_raw(key)).rstrip(b"=").decode()})
        resp.raise_for_status()
        self.keys[node_id] = key

    async def start(self, node_id: str, url: str | None = None) -> SimNode:
        sim = SimNode(node_id=node_id, epoch=random.randrange(1, 1 << 62))
        sim.link = ControllerLink(controller_url=url or self.url, node_id=node_id,
                                  key=self.keys[node_id], handler=sim,
                                  rng=random.Random(), connect_timeout_s=NET_TIMEOUT_S)
        self.sims[node_id] = sim
        self._tasks[node_id] = self._tg.create_task(sim.link.run(), name=f"sim-{node_id}")
        async with asyncio.timeout(NET_TIMEOUT_S * 2):
            await sim.welcomed.wait()
        await eventually(lambda: self._liveness_is(node_id, "online"))
        return sim

    async def stop(self, node_id: str) -> None:
        sim, task = self.sims.pop(node_id), self._tasks.pop(node_id)
        if sim.link is not None:
            with contextlib.suppress(Exception):
                await sim.link.goodbye("test stops it")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await eventually(lambda: self._liveness_is(node_id, "offline"))

    async def _liveness_is(self, node_id: str, state: str) -> bool:
        resp = await self.http.get(f"/api/v1/nodes/{node_id}")
        return bool(resp.status_code == 200 and resp.json()["liveness"] == state)

    async def aclose(self) -> None:
        for node_id in list(self.sims):
            await self.stop(node_id)
        await self.http.aclose()


@contextlib.asynccontextmanager
async def labelled_fleet(url: str, token: str) -> AsyncIterator[LabelledFleet]:
    async with asyncio.TaskGroup() as tg:
        fleet = LabelledFleet(url, token, tg)
        try:
            yield fleet
        finally:
            await fleet.aclose()
