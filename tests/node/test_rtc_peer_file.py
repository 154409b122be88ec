"""The peer runtime owns its ``file`` subflow (node/rtc/peers.py + filexfer): an upload
over a browser-side aiortc peer lands verified in the workspace, the transfer shows as the
peer's ``file`` subflow (status and the ``node.rtc`` report), and the endpoint is closed
when the peer is."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from aiortc import RTCDataChannel

from tether.node.rtc.filechannel import AiortcFileChannel
from tether.node.rtc.filexfer import FileEndpoint
from tether.node.rtc.peers import RtcManager
from tether.protocol.rtc import NodeRtcReport

from .test_rtc_peers import Browser, Link, node, until

__all__ = ["node"]  # the fixture, shared with test_rtc_peers


async def test_an_upload_is_the_peers_file_subflow_and_ends_with_the_peer(
        node: tuple[RtcManager, Link], tmp_path: Path) -> None:
    manager, link = node
    browser = Browser(manager, link, "p1")
    channel: RTCDataChannel = browser.pc.createDataChannel("file")
    source = tmp_path / "up.bin"
    source.write_bytes(os.urandom(300_000))
    try:
        await browser.negotiate()
        await until(lambda: channel.readyState == "open")
        endpoint = FileEndpoint(AiortcFileChannel(channel, low_bytes=0), tmp_path / "here",
                                serve=False)
        channel.on("message", endpoint.feed)
        result = await endpoint.send_file(source, name="there.bin")
        assert result.ok
        landed = manager.workspace_dir / "there.bin"
        assert hashlib.sha256(landed.read_bytes()).digest() == \
            hashlib.sha256(source.read_bytes()).digest()
        peer = manager.peers["p1"]
        served = peer.file
        assert served is not None and served.serve
        flow = peer.status()["subflows"]["file"]
        assert flow["state"] == "open" and flow["bytes_in"] == 300_000
        assert [c["name"] for c in flow["completed"]] == ["there.bin"]
        report = NodeRtcReport.from_body(manager.report())
        assert report.peers[0]["subflows"]["file"]["bytes_in"] == 300_000
        await manager.finish(peer, "test over")
        assert peer.file is None and served.state == "closed"
    finally:
        await browser.close()
