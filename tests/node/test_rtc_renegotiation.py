"""node/rtc: what the node's renegotiation supports, exactly as docs/protocol.md "Media
plane (node side)" says: a connection that failed is replaced on the next offer (with its
reason), glare (the node polite), the peer bound, loopback media, an m-line added to a
live connection, an ICE-restart offer answered without a restart, and node <-> node."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from aiortc.mediastreams import AudioStreamTrack

from tether.node.policy import Policy
from tether.node.rtc.control import CommandDispatcher
from tether.node.rtc.ice import IceSettings, install_host_allowlist
from tether.node.rtc.media import TestPatternTrack, VideoSource
from tether.node.rtc.peers import RtcManager
from tether.protocol.frames import Frame

from .test_rtc_peers import CLIENT, NODE, Browser, Link, connected, node, until

__all__ = ["node"]  # the fixture, used by name below


async def test_a_failed_connection_is_replaced_on_the_next_offer_with_its_reason(
        node: tuple[RtcManager, Link]) -> None:
    manager, link = node
    browser = Browser(manager, link)
    again = None
    try:
        await browser.negotiate()
        await connected(browser)
        peer = manager.peers["p1"]
        old = peer.pc
        await old.close()  # what a failed transport leaves: a connection that is over
        again = Browser(manager, link)  # the same peer_session_id, a fresh offer
        again.rounds = 5
        await again.negotiate()
        await connected(again)
        assert manager.peers["p1"] is peer and peer.pc is not old
        assert peer.connections_total == 2
        assert "after the connection closed" in manager.status()["history"][-1]["reason"]
        assert (await again.ask({"id": 1, "kind": "diag.ping"}))["state"] == "succeeded"
    finally:
        await browser.close()
        if again is not None:
            await again.close()


async def test_glare_the_node_drops_its_own_offer_and_answers_the_remote_one(
        node: tuple[RtcManager, Link]) -> None:
    manager, link = node
    peer = await manager.open_peer(CLIENT, NODE, "p1")
    offer = link.of("rtc.offer")[-1]
    assert offer.b["to"] == CLIENT and peer.local_offer == offer.b["negotiation_id"]
    browser = Browser(manager, link)  # its own offer crosses the node's
    try:
        await browser.negotiate("b1")
        await connected(browser)
        assert "glare" in manager.status()["history"][-1]["reason"]
        n = len(link.sent)
        await manager.receive(Frame(t="rtc.answer", id="late", b=browser.body(
            offer.b["negotiation_id"], sdp=browser.pc.localDescription.sdp, type="answer")))
        assert (await link.next("error", n)).b["code"] == "rtc_stale"
        assert (await browser.ask({"id": 1, "kind": "diag.ping"}))["state"] == "succeeded"
    finally:
        await browser.close()


async def test_more_peers_than_the_bound_are_refused(tmp_path: Path) -> None:
    install_host_allowlist(["127.0.0.1"])
    link = Link()
    manager = RtcManager(node_id=NODE, send=link.send, max_peers=1,
                         dispatcher=CommandDispatcher(policy=Policy()))
    runner = asyncio.ensure_future(manager.run())
    await manager.ready.wait()
    first = Browser(manager, link, "p1", "client:a")
    second = Browser(manager, link, "p2", "client:b")
    try:
        await first.negotiate()
        await second.pc.setLocalDescription(await second.pc.createOffer())
        n = len(link.sent)
        await manager.receive(Frame(t="rtc.offer", id="over", b=second.body(
            "x", sdp=second.pc.localDescription.sdp, type="offer")))
        error = await link.next("error", n)
        assert error.b["code"] == "unavailable" and error.b["to"] == "client:b"
        assert list(manager.peers) == ["p1"]
    finally:
        await manager.close()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await first.close()
        await second.close()
        install_host_allowlist([])


async def test_loopback_sends_back_what_the_browser_sends(tmp_path: Path) -> None:
    install_host_allowlist(["127.0.0.1"])
    link = Link()
    manager = RtcManager(node_id=NODE, send=link.send, video=VideoSource("loopback"),
                         dispatcher=CommandDispatcher(policy=Policy()))
    runner = asyncio.ensure_future(manager.run())
    await manager.ready.wait()
    browser = Browser(manager, link)
    camera = TestPatternTrack(width=64, height=48)
    browser.video.direction = "sendrecv"
    browser.video.sender.replaceTrack(camera)
    try:
        await browser.negotiate()
        await until(lambda: browser.frames_in >= 5)
        video = manager.status()["peers"][0]["subflows"]["video"]
        assert video["sending"] == "loopback" and video["frames_in"] >= 1
        assert video["bytes_in"] > 0
    finally:
        await manager.close()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await browser.close()
        install_host_allowlist([])


async def test_an_audio_m_line_added_to_a_live_connection_is_received(
        node: tuple[RtcManager, Link]) -> None:
    manager, link = node
    browser = Browser(manager, link)
    try:
        await browser.negotiate()
        await connected(browser)
        browser.pc.addTrack(AudioStreamTrack())
        await browser.negotiate()
        await until(lambda: manager.status()["peers"][0]["subflows"]["audio"]
                    .get("frames_in", 0) > 0)
        assert manager.peers["p1"].connections_total == 1
        assert (await browser.ask({"id": 1, "kind": "diag.ping"}))["state"] == "succeeded"
    finally:
        await browser.close()


async def test_an_ice_restart_offer_is_answered_without_restarting_ice(
        node: tuple[RtcManager, Link]) -> None:
    manager, link = node
    browser = Browser(manager, link)
    try:
        first = await browser.negotiate()
        await connected(browser)
        sdp = (await browser.pc.createOffer()).sdp
        sdp = re.sub(r"a=ice-ufrag:\S+", "a=ice-ufrag:rstr", sdp)
        sdp = re.sub(r"a=ice-pwd:\S+", "a=ice-pwd:restartrestartrestartrestart", sdp)
        n = len(link.sent)
        await manager.receive(Frame(t="rtc.offer", id="ir", b=browser.body(
            "restart", sdp=sdp, type="offer")))
        answer = await link.next("rtc.answer", n)
        ufrag = re.compile(r"a=ice-ufrag:(\S+)")
        assert ufrag.findall(answer.b["sdp"])[0] == ufrag.findall(first.b["sdp"])[0]
        assert manager.status()["peers"][0]["state"] == "connected"
        assert (await browser.ask({"id": 1, "kind": "diag.ping"}))["state"] == "succeeded"
    finally:
        await browser.close()


async def test_node_to_node_a_peer_the_node_opens_connects_with_control_and_file(
        tmp_path: Path) -> None:
    """Two managers in this process, frames carried between them with ``from`` stamped
    as the controller would: node a offers, node b answers."""
    install_host_allowlist(["127.0.0.1"])
    managers: dict[str, RtcManager] = {}

    def carrier(sender: str):  # type: ignore[no-untyped-def]
        async def send(frame: Frame) -> bool:
            to = frame.b.get("to")
            if frame.t.startswith("rtc.") and isinstance(to, str):
                b = {k: v for k, v in frame.b.items() if k != "to"}
                asyncio.get_running_loop().call_soon(
                    lambda: managers[to.removeprefix("node:")].tg.create_task(
                        managers[to.removeprefix("node:")].receive(
                            Frame(t=frame.t, b={**b, "from": f"node:{sender}"}))))
            return True
        return send

    for name in ("a", "b"):
        managers[name] = RtcManager(node_id=name, send=carrier(name),
                                    ice=IceSettings(host_addresses=("127.0.0.1",)),
                                    dispatcher=CommandDispatcher(policy=Policy()))
    runners = [asyncio.ensure_future(m.run()) for m in managers.values()]
    try:
        for m in managers.values():
            await m.ready.wait()
        peer = await managers["a"].open_peer("node:b", "b", "cp1")
        control = peer.channels["control"]
        replies: list[str] = []
        control.on("message", replies.append)
        await until(lambda: control.readyState == "open")
        control.send('{"id": 1, "kind": "diag.ping"}')
        await until(lambda: bool(replies))
        assert '"succeeded"' in replies[0]
        assert peer.negotiations_total == 1 and peer.local_offer is None
        assert managers["b"].peers["cp1"].remote == "node:a"
        assert peer.channels["file"].readyState in ("connecting", "open", "closing", "closed")
    finally:
        for m in managers.values():
            await m.close()
        for r in runners:
            r.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
        install_host_allowlist([])



async def test_a_peer_left_failed_is_closed_after_the_linger_and_the_other_end_told(
        node: tuple[RtcManager, Link]) -> None:
    manager, link = node
    manager.tick_s, manager.linger_s = 0.1, 0.3
    browser = Browser(manager, link)
    try:
        await browser.negotiate()
        await connected(browser)
        await manager.peers["p1"].pc.close()  # failed, and no new offer comes
        await until(lambda: not manager.peers)
        close = link.of("rtc.close")[-1]
        assert close.b["to"] == CLIENT and "no new offer within" in close.b["reason"]
    finally:
        await browser.close()


async def test_a_video_source_that_fails_degrades_video_and_sends_the_pattern(
        tmp_path: Path) -> None:
    install_host_allowlist(["127.0.0.1"])
    link = Link()
    manager = RtcManager(node_id=NODE, send=link.send,
                         video=VideoSource(str(tmp_path / "missing.mp4")),
                         dispatcher=CommandDispatcher(policy=Policy()))
    runner = asyncio.ensure_future(manager.run())
    await manager.ready.wait()
    browser = Browser(manager, link)
    try:
        await browser.negotiate()
        await until(lambda: browser.frames_in >= 2)
        video = manager.status()["peers"][0]["subflows"]["video"]
        assert video["state"] == "degraded" and "missing.mp4" in video["last_error"]
        assert video["sending"] == "pattern" and not link.of("error")
        assert (await browser.ask({"id": 1, "kind": "diag.ping"}))["state"] == "succeeded"
    finally:
        await manager.close()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await browser.close()
        install_host_allowlist([])
