"""node/rtc: the node's peer runtime against an aiortc peer in the test process (the
browser's side), on loopback only (host addresses allowlisted to 127.0.0.1). Frames the
node sends are collected from a fake link; frames to it go through RtcManager.receive."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription

from tether.node.policy import Policy
from tether.node.rtc.control import MAX_REQUEST_BYTES, CommandDispatcher
from tether.node.rtc.ice import IceSettings, install_host_allowlist
from tether.node.rtc.peers import RtcManager
from tether.protocol.frames import Frame
from tether.protocol.rtc import NodeRtcReport

from ..helpers import until

NODE = "n1"
CLIENT = "client:c1"


class Link:
    def __init__(self) -> None:
        self.sent: list[Frame] = []
        self.wake = asyncio.Event()

    async def send(self, frame: Frame) -> bool:
        self.sent.append(frame)
        self.wake.set()
        return True

    def of(self, t: str) -> list[Frame]:
        return [f for f in self.sent if f.t == t]

    async def next(self, t: str, before: int, timeout_s: float = 20.0) -> Frame:
        async with asyncio.timeout(timeout_s):
            while True:
                found = [f for f in self.sent[before:] if f.t == t]
                if found:
                    return found[0]
                self.wake.clear()
                await self.wake.wait()




class Browser:
    """The operator's end: an aiortc peer that offers, as a browser would."""

    def __init__(self, manager: RtcManager | None, link: Link, psid: str = "p1",
                 address: str = CLIENT,
                 deliver: Callable[[Frame], Awaitable[None]] | None = None) -> None:
        self.link, self.psid, self.address = link, psid, address
        assert manager is not None or deliver is not None
        self.deliver = deliver or manager.receive  # type: ignore[union-attr]
        self.pc = RTCPeerConnection()
        self.video = self.pc.addTransceiver("video", direction="recvonly")
        self.control: RTCDataChannel = self.pc.createDataChannel("control")
        self.replies: list[dict[str, Any]] = []
        self.control.on("message", lambda m: self.replies.append(json.loads(m)))
        self.frames_in = 0
        self.rounds = 0
        self.pc.on("track", self._on_track)

    def _on_track(self, track: Any) -> None:
        async def read() -> None:
            try:
                while True:
                    await track.recv()
                    self.frames_in += 1
            except Exception:
                return
        self._reader = asyncio.ensure_future(read())  # cancelled in close()

    def body(self, nid: str | int, **more: Any) -> dict[str, Any]:
        return {"node_id": NODE, "peer_session_id": self.psid, "negotiation_id": nid,
                "from": self.address, **more}

    async def negotiate(self, nid: str | int | None = None) -> Frame:
        self.rounds += 1
        nid = nid if nid is not None else f"r{self.rounds}"
        await self.pc.setLocalDescription(await self.pc.createOffer())
        before = len(self.link.sent)
        await self.deliver(Frame(t="rtc.offer", id=f"f{nid}", b=self.body(
            nid, sdp=self.pc.localDescription.sdp, type="offer")))
        answer = await self.link.next("rtc.answer", before)
        await self.pc.setRemoteDescription(RTCSessionDescription(answer.b["sdp"], "answer"))
        return answer

    async def ask(self, request: dict[str, Any] | str) -> dict[str, Any]:
        count = len(self.replies)
        self.control.send(request if isinstance(request, str) else json.dumps(request))
        await until(lambda: len(self.replies) > count)
        return self.replies[count]

    async def close(self) -> None:
        reader = getattr(self, "_reader", None)
        if reader is not None:
            reader.cancel()
        async with asyncio.timeout(20):  # aiortc's close has been seen to hang: fail, not wedge
            await self.pc.close()


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[tuple[RtcManager, Link]]:
    install_host_allowlist(["127.0.0.1"])
    link = Link()
    policy = Policy(deny_kinds=("shell",), exec_allow=("echo",))
    manager = RtcManager(node_id=NODE, send=link.send,
                         dispatcher=CommandDispatcher(policy=policy),
                         ice=IceSettings(host_addresses=("127.0.0.1",)),
                         workspace_dir=tmp_path)
    runner = asyncio.ensure_future(manager.run())
    await until(lambda: manager._tg is not None)
    try:
        yield manager, link
    finally:
        await manager.close()
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
        install_host_allowlist([])


async def connected(browser: Browser) -> None:
    await until(lambda: browser.control.readyState == "open")


