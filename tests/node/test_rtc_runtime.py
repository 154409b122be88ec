"""node/runtime.py's rtc wiring: rtc.* frames reach the peer runtime through on_frame
(malformed ones get bad_frame, never a crash); its state shows in /status, /metrics and the
control channel's status, never in readiness; the node's shutdown closes every peer."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

from prometheus_client import generate_latest

from tether.node.config import NodeConfig
from tether.node.metrics import node_registry
from tether.node.rtc.ice import install_host_allowlist
from tether.node.runtime import NodeRuntime
from tether.protocol.frames import Frame

from .test_rtc_peers import CLIENT, Browser, Link, until


class RuntimeLink(Link):
    """What the runtime reads of its SidecarLink, attached and connected."""

    def __init__(self) -> None:
        super().__init__()
        self.attached, self.connected = asyncio.Event(), asyncio.Event()
        self.attached.set()
        self.connected.set()
        self.status = SimpleNamespace(attached=True, sidecar_restarts=0, as_dict=dict)


async def test_rtc_frames_reach_the_peer_runtime_and_show_outside_readiness(
        tmp_path: Path) -> None:
    config = NodeConfig(state_dir=tmp_path, durability="process",
                        rtc_host_addresses=("127.0.0.1",))
    runtime = NodeRuntime(config, identity=SimpleNamespace(  # type: ignore[arg-type]
        node_id="n1", labels={}))
    link = RuntimeLink()
    runtime.link = link  # type: ignore[assignment]
    browser = Browser(None, link, deliver=runtime.on_frame)
    try:
        async with asyncio.TaskGroup() as tg:
            runtime._tg = tg
            await runtime.on_frame(Frame(t="rtc.offer", id="x", b={"node_id": "n1"}))
            assert link.of("error")[-1].b["code"] == "bad_frame"
            assert link.of("error")[-1].re == "x"
            # a grant the controller could not have built: dropped, counted, not answered
            await runtime.on_frame(Frame(t="rtc.link", b={"node_id": "n1"}))
            assert runtime.relay.refused_total == 1 and len(link.of("error")) == 1
            assert not runtime.relay.grants
            await browser.negotiate()
            await until(lambda: browser.control.readyState == "open")
            reply = await browser.ask({"id": 1, "kind": "status"})
            assert reply["state"] == "succeeded" and reply["result"]["node_id"] == "n1"
            assert reply["result"]["rtc"]["peers"][0]["peer_session_id"] == "p1"
            status = runtime.status()
            assert status["rtc"]["peers"][0]["state"] == "connected"
            assert "rtc" not in str(runtime.readiness())
            metrics = generate_latest(node_registry(runtime)).decode()
            assert 'tether_node_rtc_peers{state="connected"} 1.0' in metrics
            await until(lambda: bool(link.of("node.rtc")))
            assert link.of("node.rtc")[-1].b["peers"][0]["remote"] == CLIENT
            await runtime._stop_rtc()
            assert link.of("rtc.close")[-1].b["to"] == CLIENT
            assert not runtime.rtc.peers
    finally:
        await browser.close()
        install_host_allowlist([])
