"""The ``media`` rows that need real node processes behind a real controller (all on
loopback): ``tether-relay`` MB/s, ``tether`` RSS per open peer, and the flat-RSS check of
opening and closing a peer with video many times in a row.

* Relay: two ``tether node run`` processes; the source node's only ICE host address is one
  this machine does not have (192.0.2.1, TEST-NET-1), so it has no candidate, sends no ICE
  check anywhere, and ``file.send`` falls back to the controller's ``rtc.relay`` at once.
  The figure is the file's bytes over ``transfer_seconds`` (the relay leg: from the relay
  opening to the receiver's ``verified``), the same bytes as the other media rows.
* RSS per peer: this process opens ``peers`` operator peers (one ``/ws`` client each: a
  client holds one peer per node) to the receiving node, each asking for video (the node
  sends its test pattern, one encoder per peer) and reading every frame; the node
  runtime's RSS (``/proc/<pid>/status`` VmRSS) after they all receive frames, less its RSS
  before (after one warm-up peer, so imports and codec set-up are not counted), over the
  number of peers.
* Flat RSS (measured first, before the node ever held more than one peer): ``cycles``
  times in a row one peer with video is opened, receives a frame and is closed
  (``rtc.close``), after :data:`WARMUP_CYCLES` warm-up cycles; the row reports
  RSS before, at half way and after (once the node reports no peer), and whether the
  growth is within :data:`FLAT_BOUND_KIB`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from .bench_util import ControllerProcess, row

NO_HOST = "192.0.2.1"  # TEST-NET-1: never on this machine, so no host candidate
WARMUP_CYCLES = 3
FLAT_BOUND_KIB = 16 << 10  # the bound: at most 16 MiB of growth over all the cycles
WAIT_S = 60.0


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


class _Node:
    """``tether node run`` as its own process (the sidecar it starts is another)."""

    def __init__(self, root: Path, node_id: str, host: str) -> None:
        self.node_id = node_id
        self.dir = root / f"node-{node_id}"
        self.host = host
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ctl: ControllerProcess, join_token: str) -> None:
        cli = [sys.executable, "-m", "tether.cli.main", "--log-level", "warning"]
        subprocess.run([*cli, "node", "enroll", "--controller", ctl.url, "--token",
                        join_token, "--node-id", self.node_id, "--state-dir", str(self.dir)],
                       check=True, capture_output=True, timeout=60)
        with open(self.dir / "bench-node.log", "wb") as log:
            self.proc = subprocess.Popen(
                [*cli, "node", "run", "--state-dir", str(self.dir), "--rtc-host-address",
                 self.host, "--rtc-ice-timeout", "2"], stdout=log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def status(self) -> dict[str, Any]:
        url = (self.dir / "runtime.status.url").read_text().strip()
        value: dict[str, Any] = httpx.get(url + "/status", timeout=5).json()
        return value

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def _until(check: Any, what: str, timeout_s: float = WAIT_S) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            with contextlib.suppress(Exception):
                if await asyncio.to_thread(check):
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


async def _relay(http: httpx.AsyncClient, a: _Node, b: _Node, source: Path) -> dict[str, Any]:
    await asyncio.to_thread(shutil.copyfile, source, a.dir / "workspace" / "bench.bin")
    size = await asyncio.to_thread(lambda: source.stat().st_size)
    link = (await http.post("/api/v1/rtc/links", json={"a": a.node_id, "b": b.node_id}))
    link.raise_for_status()
    resp = await http.post(f"/api/v1/nodes/{a.node_id}/commands", json={
        "kind": "file.send", "offline": "fail",
        "args": {"peer_session_id": link.json()["peer_session_id"], "to_node": b.node_id,
                 "src": "bench.bin"}})
    resp.raise_for_status()
    cmd = resp.json()
    async with asyncio.timeout(max(WAIT_S, size / 1e5)):
        while cmd["state"] not in ("succeeded", "failed", "rejected", "expired",
                                   "cancelled"):
            await asyncio.sleep(0.1)
            cmd = (await http.get(f"/api/v1/commands/{cmd['command_id']}")).json()
    if cmd["state"] != "succeeded":
        raise RuntimeError(f"file.send {cmd['state']}: {cmd.get('error')}")
    result: dict[str, Any] = cmd["result"]
    return result


class _Viewer:
    """An operator peer over its own ``/ws`` connection asking for the node's video."""

    def __init__(self, ctl: ControllerProcess, node_id: str) -> None:
        self.ctl, self.node_id = ctl, node_id
        self.frames = 0
        self._tasks: list[asyncio.Task[None]] = []
        self.pc: Any = None
        self.ws: Any = None
        self.n = 0

    async def __aenter__(self) -> _Viewer:
        from websockets.asyncio.client import connect

        self.ws = await connect(self.ctl.url.replace("http", "ws", 1) + "/ws",
                                subprotocols=["tether.v1.json"],  # type: ignore[list-item]
                                open_timeout=10, close_timeout=2, ping_interval=None)
        await self.ws.send(json.dumps({"t": "hello", "b": {"token": self.ctl.token}}))
        async with asyncio.timeout(10):
            if json.loads(await self.ws.recv())["t"] != "welcome":
                raise RuntimeError("/ws refused the bench's operator")
        return self

    async def open(self, psid: str) -> None:
        """A new peer ``psid`` with video from the node, until its first frame."""
        from aiortc import RTCPeerConnection, RTCSessionDescription

        self.pc = pc = RTCPeerConnection()
        pc.addTransceiver("video", direction="recvonly")
        pc.createDataChannel("control")
        got_frame = asyncio.Event()

        @pc.on("track")
        def on_track(track: Any) -> None:
            async def read() -> None:
                with contextlib.suppress(Exception):
                    while True:
                        await track.recv()
                        self.frames += 1
                        got_frame.set()
            self._tasks.append(asyncio.create_task(read()))

        await pc.setLocalDescription(await pc.createOffer())
        self.n += 1
        await self.ws.send(json.dumps({"t": "rtc.offer", "b": {
            "node_id": self.node_id, "peer_session_id": psid, "negotiation_id": self.n,
            "sdp": pc.localDescription.sdp, "type": "offer"}}))
        async with asyncio.timeout(WAIT_S):
            while True:
                frame = json.loads(await self.ws.recv())
                if frame["t"] == "error":
                    raise RuntimeError(f"the node refused the peer: {frame['b']}")
                if frame["t"] == "rtc.answer" and frame["b"]["peer_session_id"] == psid:
                    break
            await pc.setRemoteDescription(RTCSessionDescription(frame["b"]["sdp"], "answer"))
            await got_frame.wait()
        self.psid = psid

    async def close_peer(self) -> None:
        await self.ws.send(json.dumps({"t": "rtc.close", "b": {
            "node_id": self.node_id, "peer_session_id": self.psid,
            "negotiation_id": self.n, "reason": "bench"}}))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.pc.close()

    async def __aexit__(self, *exc: object) -> None:
        if self.pc is not None:
            with contextlib.suppress(Exception):
                await self.close_peer()
        await self.ws.close()


