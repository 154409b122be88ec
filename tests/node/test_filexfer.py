"""The ``file`` subflow's I/O (node/rtc/filexfer.py): two endpoints over an in-memory
channel (hostile peers, limits, timeouts, resume from a ``.part``), then over a real aiortc
pair on loopback: a 5 MiB file with its sha256, cut halfway and resumed on a new pair, and
a wrong sha256 refused."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aioice.ice
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from tether.node.rtc.filexfer import (
    FileEndpoint,
    FileLimits,
    TransferResult,
    attach_file_channel,
)
from tether.protocol import filexfer as fx

from ..helpers import until

FAST = FileLimits(timeout_s=5.0)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()




class MemoryChannel:
    """A FileChannel whose messages reach ``peer`` on the next loop turn, in order; a
    ``tap`` sees (and may drop, returning False) each message."""

    def __init__(self) -> None:
        self.peer: Any = None
        self.open = True
        self.sent: list[bytes | str] = []
        self.tap: Callable[[bytes | str], bool] | None = None

    def send(self, message: bytes | str) -> None:
        if not self.open:
            raise ConnectionError("closed")
        self.sent.append(message)
        if self.tap is None or self.tap(message):
            asyncio.get_running_loop().call_soon(self._deliver, message)

    def _deliver(self, message: bytes | str) -> None:
        if self.open:
            self.peer.feed(message)

    @property
    def buffered_amount(self) -> int:
        return 0

    async def wait_buffered_low(self) -> None:
        return None

    def close(self) -> None:
        self.open = False


class Corrupting:
    """A FileChannel that flips the last byte of the chunk at ``offset`` on its way out."""

    def __init__(self, inner: Any, offset: int) -> None:
        self.inner, self.offset = inner, offset

    def send(self, message: bytes | str) -> None:
        if isinstance(message, bytes) and fx.parse_chunk(message).offset == self.offset:
            message = message[:-1] + bytes([message[-1] ^ 1])
        self.inner.send(message)

    @property
    def buffered_amount(self) -> int:
        return int(self.inner.buffered_amount)

    async def wait_buffered_low(self) -> None:
        await self.inner.wait_buffered_low()

    def close(self) -> None:
        self.inner.close()


def memory_pair(tmp_path: Path, limits: FileLimits = FAST, *, serve_b: bool = True,
                ) -> tuple[FileEndpoint, FileEndpoint, MemoryChannel, MemoryChannel]:
    """``a`` is the client (its own workspace, serves nothing), ``b`` the node."""
    ca, cb = MemoryChannel(), MemoryChannel()
    a = FileEndpoint(ca, tmp_path / "client", limits, serve=False)
    b = FileEndpoint(cb, tmp_path / "node", limits, serve=serve_b)
    (tmp_path / "client").mkdir(parents=True)
    (tmp_path / "node").mkdir(parents=True, exist_ok=True)
    ca.peer, cb.peer = b, a
    return a, b, ca, cb


def mute(channel: MemoryChannel) -> None:
    """The node's answers go nowhere (the test plays the client by hand)."""
    channel.tap = lambda message: False


def sent_errors(channel: MemoryChannel) -> list[dict[str, Any]]:
    return [m for m in (json.loads(x) for x in channel.sent if isinstance(x, str))
            if m["t"] == "error"]


def source(tmp_path: Path, size: int, name: str = "src.bin") -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = tmp_path / name
    path.write_bytes(data)
    return path, data


async def test_an_upload_lands_under_its_name_with_its_sha256(tmp_path: Path) -> None:
    a, b, _, _ = memory_pair(tmp_path)
    path, data = source(tmp_path, 300_000)
    result = await a.send_file(path, name="up.bin")
    assert result.ok and result.direction == "out" and result.sha256 == sha(data)
    await until(lambda: bool(b.completed))
    assert (tmp_path / "node" / "up.bin").read_bytes() == data
    assert not list((tmp_path / "node").glob("*.part"))
    assert b.completed[-1].ok and b.bytes_in == len(data) and a.bytes_out == len(data)
    assert oct((tmp_path / "node" / "up.bin").stat().st_mode & 0o777) == "0o600"
    status = b.status()
    assert status["state"] == "open" and status["errors_total"] == 0
    assert not status["transfers"] and status["completed"][-1]["ok"]


