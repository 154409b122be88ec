"""The io endpoints (controller/api/io.py) against a raw edge client playing the node: auth,
the shell's command, flow control and ordering both ways, and hostile input from the client
(bad sizes, oversized data, input past its credit, unknown frames) and from the node
(out-of-order and oversized output, output for a command that has no stream)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tether.protocol.codec import JSON_SUBPROTOCOL, decode_json
from tether.protocol.frames import (
    MAX_IO_DATA,
    CmdDeliver,
    Frame,
    IoAck,
    IoOutput,
    IoResize,
    IoSignal,
    as_bytes,
)

from ..helpers import ControllerProc
from .conftest import NET_TIMEOUT_S, Edge, EdgeClient, Identity


async def dial(controller: ControllerProc, path: str, *, token: str | None = None,
               header: bool = True) -> ClientConnection:
    headers = {"Authorization": f"Bearer {token or controller.token}"} if header else {}
    url = controller.url.replace("http", "ws", 1) + path
    return await connect(url, subprotocols=[JSON_SUBPROTOCOL],  # type: ignore[list-item]
                         additional_headers=headers, open_timeout=NET_TIMEOUT_S,
                         close_timeout=2, max_size=None)


async def send(ws: ClientConnection, t: str, **body: Any) -> None:
    await ws.send(json.dumps({"t": t, "b": body}))


async def recv(ws: ClientConnection, t: str) -> Frame:
    """The next frame of type ``t`` (keepalive pings and credit frames skipped unless
    asked for)."""
    while True:
        frame = decode_json(await _recv_text(ws))
        if frame.t == t:
            return frame
        if frame.t not in ("ping", "credit", "welcome", "signalled"):
            raise AssertionError(f"expected {t}, got {frame}")


async def _recv_text(ws: ClientConnection) -> str:
    async with asyncio.timeout(NET_TIMEOUT_S):
        data = await ws.recv()
    assert isinstance(data, str)
    return data


async def node_recv(node: EdgeClient, t: str) -> Frame:
    while True:
        frame = await node.recv()
        if frame.t == t:
            return frame


@pytest.fixture
async def node(edge: Edge, enroll: Callable[..., Awaitable[Identity]]
               ) -> AsyncIterator[tuple[Identity, EdgeClient]]:
    ident = await enroll()
    client = await edge.session(ident)
    yield ident, client


async def open_shell(controller: ControllerProc, node: tuple[Identity, EdgeClient]
                     ) -> tuple[ClientConnection, EdgeClient, str]:
    ident, client = node
    ws = await dial(controller, f"/api/v1/nodes/{ident.node_id}/shell")
    await send(ws, "open", argv=["sh"], rows=24, cols=80)
    opened = await recv(ws, "opened")
    command_id = str(opened.b["command_id"])
    deliver = CmdDeliver.parse(await node_recv(client, "cmd.deliver"))
    assert (deliver.command_id, deliver.kind, deliver.args["rows"]) == (command_id, "shell", 24)
    # the node's end starts: its window, then it waits for the client side's first ack
    await client.send(IoAck(command_id=command_id, seq=0, window=1 << 16).frame())
    hello = IoAck.parse(await node_recv(client, "io.ack"))
    assert (hello.command_id, hello.seq) == (command_id, 0)
    return ws, client, command_id


async def test_the_endpoint_needs_an_operator_token_in_the_header_or_the_hello(
        controller: ControllerProc, node: tuple[Identity, EdgeClient]) -> None:
    ident, _ = node
    path = f"/api/v1/nodes/{ident.node_id}/shell"
    header_ws = await dial(controller, path, token="tok_nope")
    hello_ws = await dial(controller, path, header=False)
    await send(hello_ws, "hello", token="tok_nope")
    for ws in (header_ws, hello_ws):
        assert (await recv(ws, "error")).b["code"] == "unauthorized"
        with pytest.raises(ConnectionClosed) as info:
            await recv(ws, "welcome")
        assert info.value.rcvd is not None and info.value.rcvd.code == 4401
    ws = await dial(controller, path, header=False)
    await send(ws, "hello", token=controller.token)
    assert (await recv(ws, "welcome")).b["actor"]
    await ws.close()


async def test_a_shell_on_an_offline_node_or_an_unknown_one_is_refused_with_a_reason(
        controller: ControllerProc, enroll: Callable[..., Awaitable[Identity]]) -> None:
    ident = await enroll()
    for node_id, code in ((ident.node_id, "node_offline"), ("n-nobody", "not_found")):
        ws = await dial(controller, f"/api/v1/nodes/{node_id}/shell")
        await send(ws, "open", rows=24, cols=80)
        error = await recv(ws, "error")
        assert error.b["code"] == code
        with pytest.raises(ConnectionClosed):
            await recv(ws, "opened")


async def test_bad_open_values_close_before_any_command_is_queued(
        controller: ControllerProc, node: tuple[Identity, EdgeClient],
        api: httpx.AsyncClient) -> None:
    ident, _ = node
    for bad in ({"rows": 0, "cols": 80}, {"rows": 24, "cols": 70000}, {"argv": []},
                {"argv": ["sh\x00"]}, {"term": "x" * 65}, {"rows": "24"}):
        ws = await dial(controller, f"/api/v1/nodes/{ident.node_id}/shell")
        await send(ws, "open", **bad)
        with pytest.raises(ConnectionClosed) as info:
            await recv(ws, "opened")
        assert info.value.rcvd is not None and info.value.rcvd.code == 4400, bad
    listed = (await api.get("/api/v1/commands", params={"node_id": ident.node_id})).json()
    assert listed["items"] == []


async def test_resize_and_signal_reach_the_node_and_bad_values_are_refused_in_place(
        controller: ControllerProc, node: tuple[Identity, EdgeClient]) -> None:
    ws, client, command_id = await open_shell(controller, node)
    for bad in ({"rows": 0, "cols": 80}, {"rows": 24, "cols": -1}, {"rows": 5000, "cols": 80},
                {"rows": 2.5, "cols": 80}, {"rows": "24", "cols": "80"}):
        await send(ws, "resize", **bad)
        assert (await recv(ws, "error")).b["code"] == "bad_frame"
    await send(ws, "signal", signal="STOP")
    assert (await recv(ws, "error")).b["code"] == "bad_frame"
    await send(ws, "nonsense")
    assert (await recv(ws, "error")).b["code"] == "unknown_type"
    await send(ws, "resize", rows=33, cols=111)  # the connection stayed open
    resize = IoResize.parse(await node_recv(client, "io.resize"))
    assert (resize.command_id, resize.rows, resize.cols) == (command_id, 33, 111)
    await send(ws, "signal", signal="INT")
    sig = IoSignal.parse(await node_recv(client, "io.signal"))
    assert (sig.command_id, sig.signal) == (command_id, "INT")
    assert (await recv(ws, "signalled")).b == {"signal": "INT", "delivered": True}


async def test_output_is_written_in_order_once_and_a_gap_waits_for_the_resend(
        controller: ControllerProc, node: tuple[Identity, EdgeClient]) -> None:
    ws, client, command_id = await open_shell(controller, node)
    out = [IoOutput(command_id=command_id, seq=n, data=f"<{n}>".encode()).frame()
           for n in (1, 2, 3)]
    await client.send(out[1])  # seq 2 first: a gap, dropped; the ack still says 0
    assert IoAck.parse(await node_recv(client, "io.ack")).seq == 0
    await client.send(out[0])
    assert as_bytes((await recv(ws, "output")).b["data"], "data") == b"<1>"
    assert IoAck.parse(await node_recv(client, "io.ack")).seq == 1
    await client.send(out[0])  # a duplicate: acked again, not written again
    assert IoAck.parse(await node_recv(client, "io.ack")).seq == 1
    await client.send(out[1])
    await client.send(out[2])
    assert as_bytes((await recv(ws, "output")).b["data"], "data") == b"<2>"
    assert as_bytes((await recv(ws, "output")).b["data"], "data") == b"<3>"


async def test_hostile_output_from_the_node_is_refused_and_foreign_streams_reach_nobody(
        controller: ControllerProc, node: tuple[Identity, EdgeClient]) -> None:
    ws, client, command_id = await open_shell(controller, node)
    await client.send(Frame(t="io.output", id="big", b={
        "command_id": command_id, "seq": 1, "data": b"x" * (MAX_IO_DATA + 1)}))
    error = await node_recv(client, "error")
    assert (error.re, error.b["code"]) == ("big", "bad_frame")
    await client.send(Frame(t="io.output", id="zero", b={
        "command_id": command_id, "seq": 0, "data": b"x"}))
    assert (await node_recv(client, "error")).re == "zero"
    # a stream of a command this client does not follow, and one that does not exist
    await client.send(IoOutput(command_id="c_other", seq=1, data=b"nope").frame())
    await client.send(IoOutput(command_id=command_id, seq=1, data=b"yes").frame())
    assert as_bytes((await recv(ws, "output")).b["data"], "data") == b"yes"


async def test_input_is_sequenced_in_order_and_nothing_may_follow_its_eof(
        controller: ControllerProc, node: tuple[Identity, EdgeClient]) -> None:
    ws, client, command_id = await open_shell(controller, node)
    await send(ws, "input", data="aGk")  # "hi" as base64url
    first = await node_recv(client, "io.input")
    assert (first.b["command_id"], first.b["seq"], first.b["data"], first.b["eof"]) == (
        command_id, 1, b"hi", False)
    await send(ws, "input", data="eA" * 10, eof=False)
    await send(ws, "input", data="", eof=True)
    seconds = [await node_recv(client, "io.input") for _ in range(2)]
    assert [(f.b["seq"], f.b["eof"]) for f in seconds] == [(2, False), (3, True)]
    await send(ws, "input", data="aGk")  # nothing may follow eof
    assert (await recv(ws, "error")).b["code"] == "bad_frame"


async def test_input_over_the_frame_size_or_the_credit_is_refused(
        controller: ControllerProc, node: tuple[Identity, EdgeClient]) -> None:
    ws, _, _ = await open_shell(controller, node)
    big = base64.urlsafe_b64encode(b"x" * (MAX_IO_DATA + 1)).decode().rstrip("=")
    await send(ws, "input", data=big)
    assert (await recv(ws, "error")).b["code"] == "bad_frame"
    chunk = base64.urlsafe_b64encode(b"x" * MAX_IO_DATA).decode().rstrip("=")
    with pytest.raises(ConnectionClosed) as info:
        for _ in range(6):  # 384 KiB: past the 256 KiB credit, while the node acks nothing
            await send(ws, "input", data=chunk)
        await recv(ws, "never")
    assert info.value.rcvd is not None and info.value.rcvd.code == 4429


async def test_a_client_that_goes_away_hangs_the_shell_up(
        controller: ControllerProc, node: tuple[Identity, EdgeClient]) -> None:
    ws, client, command_id = await open_shell(controller, node)
    await ws.close()
    cancel = CmdDeliver.parse(await node_recv(client, "cmd.deliver"))
    assert (cancel.kind, cancel.args) == ("cancel", {"command_id": command_id})


async def test_attaching_to_an_unknown_command_says_not_found(
        controller: ControllerProc) -> None:
    ws = await dial(controller, "/api/v1/commands/c_nope/io")
    assert (await recv(ws, "error")).b["code"] == "not_found"
