"""A /ws client that never reads is cut off with a clear reason while another keeps
receiving, and the controller's memory stays bounded."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

from ..helpers import FAST, ControllerProc, NodeProc, wait_until

pytestmark = pytest.mark.both_backends  # tests/e2e/conftest.py: SQLite, PostgreSQL + NATS

LINES = 400  # ~8 MB in ~20 KB lines at a pace a reading client follows easily


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
def ctl(make_controller: Callable[..., ControllerProc]) -> ControllerProc:
    return make_controller("ctl", extra=[
        *FAST, "--ws-max-queue", "128", "--ws-max-queue-bytes", str(4 << 20),
        "--max-log-bytes-per-command", str(64 << 20)])


async def subscribed(url: str, token: str, topics: list[str],
                     **kw: object) -> tuple[ClientConnection, int]:
    """A logged-in, subscribed client, and the log bytes its snapshots already held."""
    ws = await connect(url, subprotocols=["tether.v1.json"], **kw)  # type: ignore[arg-type,list-item]
    await ws.send(json.dumps({"t": "hello", "b": {"token": token}}))
    assert json.loads(await ws.recv())["t"] == "welcome"
    await ws.send(json.dumps({"t": "subscribe", "b": {"topics": topics}}))
    seen = 0
    while (frame := json.loads(await ws.recv()))["t"] != "subscribed":
        if frame["t"] == "snapshot" and frame["b"]["topic"].startswith("logs:"):
            seen += sum(len(i["data"]) for i in frame["b"]["data"]["items"])
    return ws, seen


async def test_a_client_that_never_reads_is_cut_off_while_another_keeps_receiving(
        ctl: ControllerProc, tmp_path: Path) -> None:
    node = NodeProc(tmp_path / "n-fan", "n-fan")
    node.enroll(ctl)
    node.start()
    try:
        api = ctl.api()
        await asyncio.to_thread(wait_until, lambda: api.liveness("n-fan") == "online")
        assert ctl.proc is not None
        before = rss_kib(ctl.proc.pid)
        url = ctl.url.replace("http", "ws", 1) + "/ws"
        cmd = api.submit("n-fan", "exec", {"argv": [
            "sh", "-c", f"sleep 0.5; for i in $(seq 1 {LINES}); do "
                        "head -c 20000 /dev/zero | tr '\\0' x; echo; sleep 0.005; done"]})
        cid = cmd["command_id"]
        topics = [f"logs:{cid}", f"command:{cid}"]
        # max_queue=1: the client library stops reading the socket after one message.
        stalled, _ = await subscribed(url, ctl.token, topics, max_queue=1)
        reader, received = await subscribed(url, ctl.token, topics)
        async with asyncio.timeout(120):
            while True:
                frame = json.loads(await reader.recv())
                data = frame["b"].get("data") or {}
                if frame["b"].get("kind") == "log.chunk":
                    received += len(data["data"])
                elif data.get("state") == "succeeded":
                    break
        with pytest.raises(websockets.ConnectionClosed):
            async with asyncio.timeout(30):
                while True:
                    await stalled.recv()
        assert stalled.close_code == 4429, stalled.close_code  # docs/protocol.md §9
        assert "too slow" in (stalled.close_reason or "")
        stored = api.command(cid)["log_bytes"]
        assert stored == LINES * 20001
        assert received == stored  # the reading client saw every byte, live
        await reader.close()
        grown_mib = (rss_kib(ctl.proc.pid) - before) / 1024
        assert grown_mib < 64, f"controller RSS grew by {grown_mib:.0f} MiB"
    finally:
        node.cleanup()
