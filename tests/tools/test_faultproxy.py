"""The fault proxy's faults, each with a real WebSocket peer (the ``websockets`` library) on
the far side, switched while connections are live; and a real node through a proxy in another
process, controlled over its control port, that reconnects after a duplicated segment."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, ConnectionClosedError

from tether.tools.faultproxy import FaultProxy, Faults, ProxyControl

from ..helpers import ControllerProc, NodeProc, Proc, wait_until


async def echo(ws: ServerConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for message in ws:
            await ws.send(message)


async def announce_then_close(ws: ServerConnection) -> None:
    await ws.send("x" * 1000)
    await ws.close()


@contextlib.asynccontextmanager
async def proxied(handler: Callable[[ServerConnection], object] = echo
                  ) -> AsyncIterator[tuple[FaultProxy, int]]:
    """A websockets server running ``handler`` and a fault proxy in front of it."""
    async with serve(handler, "127.0.0.1", 0) as server:  # type: ignore[arg-type]
        port = next(iter(server.sockets)).getsockname()[1]
        proxy = FaultProxy("127.0.0.1", port)
        proxy_port = await proxy.serve()
        try:
            yield proxy, proxy_port
        finally:
            await proxy.close()


def ws_url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/"


async def roundtrip(ws: ClientConnection, message: str) -> str:
    await ws.send(message)
    return str(await asyncio.wait_for(ws.recv(), 10))


async def test_latency_with_jitter_holds_each_chunk_and_keeps_the_order() -> None:
    async with proxied() as (proxy, port), connect(ws_url(port)) as ws:
        assert await roundtrip(ws, "warm") == "warm"
        proxy.set("down", latency_s=0.3, jitter_s=0.1)
        t0 = time.monotonic()
        for i in range(5):
            await ws.send(f"m{i}")
        got = [await asyncio.wait_for(ws.recv(), 10) for _ in range(5)]
        assert got == [f"m{i}" for i in range(5)]
        assert time.monotonic() - t0 >= 0.2  # at least latency - jitter


async def test_a_bandwidth_cap_paces_the_bytes() -> None:
    async with proxied() as (proxy, port), connect(ws_url(port), max_size=None) as ws:
        proxy.set("down", bandwidth_bps=5000)
        t0 = time.monotonic()
        payload = os.urandom(10_000)  # incompressible: permessage-deflate leaves it 10 kB
        await ws.send(payload)
        assert await asyncio.wait_for(ws.recv(), 10) == payload
        assert time.monotonic() - t0 >= 1.5  # 10 kB at 5 kB/s from an empty bucket


async def test_the_slicer_delivers_the_same_bytes_in_one_byte_writes() -> None:
    async with proxied() as (proxy, port):
        proxy.set("both", slice=True)
        async with connect(ws_url(port)) as ws:
            for message in ("hello", "z" * 300, "bye"):
                assert await roundtrip(ws, message) == message
        for direction in (proxy.stats.up, proxy.stats.down):
            assert direction.bytes > 300
            assert direction.writes == direction.bytes


async def test_a_cut_closes_after_exactly_n_bytes() -> None:
    async with proxied(announce_then_close) as (proxy, port):
        proxy.set("down", cut_after=200)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     b"Sec-WebSocket-Version: 13\r\n\r\n")
        received = await asyncio.wait_for(reader.read(), 10)  # until EOF
        writer.close()
        assert received.startswith(b"HTTP/1.1 101")
        assert len(received) == 200  # the handshake and the start of the 1000-byte frame
        assert proxy.stats.down.cuts == 1


async def test_a_reset_is_an_rst_to_the_client_and_a_closed_connection_to_the_peer() -> None:
    async with proxied() as (proxy, port), connect(ws_url(port)) as ws:
        assert await roundtrip(ws, "before") == "before"
        assert proxy.reset("down") == 1
        with pytest.raises(ConnectionClosedError) as caught:
            await asyncio.wait_for(ws.recv(), 10)
        assert caught.value.rcvd is None  # no close frame: the stream was aborted
        assert isinstance(caught.value.__cause__, ConnectionResetError | type(None))
    async with proxied() as (proxy, port):
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        with raw:
            await asyncio.get_running_loop().run_in_executor(None, wait_connected, proxy)
            proxy.reset("down")
            with pytest.raises(ConnectionResetError):  # read off the loop, which sends it
                await asyncio.get_running_loop().run_in_executor(None, read_to_end, raw)


def read_to_end(sock: socket.socket) -> None:
    while sock.recv(1024):
        pass


def wait_connected(proxy: FaultProxy) -> None:
    wait_until(lambda: proxy.snapshot()["connections"] == 1, what="the proxied connection")


async def test_a_blackhole_accepts_and_never_answers_until_healed() -> None:
    async with proxied() as (proxy, port):
        proxy.set("both", blackhole=True)
        with pytest.raises(TimeoutError):
            async with connect(ws_url(port), open_timeout=1):
                pass
        proxy.heal()
        async with connect(ws_url(port)) as ws:
            assert await roundtrip(ws, "after") == "after"


async def test_a_blackhole_in_one_direction_swallows_only_that_direction() -> None:
    async with proxied() as (proxy, port), connect(ws_url(port)) as ws:
        proxy.set("down", blackhole=True)
        await ws.send("lost")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 1)
        assert proxy.stats.down.dropped_bytes > 0 and proxy.stats.up.bytes > 0
        proxy.clear("down")  # TCP never resumes a stream with a hole: the connection dies
        with pytest.raises(ConnectionClosedError):
            await asyncio.wait_for(ws.recv(), 10)
        assert proxy.stats.resets == 1


async def test_lifting_a_blackhole_that_lost_nothing_keeps_the_connection() -> None:
    async with proxied() as (proxy, port), connect(ws_url(port)) as ws:
        proxy.set("down", blackhole=True)
        proxy.clear("down")
        assert await roundtrip(ws, "still here") == "still here"
        assert proxy.stats.resets == 0


async def test_a_slow_close_holds_the_close_before_passing_it_on() -> None:
    async with proxied(announce_then_close) as (proxy, port):
        proxy.set("down", slow_close_s=1.0)
        async with connect(ws_url(port)) as ws:
            assert await asyncio.wait_for(ws.recv(), 10) == "x" * 1000
            t0 = time.monotonic()
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            await asyncio.wait_for(ws.wait_closed(), 15)
            assert time.monotonic() - t0 >= 0.9
            assert ws.close_code == 1000  # still a clean close, only a late one


async def test_a_duplicated_earlier_segment_makes_the_receiver_fail_with_a_protocol_error(
        ) -> None:
    async with proxied() as (proxy, port), connect(ws_url(port)) as ws:
        assert await roundtrip(ws, "one") == "one"
        proxy.set("down", duplicate=True)  # the handshake's bytes again, as a frame
        await ws.send("two")
        with pytest.raises(ConnectionClosedError) as caught:
            await asyncio.wait_for(ws.recv(), 10)
        assert caught.value.sent is not None and caught.value.sent.code == 1002
        assert proxy.stats.down.duplicates == 1


async def test_the_server_side_fails_too_when_the_upstream_direction_is_duplicated() -> None:
    closed: list[int | None] = []

    async def record(ws: ServerConnection) -> None:
        await echo(ws)
        sent = ws.protocol.close_sent  # what the server said when it failed the connection
        closed.append(sent.code if sent is not None else None)

    async with proxied(record) as (proxy, port), connect(ws_url(port)) as ws:
        assert await roundtrip(ws, "one") == "one"
        proxy.set("up", duplicate=True)
        await ws.send("two")
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        await asyncio.wait_for(ws.wait_closed(), 15)
    assert closed == [1002]


def test_faults_refuse_bad_values_and_unknown_names() -> None:
    with pytest.raises(ValueError):
        Faults(latency_s=-1)
    with pytest.raises(ValueError):
        Faults(cut_after=-5)
    with pytest.raises(ValueError):
        Faults(slice="yes")  # type: ignore[arg-type]
    proxy = FaultProxy("127.0.0.1", 1)
    with pytest.raises(ValueError):
        proxy.set("sideways", latency_s=1)
    with pytest.raises(ValueError):
        proxy.set("up", teleport=True)
    assert proxy.control({"op": "set", "direction": "up", "latency_s": "slow"})["ok"] is False
    assert proxy.control({"op": "explode"})["ok"] is False
    assert proxy.faults["up"] == Faults()


def test_a_node_behind_a_proxy_in_another_process_reconnects_after_a_duplicated_segment(
        controller: ControllerProc, tmp_path: Path) -> None:
    port_file, control_file = tmp_path / "proxy.port", tmp_path / "proxy.control"
    proxy = Proc([sys.executable, "-m", "tether.tools.faultproxy", "--upstream",
                  f"127.0.0.1:{controller.port}", "--port-file", str(port_file),
                  "--control-port-file", str(control_file)], tmp_path / "proxy.log")
    proxy.start()
    node = NodeProc(tmp_path / "n-dup", "n-dup")
    try:
        port = wait_until(lambda: port_file.exists() and port_file.read_text().strip(),
                          what="the fault proxy")
        control = ProxyControl(int(control_file.read_text()))
        node.argv += ["--controller-url", f"http://127.0.0.1:{port}"]
        node.enroll(controller)
        node.start()
        api = controller.api()
        wait_until(lambda: api.liveness("n-dup") == "online", what="n-dup online")
        assert control.stats()["stats"]["connections"] == 1
        control.set("down", duplicate=True)
        # The node's next read is the replayed handshake: its link fails (1002) and redials.
        api.submit("n-dup", "diag.ping")
        wait_until(lambda: control.stats()["stats"]["down"]["duplicates"] == 1,
                   what="the duplicate to be written")
        control.set("down", duplicate=False)
        wait_until(lambda: control.stats()["stats"]["connections"] >= 2, timeout_s=60,
                   what="n-dup to dial again")
        wait_until(lambda: api.liveness("n-dup") == "online", timeout_s=60,
                   what="n-dup back online")
    finally:
        node.cleanup()
        proxy.terminate()
