"""Overload: past the handshake limit the controller answers 4429 with a retry_after, and a
node waits at least that long before dialling again."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path

import msgpack
import pytest
import websockets
from websockets.asyncio.client import connect

from ..helpers import FAST, ControllerProc, NodeProc, tether_cmd, wait_until


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
            challenge = msgpack.unpackb(await ws.recv())  # always within 1 s of accept
            assert challenge["t"] == "edge.challenge"
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


def test_past_the_handshake_slots_connections_wait_for_a_slot_instead_of_being_refused(
        tmp_path: Path) -> None:
    ctl = ControllerProc(tmp_path / "ctl1", extra=[*FAST, "--max-concurrent-handshakes", "1"])
    ctl.start()
    try:
        out = subprocess.run(tether_cmd("sim", "--url", ctl.url, "--token", ctl.token,
                                        "--nodes", "40", "--events", "1", "--duration", "0",
                                        "--storm", "--json"),
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        report = json.loads(out.stdout)
        assert report["sessions_held"] == 40 and report["zero_loss"]["ok"]
        sessions = ctl.api().get("/api/v1/diag").json()["sessions"]
        assert sessions["refused_total"] == 0  # 40 at once through one slot, none told 4429
        assert sessions["waiting"] == 0 and sessions["handshaking"] == 0
    finally:
        ctl.terminate()