async def test_a_download_comes_from_the_node_workspace(tmp_path: Path) -> None:
    a, _b, _, _ = memory_pair(tmp_path)
    data = os.urandom(100_000)
    (tmp_path / "node" / "report.txt").write_bytes(data)
    result = await a.fetch("report.txt")
    assert result.ok and result.path == tmp_path / "client" / "report.txt"
    assert result.path.read_bytes() == data


async def test_an_empty_file_moves_too(tmp_path: Path) -> None:
    a, _b, _, _ = memory_pair(tmp_path)
    path, _ = source(tmp_path, 0)
    assert (await a.send_file(path)).ok
    assert (tmp_path / "node" / "src.bin").read_bytes() == b""


async def test_a_download_of_a_missing_file_is_not_found(tmp_path: Path) -> None:
    a, _b, _, _ = memory_pair(tmp_path)
    result = await a.fetch("nope.txt")
    assert (result.ok, result.error) == (False, "not_found")


async def test_a_download_never_leaves_the_workspace_through_a_symlink(tmp_path: Path) -> None:
    a, _b, _, _ = memory_pair(tmp_path)
    (tmp_path / "secret").write_text("s")
    (tmp_path / "node" / "link").symlink_to(tmp_path / "secret")
    result = await a.fetch("link")
    assert not result.ok and not (tmp_path / "client" / "link").exists()


async def test_an_upload_never_writes_through_a_symlinked_part(tmp_path: Path) -> None:
    a, _b, _, _ = memory_pair(tmp_path)
    path, data = source(tmp_path, 1000)
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "node" / fx.part_name("x.bin", sha(data))).symlink_to(victim)
    result = await a.send_file(path, name="x.bin")
    assert (result.ok, result.error) == (False, "internal")
    assert victim.read_text() == "keep"


@pytest.mark.parametrize("name", ["../escape.bin", "/tmp/abs.bin", "sub/dir.bin", ".hidden",
                                  "..", "a\0b"])
async def test_a_hostile_name_never_lands_outside_the_workspace(tmp_path: Path,
                                                                name: str) -> None:
    a, b, ca, _ = memory_pair(tmp_path)
    ca.send(json.dumps({"t": "offer", "id": "h1", "name": name, "size": 3,
                        "sha256": sha(b"abc")}))
    await until(lambda: b.errors == 1)
    assert b.last_error is not None and b.last_error.startswith("invalid_request")
    assert not b.status()["transfers"]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["client", "node"]
    assert a.errors == 1  # the client heard the refusal


async def test_a_file_over_the_limit_is_refused_before_any_byte(tmp_path: Path) -> None:
    a, b, _, _ = memory_pair(tmp_path, FileLimits(max_file_bytes=1000, timeout_s=5))
    path, _ = source(tmp_path, 1001)
    result = await a.send_file(path)
    assert (result.ok, result.error) == (False, "quota_exceeded")
    assert b.bytes_in == 0 and not list((tmp_path / "node").iterdir())


async def test_more_transfers_than_the_limit_are_refused(tmp_path: Path) -> None:
    _a, b, ca, cb = memory_pair(tmp_path, FileLimits(max_transfers=2, timeout_s=5))
    mute(cb)
    for i in range(3):
        ca.send(fx.encode_control(fx.Offer(f"t{i}", f"f{i}", 10, "0" * 64)))
    await until(lambda: b.errors == 1)
    assert len(b.status()["transfers"]) == 2
    assert [(e["id"], e["code"]) for e in sent_errors(cb)] == [("t2", "quota_exceeded")]


@pytest.mark.parametrize("message", [
    b"\x01\x02zz" + bytes(8) + b"data",  # a chunk for an unknown transfer
    '{"t": "ack", "id": "zz", "offset": 1}',  # an ack for no sender
    '{"t": "done", "id": "zz", "sha256": "' + "0" * 64 + '"}',
    "not json", b"\x07junk", '{"t": "offer"}',
])
async def test_a_hostile_message_is_answered_with_an_error_and_the_channel_stays(
        tmp_path: Path, message: bytes | str) -> None:
    a, b, ca, cb = memory_pair(tmp_path)
    ca.send(message)
    await until(lambda: b.errors == 1)
    errors = [json.loads(m) for m in cb.sent if isinstance(m, str)]
    assert errors and errors[-1]["t"] == "error"
    assert errors[-1]["code"] in ("not_found", "bad_frame", "protocol_error")
    path, _data = source(tmp_path, 5000)
    assert (await a.send_file(path)).ok  # the channel still works


