"""Overload: past the handshake limit the controller answers 4429 with a retry_after, and a
node waits at least that long before dialling again."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
import websockets
from websockets.asyncio.client import connect

from ..helpers import FAST, ControllerProc, NodeProc, wait_until


@pytest.fixture
def overloaded(tmp_path: Path):  # type: ignore[no-untyped-def]
    ctl = ControllerProc(tmp_path / "ctl", extra=[*FAST, "--max-concurrent-handshakes", "0"])
    ctl.start()
    yield ctl
    ctl.terminate()


async def test_an_overloaded_controller_closes_new_edge_connections_with_4429(
        overloaded: ControllerProc) -> None:
    url = overloaded.url.replace("http", "ws", 1) + "/v1/edge/connect"
    async with asyncio.timeout(10):
        async with connect(url, subprotocols=["tether.v1.msgpack"]) as ws:  # type: ignore[list-item]
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
    assert ws.close_code == 4429
    assert re.search(r"retry_after=\d+(\.\d+)?", ws.close_reason or "")


def test_a_node_told_4429_waits_at_least_retry_after_before_dialling_again(
        overloaded: ControllerProc, tmp_path: Path) -> None:
    node = NodeProc(tmp_path / "n-busy", "n-busy")
    node.enroll(overloaded)
    node.start()
    try:
        sidecar_log = node.state_dir / "sidecar.log"
        lines = wait_until(lambda: [ln for ln in sidecar_log.read_text().splitlines()
                                    if "code=4429" in ln] or None, what="a 4429 reconnect")
        delay = float(re.search(r"delay_s=([\d.]+)", lines[0]).group(1))  # type: ignore[union-attr]
        assert delay >= 1.0  # the controller's retry_after is 1..5 s
        assert node.alive() and node.sidecar_pid() is not None
    finally:
        node.cleanup()
