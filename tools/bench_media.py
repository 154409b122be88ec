"""The ``media`` benchmark rows: a file between two processes over a WebRTC data channel on
loopback, bare aiortc beside Tether's ``file`` subflow, in one run.

``python -m tether.tools.bench_media {send,receive} --mode {raw,file} ...`` is one end (both
on uvloop, ICE host candidates on 127.0.0.1 only, no STUN); :func:`run_media` starts a
receiver and a sender, carries the SDP offer and answer between them over their
stdin/stdout (one JSON line each way), and reads the sender's figure. Both modes send the
same bytes in 16 KiB messages, paced by the same ``bufferedamountlow`` flow control
(``bufferedAmountLowThreshold`` = :data:`BUFFERED_LOW`):

* ``raw`` (``aiortc-raw``): aiortc's file-transfer example: read 16 KiB, ``send``, while
  ``bufferedAmount`` is at most the threshold; an empty message ends it and the receiver,
  which appends every message to a file, answers ``done``;
* ``file`` (``tether-file``): :meth:`FileEndpoint.send_file` to an endpoint attached with
  :func:`attach_file_channel`: the sha256 of the source first, then the offer, the chunks
  under the ack window, the receiver's writes, fsync, sha256 check and rename, until the
  ``verified`` verdict.

The time runs from the channel's ``open`` until ``done`` / ``verified`` reaches the sender;
MB/s is 10^6 bytes per second. Each mode runs ``runs`` times, alternating, and is credited
with its best run (the box is shared; see ``tools/bench.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .bench_rtc_nodes import run_node_media
from .bench_util import row

CHUNK = 16 << 10
BUFFERED_LOW = 0  # both modes: bufferedAmountLowThreshold, as the example leaves it
SETUP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class MediaPlan:
    """How much the ``media`` rows move."""

    file_bytes: int
    runs: int
    peers: int = 10  # open at once for rss_kib_per_peer (tools/bench_rtc_nodes.py)
    cycles: int = 200  # peers opened and closed in a row for the flat-RSS check


MEDIA_PLANS = {"tiny": MediaPlan(file_bytes=1 << 20, runs=1, peers=2, cycles=3),
               "quick": MediaPlan(file_bytes=32 << 20, runs=2, cycles=50),
               "full": MediaPlan(file_bytes=128 << 20, runs=3)}


def _loopback_only() -> Any:
    """Host candidates on 127.0.0.1 only (aioice skips loopback on its own) and no STUN
    server: every packet of the benchmark stays on this machine."""
    import aioice.ice
    from aiortc import RTCConfiguration

    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]
    return RTCConfiguration(iceServers=[])


async def _line(reader: asyncio.StreamReader) -> dict[str, Any]:
    async with asyncio.timeout(SETUP_TIMEOUT_S):
        raw = await reader.readline()
    if not raw:
        raise RuntimeError("the other end exited before answering")
    value: dict[str, Any] = json.loads(raw)
    return value


def _say(value: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


async def _stdin() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


# -- the two ends (child processes) -------------------------------------------------------

async def _send(mode: str, path: Path, size: int, timeout_s: float, low: int) -> None:
    from aiortc import RTCPeerConnection, RTCSessionDescription

    import tether.node.rtc.filexfer  # noqa: F401 - imported before the clock starts

    pc = RTCPeerConnection(_loopback_only())
    stdin = await _stdin()
    try:
        channel = pc.createDataChannel("file" if mode == "file" else "filexfer")
        opened = asyncio.Event()
        channel.on("open", opened.set)
        await pc.setLocalDescription(await pc.createOffer())
        _say({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type})
        answer = await _line(stdin)
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        async with asyncio.timeout(SETUP_TIMEOUT_S):
            await opened.wait()
        started, cpu = time.perf_counter(), time.process_time()
        async with asyncio.timeout(timeout_s):
            if mode == "raw":
                await _send_raw(channel, path, low)
                ok = True
            else:
                ok = await _send_file(channel, path, low)
        seconds = time.perf_counter() - started
        _say({"ok": ok, "bytes": size, "seconds": seconds, "mb_per_s": size / seconds / 1e6,
              "cpu_s": time.process_time() - cpu})
    finally:
        await pc.close()


async def _send_raw(channel: Any, path: Path, low: int) -> None:
    """aiortc's file-transfer example, with the same threshold as the file mode."""
    done = asyncio.Event()
    channel.bufferedAmountLowThreshold = low
    channel.on("message", lambda message: message == "done" and done.set())
    with open(path, "rb") as fp:  # noqa: ASYNC230 - the example's blocking reads, on purpose
        finished = False

        def send_data() -> None:
            nonlocal finished
            while channel.bufferedAmount <= channel.bufferedAmountLowThreshold \
                    and not finished:
                data = fp.read(CHUNK)
                channel.send(data)
                finished = not data

        channel.on("bufferedamountlow", send_data)
        send_data()
        await done.wait()


