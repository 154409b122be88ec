"""Two replicas, one PostgreSQL database and one nats-server (real processes): a node held by
replica A runs a command submitted through replica B's REST API (B writes it, nudges A over
NATS, A delivers), and B's /ws clients see its ``command.updated`` events (fanned out over
NATS). Operator tokens and join tokens work on both replicas: they live in the shared store."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from tether.protocol.frames import TERMINAL_STATES

from ..helpers import Api, ControllerProc, NodeProc, tether_cmd, wait_until


async def ws_subscribed(ctl: ControllerProc, token: str, topics: list[str]
                        ) -> ClientConnection:
    url = ctl.url.replace("http", "ws", 1) + "/ws"
    ws = await connect(url, subprotocols=["tether.v1.json"])  # type: ignore[list-item]
    await ws.send(json.dumps({"t": "hello", "b": {"token": token}}))
    assert json.loads(await ws.recv())["t"] == "welcome"
    await ws.send(json.dumps({"t": "subscribe", "b": {"topics": topics}}))
    while (frame := json.loads(await ws.recv()))["t"] != "subscribed":
        assert frame["t"] == "snapshot", frame
    return ws


async def updates_until_terminal(ws: ClientConnection, command_id: str) -> list[str]:
    """The states of ``command_id``'s ``command.updated`` events, up to a terminal one."""
    states: list[str] = []
    while not states or states[-1] not in TERMINAL_STATES:
        frame = json.loads(await ws.recv())
        body = frame["b"]
        if (frame["t"] == "event" and body["kind"] == "command.updated"
                and body["data"]["command_id"] == command_id):
            states.append(body["data"]["state"])
    return states


async def test_a_command_submitted_on_replica_b_runs_on_the_node_replica_a_holds(
        make_replica: Callable[[str], ControllerProc], tmp_path: Path) -> None:
    a, b = make_replica("r-a"), make_replica("r-b")
    # one fleet: A's operator token works on B, and B's join token enrolls through A
    on_b_as_a = Api(b.url, a.token)
    join = on_b_as_a.post("/api/v1/join-tokens", json={"uses": 1})
    assert join.status_code == 201, join.text
    node = NodeProc(tmp_path / "n-x", "n-x")
    await asyncio.to_thread(subprocess.run, tether_cmd(
        "node", "enroll", "--controller", a.url, "--token", join.json()["token"],
        "--node-id", "n-x", "--state-dir", str(node.state_dir)),
        check=True, capture_output=True, timeout=30)
    node.start()
    try:
        api_a = a.api()
        await asyncio.to_thread(wait_until, lambda: api_a.liveness("n-x") == "online",
                                what="n-x online on replica A")
        marker = tmp_path / "marker"
        async with asyncio.timeout(60):
            ws = await ws_subscribed(b, b.token, ["commands:n-x"])
            try:
                cmd = await asyncio.to_thread(
                    on_b_as_a.submit, "n-x", "exec",
                    {"argv": ["sh", "-c", f"echo ran >> {marker}"]})
                states = await updates_until_terminal(ws, cmd["command_id"])
            finally:
                await ws.close()
        assert states[-1] == "succeeded", states
        assert "running" in states  # applied on A, seen on B: fanned out over NATS
        done: dict[str, Any] = on_b_as_a.command(cmd["command_id"])
        assert done["state"] == "succeeded"
        assert marker.read_text().split() == ["ran"]  # delivered once, by A
        sessions = on_b_as_a.get("/api/v1/nodes/n-x/sessions").json()["items"]
        assert [s["replica_id"] for s in sessions] == ["r-a"]
        # offline="fail" judges a node held by another replica from the store, not only
        # from this replica's sessions: B accepts it (it refused it as offline)
        ping = on_b_as_a.submit("n-x", "diag.ping", offline="fail")
        await asyncio.to_thread(wait_until, lambda: on_b_as_a.command(
            ping["command_id"])["state"] == "succeeded", what="the ping through B")
        seen_from_b = on_b_as_a.get("/api/v1/nodes/n-x").json()
        assert seen_from_b["liveness"] == "online"  # held by A, judged from A's touches
        assert seen_from_b["session"]["replica"] == "r-a"
    finally:
        node.cleanup()