async def test_an_error_is_never_answered_with_an_error(tmp_path: Path) -> None:
    _a, b, ca, cb = memory_pair(tmp_path)
    ca.send(fx.encode_control(fx.Error("zz", "internal", "boom")))
    ca.send(fx.encode_control(fx.Error(None, "internal", "boom")))
    await until(lambda: b.errors == 2)
    assert cb.sent == []


async def test_chunks_beyond_the_size_fail_the_transfer_and_keep_nothing(
        tmp_path: Path) -> None:
    _a, b, ca, cb = memory_pair(tmp_path)
    mute(cb)
    ca.send(fx.encode_control(fx.Offer("t1", "x.bin", 4, sha(b"abcd"))))
    await until(lambda: any('"accept"' in m for m in cb.sent if isinstance(m, str)))
    ca.send(fx.encode_chunk("t1", 0, b"abcdef"))
    await until(lambda: b.errors == 1)
    assert [(e["id"], e["code"]) for e in sent_errors(cb)] == [("t1", "protocol_error")]
    assert not (tmp_path / "node" / "x.bin").exists() and not b.status()["transfers"]


async def test_a_duplicate_transfer_id_is_a_conflict(tmp_path: Path) -> None:
    _a, b, ca, cb = memory_pair(tmp_path)
    mute(cb)
    ca.send(fx.encode_control(fx.Offer("t1", "x.bin", 4, sha(b"abcd"))))
    ca.send(fx.encode_control(fx.Offer("t1", "y.bin", 4, sha(b"abcd"))))
    await until(lambda: b.errors == 1)
    assert b.last_error is not None and b.last_error.startswith("conflict")


async def test_a_wrong_sha256_is_refused_and_the_part_is_discarded(tmp_path: Path) -> None:
    a, b, ca, _ = memory_pair(tmp_path)
    path, _data = source(tmp_path, 50_000)
    a.channel = Corrupting(ca, 2 * FAST.chunk_bytes)  # one byte of the third chunk
    result = await a.send_file(path, name="bad.bin")
    assert (result.ok, result.error) == (False, "sha256_mismatch")
    await until(lambda: bool(b.completed))
    assert b.completed[-1].error == "sha256_mismatch"
    assert not (tmp_path / "node" / "bad.bin").exists()
    assert not list((tmp_path / "node").glob("*.part"))


async def test_a_silent_peer_times_out_and_the_part_stays_for_resume(tmp_path: Path) -> None:
    limits = FileLimits(timeout_s=0.3)
    _a, b, ca, cb = memory_pair(tmp_path, limits)
    mute(cb)
    data = os.urandom(40_000)
    ca.send(fx.encode_control(fx.Offer("t1", "slow.bin", len(data), sha(data))))
    await until(lambda: any('"accept"' in m for m in cb.sent if isinstance(m, str)))
    ca.send(fx.encode_chunk("t1", 0, data[:10_000]))
    await until(lambda: b.errors == 1)  # then nothing: the idle timer fires
    assert b.last_error is not None and b.last_error.startswith("request_timeout")
    part = tmp_path / "node" / fx.part_name("slow.bin", sha(data))
    assert part.read_bytes() == data[:10_000]


async def test_an_offer_abandoned_before_any_byte_leaves_no_part(tmp_path: Path) -> None:
    _a, b, ca, cb = memory_pair(tmp_path)
    mute(cb)
    ca.send(fx.encode_control(fx.Offer("t1", "x.bin", 4, sha(b"abcd"))))
    await until(lambda: any('"accept"' in m for m in cb.sent if isinstance(m, str)))
    ca.send(fx.encode_control(fx.Error("t1", "internal", "changed my mind")))
    await until(lambda: not b.status()["transfers"])
    assert list((tmp_path / "node").iterdir()) == []