async def _send_file(channel: Any, path: Path, low: int) -> bool:
    from tether.node.rtc.filexfer import FileLimits, attach_file_channel

    limits = FileLimits(chunk_bytes=CHUNK, buffered_low_bytes=low)
    endpoint = attach_file_channel(channel, path.parent / "sender-ws", limits, serve=False)
    try:
        result = await endpoint.send_file(path, name="bench.bin")
    finally:
        await endpoint.aclose()
    if not result.ok:
        raise RuntimeError(f"the file transfer failed: {result.error}: {result.message}")
    return True


async def _receive(mode: str, workdir: Path, timeout_s: float, low: int) -> None:
    from aiortc import RTCPeerConnection, RTCSessionDescription

    from tether.node.rtc.filexfer import FileLimits, attach_file_channel

    pc = RTCPeerConnection(_loopback_only())
    stdin = await _stdin()
    endpoints: list[Any] = []

    @pc.on("datachannel")
    def on_channel(channel: Any) -> None:
        if mode == "file":
            limits = FileLimits(chunk_bytes=CHUNK, buffered_low_bytes=low)
            ep = attach_file_channel(channel, workdir, limits)
            endpoints.append(ep)
            return
        fp = open(workdir / "bench.bin", "wb")  # noqa: SIM115 - closed at the end marker

        def on_message(message: bytes | str) -> None:
            if message:
                fp.write(message)  # type: ignore[arg-type]
            else:
                fp.close()
                channel.send("done")

        channel.on("message", on_message)

    try:
        offer = await _line(stdin)
        await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], offer["type"]))
        await pc.setLocalDescription(await pc.createAnswer())
        _say({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type})
        cpu = time.process_time()
        # serve the channel until the driver, which has the sender's figure, closes stdin
        async with asyncio.timeout(timeout_s + SETUP_TIMEOUT_S):
            await stdin.read()
        _say({"cpu_s": time.process_time() - cpu})
    finally:
        for ep in endpoints:
            await ep.aclose()
        await pc.close()


# -- the driver (the bench process) -------------------------------------------------------

