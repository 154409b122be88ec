"""node/rtc: in ``loopback`` mode the node's video follows each offer on the same peer:
the browser's camera looped back while its offer sends video, the test pattern while it
does not (node/rtc/media.py ``LoopbackTrack``; the dashboard's media page relies on it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tether.node.policy import Policy
from tether.node.rtc.control import CommandDispatcher
from tether.node.rtc.ice import IceSettings, install_host_allowlist
from tether.node.rtc.media import PATTERN_WIDTH, TestPatternTrack, VideoSource
from tether.node.rtc.peers import RtcManager

from .test_rtc_peers import Browser, Link, connected, until

CAMERA_WIDTH = 64


class WatchingBrowser(Browser):
    """A Browser that remembers the width of every frame it decodes."""

    widths: list[int]

    def _on_track(self, track: Any) -> None:
        self.widths = []

        async def read() -> None:
            try:
                while True:
                    frame = await track.recv()
                    self.widths.append(frame.width)
                    self.frames_in += 1
            except Exception:
                return
        self._reader = asyncio.ensure_future(read())  # cancelled in close()

    async def sees(self, width: int) -> None:
        start = len(self.widths)
        await until(lambda: width in self.widths[start:][-3:], timeout_s=20)


@pytest.fixture
async def looping(tmp_path: Path) -> AsyncIterator[tuple[RtcManager, Link]]:
    install_host_allowlist(["127.0.0.1"])
    link = Link()
    manager = RtcManager(node_id="n-1", send=link.send, video=VideoSource("loopback"),
                         ice=IceSettings(host_addresses=("127.0.0.1",)),
                         dispatcher=CommandDispatcher(policy=Policy()), workspace_dir=tmp_path)
    runner = asyncio.ensure_future(manager.run())
    await manager.ready.wait()
    try:
        yield manager, link
    finally:
        await manager.close()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        install_host_allowlist([])


async def test_the_camera_is_looped_back_while_it_is_on_and_the_pattern_comes_back_when_off(
        looping: tuple[RtcManager, Link]) -> None:
    manager, link = looping
    browser = WatchingBrowser(manager, link)
    try:
        await browser.negotiate()  # no camera yet: the pattern
        await connected(browser)
        await browser.sees(PATTERN_WIDTH)
        peer = manager.peers["p1"]
        for _ in range(2):
            browser.video.direction = "sendrecv"  # camera on
            browser.video.sender.replaceTrack(TestPatternTrack(width=CAMERA_WIDTH, height=48))
            await browser.negotiate()
            await browser.sees(CAMERA_WIDTH)
            assert manager.status()["peers"][0]["subflows"]["video"]["sending"] == "loopback"
            browser.video.sender.replaceTrack(None)  # camera off
            browser.video.direction = "recvonly"
            await browser.negotiate()
            await browser.sees(PATTERN_WIDTH)
            assert manager.status()["peers"][0]["subflows"]["video"]["sending"] == "pattern"
        assert manager.peers["p1"] is peer and peer.connections_total == 1
        assert (await browser.ask({"id": 1, "kind": "diag.ping"}))["state"] == "succeeded"
    finally:
        await browser.close()