async def test_a_sender_whose_receiver_goes_silent_times_out(tmp_path: Path) -> None:
    a, _b, ca, _ = memory_pair(tmp_path, FileLimits(timeout_s=0.3))
    ca.tap = lambda m: isinstance(m, str) and '"offer"' in m  # the offer only
    path, _ = source(tmp_path, 200_000)
    result = await a.send_file(path)
    assert (result.ok, result.error) == (False, "request_timeout")


async def test_a_transfer_cut_by_a_closed_channel_resumes_from_the_part(
        tmp_path: Path) -> None:
    a, b, ca, _cb = memory_pair(tmp_path)
    path, data = source(tmp_path, 400_000)
    cut = asyncio.Event()

    def cut_half(message: bytes | str) -> bool:
        if isinstance(message, bytes) and fx.parse_chunk(message).offset >= 200_000:
            if not cut.is_set():  # after what is already on its way was delivered
                cut.set()
                asyncio.get_running_loop().call_soon(a.connection_lost)
                asyncio.get_running_loop().call_soon(b.connection_lost)
            return False
        return True

    ca.tap = cut_half
    first = await a.send_file(path, name="big.bin", transfer_id="x1")
    assert (first.ok, first.error) == (False, "connection_lost")
    part = tmp_path / "node" / fx.part_name("big.bin", sha(data))
    held = part.stat().st_size
    assert 0 < held < 200_000 + FAST.chunk_bytes
    a2, b2, _, _ = memory_pair(tmp_path / "again", FAST)
    b2.workspace = b.workspace  # a new channel to the same node workspace
    second = await a2.send_file(path, name="big.bin", transfer_id="x2")
    assert second.ok and second.resumed_from == held and second.bytes == len(data) - held
    await until(lambda: bool(b2.completed))
    assert (tmp_path / "node" / "big.bin").read_bytes() == data and not part.exists()


async def test_close_cancels_the_endpoints_tasks(tmp_path: Path) -> None:
    _a, b, ca, cb = memory_pair(tmp_path)
    mute(cb)
    ca.send(fx.encode_control(fx.Offer("t1", "x.bin", 4, sha(b"abcd"))))
    await until(lambda: bool(b.status()["transfers"]))
    await b.aclose()
    assert b.status()["state"] == "closed" and not b.status()["transfers"]


# -- a real aiortc pair on loopback ---------------------------------------------------------

@pytest.fixture
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Host candidates on 127.0.0.1 only (aioice skips it by default) and no STUN: every
    packet of these tests stays on loopback."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6:
                        ["127.0.0.1"])


class RtcPair:
    """Two RTCPeerConnections in this process: ``client`` opens a ``file`` channel, the
    ``node`` side attaches the subflow to it."""

    def __init__(self, workspace: Path, client_dir: Path, limits: FileLimits) -> None:
        self.config = RTCConfiguration(iceServers=[])
        self.client_pc = RTCPeerConnection(self.config)
        self.node_pc = RTCPeerConnection(self.config)
        self.workspace, self.client_dir, self.limits = workspace, client_dir, limits
        self.node: FileEndpoint | None = None
        self.client: FileEndpoint | None = None

    async def open(self) -> None:
        channel = self.client_pc.createDataChannel(fx.CHANNEL_LABEL)
        opened = asyncio.Event()
        channel.on("open", opened.set)

        @self.node_pc.on("datachannel")
        def on_channel(ch: Any) -> None:
            assert ch.label == fx.CHANNEL_LABEL
            self.node = attach_file_channel(ch, self.workspace, self.limits)

        await self.client_pc.setLocalDescription(await self.client_pc.createOffer())
        await self.node_pc.setRemoteDescription(self.client_pc.localDescription)
        await self.node_pc.setLocalDescription(await self.node_pc.createAnswer())
        await self.client_pc.setRemoteDescription(self.node_pc.localDescription)
        async with asyncio.timeout(20):
            await opened.wait()
        self.client = attach_file_channel(channel, self.client_dir, self.limits, serve=False)
        await until(lambda: self.node is not None)

    async def close(self) -> None:
        for ep in (self.client, self.node):
            if ep is not None:
                await ep.aclose()
        await self.client_pc.close()
        await self.node_pc.close()