async def _no_peers(node: _Node) -> None:
    await _until(lambda: not node.status()["rtc"]["peers"], "the node to close its peers")


async def _rss_per_peer(ctl: ControllerProcess, node: _Node, peers: int) -> dict[str, Any]:
    async with _Viewer(ctl, node.node_id) as warm:  # imports, codecs: not per peer
        await warm.open("warm-up")
        await warm.close_peer()
        warm.pc = None
    await _no_peers(node)
    before = _rss_kib(node.pid)
    async with contextlib.AsyncExitStack() as stack:
        viewers = [await stack.enter_async_context(_Viewer(ctl, node.node_id))
                   for _ in range(peers)]
        for i, viewer in enumerate(viewers):
            await viewer.open(f"rss-{i}")
        await asyncio.sleep(1.0)  # a second of every peer streaming: buffers at steady state
        after = _rss_kib(node.pid)
        frames = sum(v.frames for v in viewers)
    await _no_peers(node)
    return {"before_kib": before, "after_kib": after, "peers": peers, "frames": frames,
            "per_peer": round((after - before) / peers, 1)}


async def _open_close(ctl: ControllerProcess, node: _Node, cycles: int) -> dict[str, Any]:
    async with _Viewer(ctl, node.node_id) as viewer:
        for i in range(WARMUP_CYCLES):
            await viewer.open(f"warm-{i}")
            await viewer.close_peer()
        await _no_peers(node)
        before = _rss_kib(node.pid)
        mid = before
        started = time.monotonic()
        for i in range(cycles):
            await viewer.open(f"cycle-{i}")
            await viewer.close_peer()
            if i == cycles // 2:
                mid = _rss_kib(node.pid)
        viewer.pc = None
        seconds = time.monotonic() - started
    await _no_peers(node)
    after = _rss_kib(node.pid)
    return {"before_kib": before, "mid_kib": mid, "after_kib": after, "cycles": cycles,
            "seconds": round(seconds, 1), "growth_kib": after - before}


