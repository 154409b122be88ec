"""After a controller restart, 20 simulated nodes (the sidecar's real ControllerLink, in this
process) reconnect with full-jitter backoff: their reconnect times are spread out, not a
thundering herd. The assertion is on the spread, never on one number."""

from __future__ import annotations

import asyncio
import base64
import statistics
import time

import httpx

from tether.protocol.frames import Frame, Heartbeat, Welcome
from tether.protocol.signing import generate_private_key, public_key_raw
from tether.sidecar.transport import ControllerLink, HelloState

from ..helpers import ControllerProc

NODES = 20


class SimNode:
    """The smallest LinkHandler: records when each welcome arrived."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.session_id: str | None = None
        self.welcomes: list[float] = []
        self.welcomed = asyncio.Event()

    async def hello_state(self) -> HelloState:
        return HelloState(epoch=1000 + self.index, cmd_applied=0, session_id=self.session_id,
                          runtime={"state": "attached", "version": "sim"})

    def heartbeat_body(self) -> Heartbeat:
        return Heartbeat(uptime_s=0.0)

    async def on_welcome(self, welcome: Welcome) -> None:
        self.session_id = welcome.session_id
        self.welcomes.append(time.monotonic())
        self.welcomed.set()

    async def on_frame(self, frame: Frame) -> None:
        return None

    async def on_disconnected(self) -> None:
        self.welcomed.clear()


def enroll_many(controller: ControllerProc, count: int) -> list[tuple[str, object]]:
    api = controller.api()
    token = api.post("/api/v1/join-tokens", json={"uses": count}).json()["token"]
    out = []
    for i in range(count):
        key = generate_private_key()
        node_id = f"sim-{i}"
        resp = httpx.post(controller.url + "/v1/edge/enroll", timeout=10, json={
            "join_token": token, "node_id": node_id,
            "public_key": base64.urlsafe_b64encode(public_key_raw(key)).rstrip(b"=").decode()})
        assert resp.status_code == 201, resp.text
        out.append((node_id, key))
    return out


async def test_twenty_nodes_reconnect_after_a_controller_restart_spread_by_jitter(
        controller: ControllerProc) -> None:
    identities = enroll_many(controller, NODES)
    sims = [SimNode(i) for i in range(NODES)]
    links = [ControllerLink(controller_url=controller.url, node_id=node_id,
                            key=key, handler=sim)  # type: ignore[arg-type]
             for (node_id, key), sim in zip(identities, sims, strict=True)]
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(link.run()) for link in links]
        try:
            async with asyncio.timeout(30):
                await asyncio.gather(*(s.welcomed.wait() for s in sims))
            await asyncio.to_thread(controller.terminate)
            async with asyncio.timeout(30):
                while any(s.welcomed.is_set() for s in sims):
                    await asyncio.sleep(0.01)
            await asyncio.to_thread(controller.start)  # same port and data dir
            back_at = time.monotonic()
            async with asyncio.timeout(60):
                await asyncio.gather(*(s.welcomed.wait() for s in sims))
            api = controller.api()
            views = await asyncio.to_thread(lambda: [api.node(f"sim-{i}")
                                                     for i in range(NODES)])
            assert all(v["session"]["resumed"] for v in views)
            assert all(v["liveness"] == "online" for v in views)
        finally:
            for link in links:
                link.stop()
            for task in tasks:
                task.cancel()
    delays = [s.welcomes[-1] - back_at for s in sims]
    assert all(len(s.welcomes) == 2 for s in sims)
    assert all(link.status.reconnects >= 1 for link in links)
    # Full jitter spreads the herd: many distinct 100 ms slots and a real deviation.
    slots = {int(max(d, 0) * 10) for d in delays}
    assert len(slots) >= 5, sorted(round(d, 3) for d in delays)
    assert statistics.pstdev(delays) > 0.1, sorted(round(d, 3) for d in delays)