async def test_control_channel_answers_diag_ping_and_the_policy_refuses_a_denied_kind(
        node: tuple[RtcManager, Link]) -> None:
    manager, link = node
    browser = Browser(manager, link)
    try:
        answer = await browser.negotiate()
        assert answer.b["to"] == CLIENT and answer.b["negotiation_id"] == "r1"
        await connected(browser)
        assert (await browser.ask({"id": 1, "kind": "diag.ping"}))["state"] == "succeeded"
        refused = await browser.ask({"id": "s", "kind": "shell", "args": {}})
        assert refused["re"] == "s" and refused["state"] == "rejected"
        assert "deny_kinds" in refused["error"]["message"]
        ran = await browser.ask({"id": 2, "kind": "exec", "args": {"argv": ["echo", "hi"]}})
        assert ran["state"] == "succeeded" and ran["result"]["stdout"] == "hi\n"
        other = await browser.ask({"id": 3, "kind": "exec", "args": {"argv": ["true"]}})
        assert other["state"] == "rejected" and "exec_allow" in other["error"]["message"]
        peer = manager.status()["peers"][0]
        assert peer["state"] == "connected" and peer["candidate_pair"] == "host"
        assert peer["subflows"]["control"]["state"] == "open"
        report = NodeRtcReport.from_body(manager.report())
        assert report.peers[0]["candidate_pair"] == "host"
        assert report.peers[0]["subflows"]["control"]["bytes_in"] > 0
    finally:
        await browser.close()


async def test_hostile_control_messages_get_bad_frame_and_the_channel_stays(
        node: tuple[RtcManager, Link]) -> None:
    manager, link = node
    browser = Browser(manager, link)
    try:
        await browser.negotiate()
        await connected(browser)
        for hostile in ("not json", "[1, 2]", json.dumps({"id": True, "kind": "diag.ping"}),
                        json.dumps({"id": 1, "kind": "diag.ping",
                                    "args": {"x": "y" * MAX_REQUEST_BYTES}})):
            reply = await browser.ask(hostile)
            assert reply["state"] == "failed" and reply["error"]["code"] == "bad_frame"
            assert reply["re"] is None
        unknown = await browser.ask({"id": 9, "kind": "no.such.kind"})
        assert unknown["re"] == 9 and unknown["state"] == "rejected"
        assert "unknown command kind" in unknown["error"]["message"]
        assert (await browser.ask({"id": 10, "kind": "diag.ping"}))["state"] == "succeeded"
        assert manager.status()["peers"][0]["subflows"]["control"]["errors_total"] == 4
    finally:
        await browser.close()


async def test_test_pattern_frames_arrive_when_the_offer_asks_for_video(
        node: tuple[RtcManager, Link]) -> None:
    manager, link = node
    browser = Browser(manager, link)
    try:
        await browser.negotiate()
        await until(lambda: browser.frames_in >= 5)
        assert manager.status()["peers"][0]["subflows"]["video"]["sending"] == "pattern"
    finally:
        await browser.close()


async def test_stopping_and_starting_video_three_times_keeps_control_and_the_peer(
        node: tuple[RtcManager, Link]) -> None:
    manager, link = node
    browser = Browser(manager, link)
    try:
        await browser.negotiate()
        await connected(browser)
        await until(lambda: browser.frames_in >= 2)
        pc = manager.peers["p1"].pc
        sender = next(t.sender for t in pc.getTransceivers() if t.kind == "video")
        for _ in range(3):
            browser.video.direction = "inactive"
            await browser.negotiate()
            assert sender.track is None
            assert manager.status()["peers"][0]["subflows"]["video"]["state"] == "idle"
            browser.video.direction = "recvonly"
            await browser.negotiate()
            assert sender.track is not None
            seen = browser.frames_in
            await until(lambda seen=seen: browser.frames_in > seen + 2)  # type: ignore[misc]
            assert browser.control.readyState == "open"
            assert (await browser.ask({"id": 1, "kind": "diag.ping"}))["state"] == "succeeded"
        assert manager.peers["p1"].pc is pc and list(manager.peers) == ["p1"]
        status = manager.status()["peers"][0]
        assert status["negotiations_total"] == 7 and status["connections_total"] == 1
        assert not link.of("error")
    finally:
        await browser.close()


