"""The runtime's uplink pass (node/runtime.py ``_uplink_loop``): a command's status never
overtakes its output, even when the output grows while earlier chunks are being sent."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tether.node.config import NodeConfig
from tether.node.runtime import NodeRuntime
from tether.protocol.frames import Frame
from tether.protocol.local import LocalDecoder


class HoldingLink:
    """Stands in for the sidecar link: records what is sent; while the first batch of log
    chunks is "on the wire", runs ``during_first_send`` (more output, then a status)."""

    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.connected.set()
        self.sent: list[Frame] = []
        self.during_first_send: Any = None

    async def send_many(self, frames: Sequence[Frame]) -> bool:
        if self.during_first_send is not None:
            hook, self.during_first_send = self.during_first_send, None
            await hook()
        self.sent.extend(frames)
        return True

    async def send_encoded(self, payloads: Iterable[bytes]) -> bool:
        return await self.send_many(LocalDecoder().feed(b"".join(payloads)))


async def test_a_status_queued_while_output_is_in_flight_goes_after_the_output_that_preceded_it(
        tmp_path: Path) -> None:
    runtime = NodeRuntime(NodeConfig(state_dir=tmp_path, durability="process"), identity=None)  # type: ignore[arg-type]
    await runtime.store.open()
    link = HoldingLink()
    runtime.link = link  # type: ignore[assignment]

    async def output_then_status() -> None:
        await runtime.logs.put("c1", "stdout", b"last line\n")  # before the status, always
        runtime._outbox_grew(await runtime.store.append_event(
            "node.event", {"kind": "done", "data": {}}))

    link.during_first_send = output_then_status
    await runtime.logs.put("c1", "stdout", b"first line\n")
    uplink = asyncio.create_task(runtime._uplink_loop())
    runtime._uplink_wake.set()
    try:
        async with asyncio.timeout(10):
            while not any(f.t == "node.event" for f in link.sent):
                await asyncio.sleep(0.01)
    finally:
        uplink.cancel()
        await asyncio.gather(uplink, return_exceptions=True)
        await runtime.store.close()
    order = [(f.t, f.b.get("data")) for f in link.sent if f.t in ("log.chunk", "node.event")]
    assert order[:3] == [("log.chunk", b"first line\n"), ("log.chunk", b"last line\n"),
                         ("node.event", {})]
