"""Issue 14 end to end: an operator's aiortc peer (standing in for the dashboard) opens a
peer to a real node process through a real controller's /ws rtc relay, on loopback only
(the node with --rtc-host-address 127.0.0.1, this process with the same allowlist).
Skipped, saying so, against a controller without the relay (rtc-signal's slice)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
from aiortc import RTCPeerConnection, RTCSessionDescription
from websockets.asyncio.client import ClientConnection

from tether.node.rtc.ice import install_host_allowlist

from ..controller.conftest import browser_connect, json_recv
from ..helpers import ControllerProc, NodeProc, until

NODE = "n-media"
WAIT_S = 30.0




async def reply(ws: ClientConnection, frame_id: str) -> dict[str, Any]:
    """The frame answering ``frame_id`` (pushed events before it are skipped)."""
    async with asyncio.timeout(WAIT_S):
        while True:
            got = await json_recv(ws, WAIT_S)
            if got.get("re") == frame_id or got["t"].startswith("rtc."):
                return got


async def test_an_operator_peer_reaches_a_real_node_through_the_controller(
        controller: ControllerProc, make_node: Callable[..., NodeProc]) -> None:
    node = make_node(NODE, extra=["--rtc-host-address", "127.0.0.1"])
    install_host_allowlist(["127.0.0.1"])
    pc = RTCPeerConnection()
    readers: list[asyncio.Future[None]] = []
    ws = await browser_connect(controller.url.replace("http", "ws", 1) + "/ws")
    try:
        await ws.send(json.dumps({"t": "hello", "id": "h", "b": {"token": controller.token}}))
        assert (await json_recv(ws))["t"] == "welcome"
        video = pc.addTransceiver("video", direction="recvonly")
        control = pc.createDataChannel("control")
        replies: list[dict[str, Any]] = []
        control.on("message", lambda m: replies.append(json.loads(m)))
        frames = [0]

        @pc.on("track")
        def on_track(track: Any) -> None:
            async def read() -> None:
                try:
                    while True:
                        await track.recv()
                        frames[0] += 1
                except Exception:  # the track ended
                    return
            readers.append(asyncio.ensure_future(read()))  # cancelled in finally

        async def negotiate(nid: int) -> dict[str, Any]:
            await pc.setLocalDescription(await pc.createOffer())
            await ws.send(json.dumps({"t": "rtc.offer", "id": f"o{nid}", "b": {
                "node_id": NODE, "peer_session_id": "p1", "negotiation_id": nid,
                "sdp": pc.localDescription.sdp, "type": "offer"}}))
            got = await reply(ws, f"o{nid}")
            assert got["t"] == "rtc.answer", got
            assert got["b"]["negotiation_id"] == nid and got["b"]["from"] == f"node:{NODE}"
            await pc.setRemoteDescription(RTCSessionDescription(got["b"]["sdp"], "answer"))
            return got

        await negotiate(1)
        await until(lambda: control.readyState == "open")
        control.send(json.dumps({"id": "ping", "kind": "diag.ping"}))
        await until(lambda: bool(replies))
        assert replies[0] == {**replies[0], "re": "ping", "state": "succeeded"}
        await until(lambda: frames[0] >= 3)  # the node's test pattern
        video.direction = "inactive"
        await negotiate(2)
        video.direction = "recvonly"
        await negotiate(3)
        seen = frames[0]
        await until(lambda: frames[0] > seen + 2)
        assert control.readyState == "open"
        url = (node.state_dir / "runtime.status.url").read_text().strip()
        peers = httpx.get(url + "/status", timeout=5).json()["rtc"]["peers"]
        assert [(p["peer_session_id"], p["state"], p["negotiations_total"],
                 p["connections_total"]) for p in peers] == [("p1", "connected", 3, 1)]
    finally:
        for reader in readers:
            reader.cancel()
        await pc.close()
        await ws.close()
        install_host_allowlist([])