async def test_a_stale_answer_or_reused_offer_is_refused_and_changes_nothing(
        node: tuple[RtcManager, Link]) -> None:
    manager, link = node
    browser = Browser(manager, link)
    try:
        await browser.negotiate("r1")
        await connected(browser)
        before = manager.status()["peers"][0]
        n = len(link.sent)
        await manager.receive(Frame(t="rtc.answer", id="stale", b=browser.body(
            "r0", sdp=browser.pc.localDescription.sdp, type="answer")))
        error = await link.next("error", n)
        assert error.b["code"] == "rtc_stale" and error.re == "stale"
        assert error.b["to"] == CLIENT
        n = len(link.sent)
        await manager.receive(Frame(t="rtc.offer", id="again", b=browser.body(
            "r1", sdp=browser.pc.localDescription.sdp, type="offer")))
        error = await link.next("error", n)
        assert error.b["code"] == "rtc_stale" and error.re == "again"
        n = len(link.sent)
        await manager.receive(Frame(t="rtc.ice", id="ice", b=browser.body(
            "r0", candidate="candidate:1 1 UDP 1 127.0.0.1 9 typ host", sdpMid="0")))
        assert (await link.next("error", n)).b["code"] == "rtc_stale"
        after = manager.status()["peers"][0]
        for key in ("state", "negotiations_total", "negotiation_id", "signaling_state"):
            assert after[key] == before[key]
        assert (await browser.ask({"id": 1, "kind": "diag.ping"}))["state"] == "succeeded"
    finally:
        await browser.close()


async def test_frames_for_a_peer_the_node_does_not_have_get_rtc_unknown_peer(
        node: tuple[RtcManager, Link]) -> None:
    manager, link = node
    body = {"node_id": NODE, "peer_session_id": "nope", "negotiation_id": 1, "from": CLIENT}
    for t, more in (("rtc.answer", {"sdp": "v=0", "type": "answer"}),
                    ("rtc.ice", {"candidate": ""}), ("rtc.close", {})):
        n = len(link.sent)
        await manager.receive(Frame(t=t, id=t, b={**body, **more}))
        error = await link.next("error", n)
        assert error.b["code"] == "rtc_unknown_peer" and error.re == t
    n = len(link.sent)
    await manager.receive(Frame(t="rtc.offer", id="bad", b={**body, "sdp": 5, "type": "offer"}))
    error = await link.next("error", n)
    assert error.b["code"] == "bad_frame" and error.b["to"] == CLIENT and not manager.peers


async def test_a_new_peer_session_from_the_same_end_replaces_the_old_with_a_reason(
        node: tuple[RtcManager, Link]) -> None:
    manager, link = node
    first = Browser(manager, link, "p1")
    second = Browser(manager, link, "p2")
    try:
        await first.negotiate()
        await connected(first)
        old_pc = manager.peers["p1"].pc
        await second.negotiate()
        await connected(second)
        assert list(manager.peers) == ["p2"]
        await until(lambda: old_pc.connectionState == "closed")
        reasons = [r["reason"] for r in manager.status()["history"]
                   if r["peer_session_id"] == "p1"]
        assert reasons and "replaced by peer session 'p2'" in reasons[-1]
        assert (await second.ask({"id": 1, "kind": "diag.ping"}))["state"] == "succeeded"
    finally:
        await first.close()
        await second.close()


async def test_shutdown_closes_every_connection_and_leaves_no_task(tmp_path: Path) -> None:
    install_host_allowlist(["127.0.0.1"])
    link = Link()
    manager = RtcManager(node_id=NODE, send=link.send,
                         dispatcher=CommandDispatcher(policy=Policy()),
                         workspace_dir=tmp_path)
    runner = asyncio.ensure_future(manager.run())
    await until(lambda: manager._tg is not None)
    browsers = [Browser(manager, link, f"p{i}", f"client:c{i}") for i in range(2)]
    try:
        for browser in browsers:
            await browser.negotiate()
        for browser in browsers:
            await connected(browser)
        pcs = [peer.pc for peer in manager.peers.values()]
        await manager.close()
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
        assert all(pc.connectionState == "closed" for pc in pcs)
        assert {f.b["peer_session_id"] for f in link.of("rtc.close")} == {"p0", "p1"}
    finally:
        for browser in browsers:
            await browser.close()
        install_host_allowlist([])
    me = asyncio.current_task()
    await until(lambda: not [t for t in asyncio.all_tasks() if t is not me])
    n = len(link.sent)  # stopped: a late offer is refused, not a crash
    await manager.receive(Frame(t="rtc.offer", id="late", b=browsers[0].body(
        "late", sdp="v=0", type="offer")))
    assert (await link.next("error", n)).b["code"] == "unavailable" and not manager.peers
