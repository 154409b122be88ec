"""Issue 14's "5 MiB over ``file``, including after the transfer is cut and resumed", through
the node's peer runtime (node/rtc/peers.py ``RtcManager``, ICE host addresses allowlisted to
127.0.0.1): the operator's end is an aiortc peer in the test process driving filexfer's
client side over the ``file`` data channel it opens.

The cut is the operator's RTCPeerConnection closing mid-transfer. The resume comes on a new
``peer_session_id`` (a new RTCPeerConnection is a new peer session: aiortc has no ICE restart,
so an offer from a fresh connection cannot renegotiate the old one; the node replaces the
end's old peer, rule 2) and, in the second test, on the same ``peer_session_id`` once the node
has seen the old connection close (rule 2's "a peer whose connection closed gets a new
connection on its next offer"). Either way the node's ``.part`` outlives the peer and the new
peer's ``file`` subflow resumes from it."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

from aiortc import RTCDataChannel

from tether.node.rtc.filechannel import AiortcFileChannel
from tether.node.rtc.filexfer import FileEndpoint, FileLimits, TransferResult
from tether.node.rtc.peers import RtcManager
from tether.protocol import filexfer as fx
from tether.protocol.rtc import NodeRtcReport

from .test_rtc_peers import Browser, Link, node, until

__all__ = ["node"]  # the fixture, shared with test_rtc_peers

MIB5 = 5 << 20


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Operator(Browser):
    """A :class:`Browser` that also opens the ``file`` channel and runs filexfer's client
    side on it (``serve=False``: it takes only what it asked for)."""

    def __init__(self, manager: RtcManager, link: Link, psid: str, client_dir: Path) -> None:
        super().__init__(manager, link, psid)
        self.manager = manager
        self.file_channel: RTCDataChannel = self.pc.createDataChannel(fx.CHANNEL_LABEL)
        self.client_dir = client_dir
        self.endpoint: FileEndpoint | None = None

    async def open_file(self) -> FileEndpoint:
        await self.negotiate()
        await until(lambda: self.file_channel.readyState == "open")
        # aiortc opens the offerer's channel without waiting for the other end: wait until
        # the node's peer serves it as its file subflow
        await until(lambda: (peer := self.manager.peers.get(self.psid)) is not None
                    and peer.file is not None and peer.file.state == "open")
        endpoint = FileEndpoint(AiortcFileChannel(self.file_channel, low_bytes=0),
                                self.client_dir, FileLimits(timeout_s=20), serve=False)
        self.file_channel.on("message", endpoint.feed)
        self.file_channel.on("close", endpoint.connection_lost)
        self.endpoint = endpoint
        return endpoint

    async def close(self) -> None:
        if self.endpoint is not None:
            await self.endpoint.aclose()
        await super().close()


def file_flow(manager: RtcManager, psid: str) -> dict[str, object]:
    """The ``file`` subflow of ``psid`` as the node reports it to the controller."""
    report = NodeRtcReport.from_body(manager.report())
    peer = next(p for p in report.peers if p["peer_session_id"] == psid)
    flow: dict[str, object] = peer["subflows"]["file"]
    return flow


async def test_a_5_mib_upload_through_the_peer_runtime_lands_with_its_sha256(
        node: tuple[RtcManager, Link], tmp_path: Path) -> None:
    manager, link = node
    data = os.urandom(MIB5)
    source = tmp_path / "five.src"
    source.write_bytes(data)
    operator = Operator(manager, link, "p1", tmp_path / "client")
    try:
        endpoint = await operator.open_file()
        result = await endpoint.send_file(source, name="five.bin")
        assert result.ok and result.sha256 == sha(data) and result.bytes == MIB5, result
        assert sha((manager.workspace_dir / "five.bin").read_bytes()) == sha(data)
        assert not list(manager.workspace_dir.glob("*.part"))
        flow = file_flow(manager, "p1")
        assert flow["state"] == "open" and flow["bytes_in"] == MIB5
        assert flow["errors_total"] == 0
    finally:
        await operator.close()


async def cut_halfway(manager: RtcManager, link: Link, tmp_path: Path,
                      data: bytes) -> tuple[Path, int]:
    """Upload ``data`` as ``cut.bin`` on peer ``p1`` and close the operator's connection
    once the node holds half of it; returns the node's ``.part`` and what it holds once the
    node's endpoint has seen the channel close."""
    source = tmp_path / "cut.src"
    source.write_bytes(data)
    first = Operator(manager, link, "p1", tmp_path / "client")
    endpoint = await first.open_file()
    served = manager.peers["p1"].file
    assert served is not None
    part = manager.workspace_dir / fx.part_name("cut.bin", sha(data))
    send = asyncio.ensure_future(endpoint.send_file(source, name="cut.bin"))
    try:
        await until(lambda: part.exists() and part.stat().st_size >= len(data) // 2, 30)
        await first.pc.close()  # the operator's end goes away mid-transfer
        result: TransferResult = await send
    finally:
        await first.close()
    assert not result.ok and result.error == "connection_lost", result
    await until(lambda: served.state == "closed")  # the node saw its channel close
    assert not (manager.workspace_dir / "cut.bin").exists()
    held = part.stat().st_size
    assert len(data) // 2 <= held < len(data)
    return part, held


async def test_an_upload_cut_halfway_resumes_from_the_part_on_a_new_peer_session(
        node: tuple[RtcManager, Link], tmp_path: Path) -> None:
    manager, link = node
    data = os.urandom(MIB5)
    part, held = await cut_halfway(manager, link, tmp_path, data)
    second = Operator(manager, link, "p2", tmp_path / "client")
    try:
        endpoint = await second.open_file()
        assert list(manager.peers) == ["p2"]  # p1 was replaced by the same end's new one
        again = await endpoint.send_file(tmp_path / "cut.src", name="cut.bin")
        assert again.ok and again.resumed_from == held and again.bytes == MIB5 - held, again
        assert sha((manager.workspace_dir / "cut.bin").read_bytes()) == sha(data)
        assert not part.exists()
        flow = file_flow(manager, "p2")
        assert flow["state"] == "open" and flow["bytes_in"] == MIB5 - held
        completed = manager.peers["p2"].status()["subflows"]["file"]["completed"]
        assert [(c["name"], c["ok"]) for c in completed] == [("cut.bin", True)]
        reasons = [r["reason"] for r in manager.status()["history"]
                   if r["peer_session_id"] == "p1"]
        assert any("replaced by peer session 'p2'" in r for r in reasons), reasons
    finally:
        await second.close()


async def test_an_upload_cut_halfway_resumes_on_the_same_peer_session_after_its_close(
        node: tuple[RtcManager, Link], tmp_path: Path) -> None:
    manager, link = node
    data = os.urandom(MIB5)
    part, held = await cut_halfway(manager, link, tmp_path, data)
    peer = manager.peers["p1"]
    await until(lambda: peer.pc.connectionState in ("failed", "closed"))
    old_pc = peer.pc
    again_op = Operator(manager, link, "p1", tmp_path / "client")
    again_op.rounds = 1  # r1 was the cut connection's round: a reused id would be stale
    try:
        endpoint = await again_op.open_file()
        assert manager.peers["p1"] is peer and peer.pc is not old_pc
        assert peer.connections_total == 2
        again = await endpoint.send_file(tmp_path / "cut.src", name="cut.bin")
        assert again.ok and again.resumed_from == held, again
        assert sha((manager.workspace_dir / "cut.bin").read_bytes()) == sha(data)
        assert not part.exists()
        # the subflow's counts are the new connection's endpoint's: what moved after the cut
        assert file_flow(manager, "p1")["bytes_in"] == MIB5 - held
        assert any("after the connection" in r["reason"]
                   for r in manager.status()["history"]), manager.status()["history"]
    finally:
        await again_op.close()