@pytest.fixture
async def rtc_pairs(loopback_ice: None, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    pairs: list[RtcPair] = []

    async def make() -> RtcPair:
        pair = RtcPair(tmp_path / "node", tmp_path / "client", FileLimits(timeout_s=20))
        pairs.append(pair)
        await pair.open()
        return pair

    yield make
    for pair in pairs:
        await pair.close()


MIB5 = 5 << 20


async def test_a_5_mib_file_arrives_over_aiortc_with_its_sha256(
        rtc_pairs: Callable[..., Any], tmp_path: Path) -> None:
    pair = await rtc_pairs()
    path, data = source(tmp_path, MIB5)
    result: TransferResult = await pair.client.send_file(path, name="five.bin")
    assert result.ok and result.sha256 == sha(data), result
    await until(lambda: bool(pair.node.completed))
    assert sha((tmp_path / "node" / "five.bin").read_bytes()) == sha(data)
    back = await pair.client.fetch("five.bin", transfer_id="down1")
    assert back.ok and back.path is not None and sha(back.path.read_bytes()) == sha(data)
    assert pair.node.status()["bytes_out"] == MIB5 == pair.node.status()["bytes_in"]


async def test_a_transfer_cut_halfway_resumes_on_a_new_peer(
        rtc_pairs: Callable[..., Any], tmp_path: Path) -> None:
    first = await rtc_pairs()
    path, data = source(tmp_path, MIB5)
    send = asyncio.ensure_future(first.client.send_file(path, name="cut.bin"))
    part = tmp_path / "node" / fx.part_name("cut.bin", sha(data))
    await until(lambda: part.exists() and part.stat().st_size >= MIB5 // 2, 30)
    await first.client_pc.close()  # the peer goes away mid-transfer
    result = await send
    assert not result.ok and result.error == "connection_lost", result
    await until(lambda: first.node.state == "closed")
    held = part.stat().st_size
    assert MIB5 // 2 <= held < MIB5
    second = await rtc_pairs()
    again = await second.client.send_file(path, name="cut.bin")
    assert again.ok and again.resumed_from == held, again
    await until(lambda: bool(second.node.completed))
    assert sha((tmp_path / "node" / "cut.bin").read_bytes()) == sha(data)
    assert not part.exists()


async def test_a_wrong_sha256_over_aiortc_is_refused_and_not_renamed(
        rtc_pairs: Callable[..., Any], tmp_path: Path) -> None:
    pair = await rtc_pairs()
    path, _ = source(tmp_path, 1 << 20)
    pair.client.channel = Corrupting(pair.client.channel, 5 * fx.DEFAULT_CHUNK)
    result = await pair.client.send_file(path, name="lie.bin")
    assert (result.ok, result.error) == (False, "sha256_mismatch"), result
    await until(lambda: bool(pair.node.completed))
    assert pair.node.completed[-1].error == "sha256_mismatch"
    assert not (tmp_path / "node" / "lie.bin").exists()
    assert not list((tmp_path / "node").glob("*.part"))


async def test_a_closed_channel_cancels_the_endpoints_tasks_and_leaks_no_descriptor(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from tether.node.rtc import filexfer as node_fx

    release = threading.Event()
    real_open_part = node_fx.open_part

    def slow_open_part(part: Path, offer: fx.Offer) -> Any:
        release.wait(10)
        return real_open_part(part, offer)

    monkeypatch.setattr(node_fx, "open_part", slow_open_part)
    _a, b, ca, cb = memory_pair(tmp_path)
    mute(cb)
    part = tmp_path / "node" / fx.part_name("x.bin", sha(b"abcd"))

    def part_open() -> bool:
        return any(os.path.realpath(f"/proc/self/fd/{fd}") == str(part)
                   for fd in os.listdir("/proc/self/fd"))

    ca.send(fx.encode_control(fx.Offer("t1", "x.bin", 4, sha(b"abcd"))))
    await until(lambda: bool(b._tasks))
    b.connection_lost()  # the channel closed while the part was being opened
    tasks = list(b._tasks)
    release.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert all(t.cancelled() for t in tasks)
    await until(lambda: part.exists())  # the thread did open it ...
    await until(lambda: not part_open())  # ... and its descriptor was closed