async def run_node_media(root: Path, source: Path, *, peers: int, cycles: int
                         ) -> list[dict[str, Any]]:
    """The relay, RSS-per-peer and flat-RSS rows (module docstring)."""
    from tether.node.rtc.ice import install_host_allowlist

    install_host_allowlist(["127.0.0.1"])  # this process's peers: loopback only
    for name in ("aioice", "aiortc"):  # their per-check INFO lines would bury the table
        logging.getLogger(name).setLevel(logging.WARNING)
    a = _Node(root, "relay-a", NO_HOST)
    b = _Node(root, "relay-b", "127.0.0.1")
    try:
        async with ControllerProcess(root, "media", "process") as ctl:
            async with httpx.AsyncClient(base_url=ctl.url, timeout=15, headers={
                    "Authorization": f"Bearer {ctl.token}"}) as http:
                resp = await http.post("/api/v1/join-tokens", json={"uses": 2})
                resp.raise_for_status()
                for node in (a, b):
                    await asyncio.to_thread(node.start, ctl, resp.json()["token"])
                for node in (a, b):
                    await _until(lambda n=node: httpx.get(
                        f"{ctl.url}/api/v1/nodes/{n.node_id}", timeout=5,
                        headers={"Authorization": f"Bearer {ctl.token}"}
                    ).json()["liveness"] == "online", f"{node.node_id} online")
                (a.dir / "workspace").mkdir(parents=True, exist_ok=True)
                relay = await _relay(http, a, b, source)
            # the open/close cycles first, on a node that never had more than one peer:
            # after 10 peers the allocator would hold their freed memory, which could hide
            # a leak of up to that much
            flat = await _open_close(ctl, b, cycles)
            rss = await _rss_per_peer(ctl, b, peers)
    finally:
        for node in (a, b):
            await asyncio.to_thread(node.stop)
        install_host_allowlist([])
    if relay["path"] != "relay":
        raise RuntimeError(f"the relay bench went {relay['path']}")
    relay_mb_s = round(relay["bytes"] / relay["transfer_seconds"] / 1e6, 2)
    return [
        row("media", "tether-relay", "mb_per_s", relay_mb_s, "MB/s", bytes=relay["bytes"],
            transfer_seconds=relay["transfer_seconds"], seconds=relay["seconds"],
            processes="controller + 2 nodes (+ their sidecars)",
            note="file.send through the controller's rtc.relay (the source node has no ICE "
                 "host candidate); MB/s over the relay leg"),
        row("media", "tether", "rss_kib_per_peer", rss["per_peer"], "KiB", **rss,
            note=f"the node runtime's RSS growth per open peer with {peers} peers open, each "
                 "receiving the node's test pattern (after a warm-up peer)"),
        row("media", "tether", "rss_kib_growth_open_close", flat["growth_kib"], "KiB", **flat,
            bound_kib=FLAT_BOUND_KIB, flat=flat["growth_kib"] <= FLAT_BOUND_KIB,
            note=f"a peer with video opened, first frame, closed, {cycles} times in a row "
                 f"after {WARMUP_CYCLES} warm-up cycles: RSS {flat['before_kib']} -> "
                 f"{flat['mid_kib']} -> {flat['after_kib']} KiB; flat means growth <= "
                 f"{FLAT_BOUND_KIB} KiB"),
    ]


__all__ = ["FLAT_BOUND_KIB", "run_node_media"]