async def _one(root: Path, mode: str, source: Path, timeout_s: float,
               low: int) -> dict[str, Any]:
    work = root / f"media-{mode}-{time.monotonic_ns()}"
    work.mkdir(parents=True)
    common = ["--mode", mode, "--timeout", str(timeout_s), "--buffered-low", str(low)]
    receiver = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tether.tools.bench_media", "receive", "--dir", str(work),
        *common, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    sender = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tether.tools.bench_media", "send", "--path", str(source),
        *common, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    procs = (sender, receiver)
    try:
        assert sender.stdin and sender.stdout and receiver.stdin and receiver.stdout
        offer = await _line(sender.stdout)
        receiver.stdin.write((json.dumps(offer) + "\n").encode())
        answer = await _line(receiver.stdout)
        sender.stdin.write((json.dumps(answer) + "\n").encode())
        async with asyncio.timeout(timeout_s + SETUP_TIMEOUT_S):
            raw = await sender.stdout.readline()
        if not raw:
            raise RuntimeError(f"the {mode} sender exited without a figure")
        figure: dict[str, Any] = json.loads(raw)
        receiver.stdin.close()
        async with asyncio.timeout(SETUP_TIMEOUT_S):
            figure["receiver_cpu_s"] = (await _line(receiver.stdout))["cpu_s"]
        received = work / "bench.bin"
        if received.stat().st_size != figure["bytes"]:
            raise RuntimeError(f"the {mode} receiver holds {received.stat().st_size} bytes")
        return figure
    finally:
        for proc in procs:
            if proc.stdin is not None and not proc.stdin.is_closing():
                proc.stdin.close()
        for proc in procs:
            try:
                async with asyncio.timeout(15):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def run_media(root: Path, plan: MediaPlan, *,
                    buffered_low: int = BUFFERED_LOW) -> list[dict[str, Any]]:
    """The ``media`` rows: ``aiortc-raw`` and ``tether-file`` MB/s measured side by side,
    the ratio, and the rows other parts of the media plane will fill (null, with why)."""
    source = root / "media-source.bin"
    with open(source, "wb") as fp:  # noqa: ASYNC230 - setup, before anything is timed
        left = plan.file_bytes
        while left:
            block = os.urandom(min(left, 1 << 20))
            fp.write(block)
            left -= len(block)
    timeout_s = max(60.0, plan.file_bytes / 1e6)  # 1 MB/s at worst
    runs: dict[str, list[float]] = {"raw": [], "file": []}
    best: dict[str, dict[str, Any]] = {}
    for _ in range(plan.runs):
        for mode in ("raw", "file"):
            figure = await _one(root, mode, source, timeout_s, buffered_low)
            runs[mode].append(round(figure["mb_per_s"], 2))
            if figure["mb_per_s"] >= best.get(mode, {}).get("mb_per_s", 0.0):
                best[mode] = figure
    context = {"bytes": plan.file_bytes, "chunk_bytes": CHUNK,
               "buffered_low_bytes": buffered_low, "loop": "uvloop", "processes": 2}
    raw, tether = max(runs["raw"]), max(runs["file"])

    def cpu(mode: str) -> dict[str, float]:  # of the credited run: where the time went
        return {"sender_cpu_s": round(best[mode]["cpu_s"], 3),
                "receiver_cpu_s": round(best[mode]["receiver_cpu_s"], 3)}

    later = "not measured yet: "
    return [
        row("media", "aiortc-raw", "mb_per_s", raw, "MB/s", runs=runs["raw"], **context,
            **cpu("raw")),
        row("media", "tether-file", "mb_per_s", tether, "MB/s", runs=runs["file"],
            **context, **cpu("file")),
        row("media", "tether-file", "ratio_to_aiortc_raw", round(tether / raw, 3), "x",
            # the same ratio in CPU per byte (both ends, credited runs): what the load on a
            # shared box cannot move
            cpu_ratio=round(sum(cpu("raw").values()) / sum(cpu("file").values()), 3)),
        *await run_node_media(root, source, peers=plan.peers, cycles=plan.cycles),
        row("media", "tether", "first_frame_ms", None, "ms",
            note=later + "offer to the browser's first decoded test-pattern frame"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_media")
    parser.add_argument("role", choices=["send", "receive"])
    parser.add_argument("--mode", choices=["raw", "file"], required=True)
    parser.add_argument("--path", type=Path, help="send: the file")
    parser.add_argument("--dir", type=Path, help="receive: where the file lands")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--buffered-low", type=int, default=BUFFERED_LOW)
    args = parser.parse_args(argv)
    import uvloop

    if args.role == "send":
        uvloop.run(_send(args.mode, args.path, args.path.stat().st_size, args.timeout,
                         args.buffered_low))
    else:
        uvloop.run(_receive(args.mode, args.dir, args.timeout, args.buffered_low))
    return 0


if __name__ == "__main__":
    sys.exit(main())
