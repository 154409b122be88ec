"""The unauthenticated flood (issue 11, item 5): silent edge WebSockets that took the
challenge and never send a hello, and TCP connections that sent half an HTTP header; then
how long a real node's signed hello takes to be welcomed while they are all open.

The same helpers drive the end-to-end test (``tests/e2e/test_flood.py``) and the
``hello_under_flood`` benchmark rows (:func:`run_flood`).
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgpack
import psutil
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tether.protocol.codec import MSGPACK_SUBPROTOCOL, decode_msgpack, encode_msgpack
from tether.protocol.frames import Frame
from tether.protocol.signing import generate_private_key, public_key_raw, sign_hello

from .bench_util import ControllerProcess, row

HALF_HEADER = b"GET /api/v1/health HTTP/1.1\r\nHost: tether\r\nX-Slow: "
DIAL_CONCURRENCY = 100
DIAL_TRIES = 5


@dataclass
class Flood:
    """Connections held open against one controller; :meth:`close` ends them all."""

    silent: list[ClientConnection] = field(default_factory=list)
    half: list[asyncio.StreamWriter] = field(default_factory=list)
    half_readers: list[asyncio.StreamReader] = field(default_factory=list)

    async def close(self) -> None:
        for writer in self.half:
            writer.transport.abort()
        for ws in self.silent:
            ws.transport.abort()
        self.silent.clear()
        self.half.clear()
        self.half_readers.clear()

    def silent_open(self) -> int:
        """Silent sockets the controller has not closed."""
        return sum(1 for ws in self.silent if ws.close_code is None)


def edge_url(url: str) -> str:
    return url.replace("http", "ws", 1) + "/v1/edge/connect"


async def open_silent(url: str, count: int, flood: Flood, *, timeout_s: float = 120) -> None:
    """``count`` edge WebSockets, each of which has received its challenge and says nothing
    more."""
    gate = asyncio.Semaphore(DIAL_CONCURRENCY)

    async def one() -> None:
        async with gate:
            for attempt in range(DIAL_TRIES):
                try:
                    ws = await connect(edge_url(url),
                                       subprotocols=[MSGPACK_SUBPROTOCOL],  # type: ignore[list-item]
                                       compression=None, ping_interval=None, open_timeout=60,
                                       close_timeout=1, max_size=1 << 20)
                    break
                except InvalidStatus as exc:
                    # 408: this request's header deadline passed before the controller read
                    # it (a short deadline on a busy machine); the flood needs the socket
                    if exc.response.status_code != 408 or attempt == DIAL_TRIES - 1:
                        raise
            flood.silent.append(ws)
            first = msgpack.unpackb(await ws.recv())
            assert first["t"] == "edge.challenge", first

    async with asyncio.timeout(timeout_s), asyncio.TaskGroup() as tg:
        for _ in range(count):
            tg.create_task(one())


async def open_half_headers(host: str, port: int, count: int, flood: Flood, *,
                            timeout_s: float = 120) -> None:
    """``count`` TCP connections that send half an HTTP request header and stall."""
    gate = asyncio.Semaphore(DIAL_CONCURRENCY)

    async def one() -> None:
        async with gate:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(HALF_HEADER)
            await writer.drain()
            flood.half.append(writer)
            flood.half_readers.append(reader)

    async with asyncio.timeout(timeout_s), asyncio.TaskGroup() as tg:
        for _ in range(count):
            tg.create_task(one())


async def enroll_key(url: str, token: str, node_id: str) -> Any:
    """A fresh Ed25519 key enrolled as ``node_id`` through the API (a one-use join token)."""
    key = generate_private_key()
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        resp = await http.post("/api/v1/join-tokens", json={"uses": 1},
                               headers={"Authorization": f"Bearer {token}"})
        resp.raise_for_status()
        resp = await http.post("/v1/edge/enroll", json={
            "join_token": resp.json()["token"], "node_id": node_id,
            "public_key": base64.urlsafe_b64encode(public_key_raw(key)).rstrip(b"=").decode()})
        resp.raise_for_status()
    return key


async def timed_welcome(url: str, node_id: str, key: Any, *,
                        timeout_s: float = 30) -> tuple[float, Frame]:
    """Dial, answer the challenge with a signed hello, and wait for the answer: seconds from
    the dial to the ``edge.welcome`` (or the frame that came instead) and that frame."""
    t0 = time.perf_counter()
    async with asyncio.timeout(timeout_s):
        async with connect(edge_url(url), subprotocols=[MSGPACK_SUBPROTOCOL],  # type: ignore[list-item]
                           compression=None, ping_interval=None, open_timeout=timeout_s,
                           close_timeout=1, max_size=1 << 20) as ws:
            challenge = decode_msgpack(bytes(await ws.recv()))  # type: ignore[arg-type]
            nonce, cid = bytes(challenge.b["nonce"]), str(challenge.b["controller_id"])
            hello = Frame(t="edge.hello", b={
                "node_id": node_id, "protocol": 1, "sig": sign_hello(key, nonce, cid, node_id),
                "epoch": 7, "acks": {"cmd": 0}, "session_id": None,
                "runtime": {"state": "attached", "version": "flood-1"},
                "sidecar": {"version": "flood-1", "pid": 1}, "capabilities": [], "labels": {}})
            await ws.send(encode_msgpack(hello, max_frame_bytes=1 << 20))
            answer = decode_msgpack(bytes(await ws.recv()))  # type: ignore[arg-type]
            seconds = time.perf_counter() - t0
    return seconds, answer


async def run_flood(root: Path, *, silent: int, half: int) -> list[dict[str, Any]]:
    """The ``hello_under_flood`` rows: a controller of its own, ``silent`` pre-hello
    WebSockets and ``half`` half-header sockets open (their deadlines set long, so all are
    still open when the node dials), then one enrolled node's dial-to-welcome time and the
    controller's RSS at that moment."""
    extra = ["--handshake-timeout-s", "300", "--header-timeout-s", "300"]
    async with ControllerProcess(root, "flood", "fsync", extra=extra) as ctl:
        assert ctl.proc is not None
        proc = psutil.Process(ctl.proc.pid)
        key = await enroll_key(ctl.url, ctl.token, "flood-node")
        rss0 = proc.memory_info().rss
        flood = Flood()
        try:
            await open_silent(ctl.url, silent, flood)
            port = int(ctl.url.rsplit(":", 1)[1])
            await open_half_headers("127.0.0.1", port, half, flood)
            seconds, answer = await timed_welcome(ctl.url, "flood-node", key)
            rss = proc.memory_info().rss
            still_open = flood.silent_open()
        finally:
            await flood.close()
    welcomed = answer.t == "edge.welcome"
    ctx = {"silent_prehello": silent, "half_headers": half, "silent_still_open": still_open}
    return [
        row("hello_under_flood", "tether", "seconds_to_welcome",
            round(seconds, 4) if welcomed else None, "s", **ctx,
            **({} if welcomed else {"note": f"unavailable: the node got {answer.t!r}"})),
        row("hello_under_flood", "tether", "rss_mib", round(rss / 2**20, 1), "MiB",
            rss_mib_before=round(rss0 / 2**20, 1), **ctx),
    ]
