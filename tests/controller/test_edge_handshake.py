"""The edge handshake on /v1/edge/connect (PROTOCOL.md §1, §4, §7), with a raw msgpack client
against a real controller process."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import msgpack

from tether.protocol.frames import Frame
from tether.protocol.signing import generate_private_key

from ..helpers import FAST, ControllerProc
from .conftest import Edge, Identity

MAX_FRAME = 1 << 20

Enroll = Callable[..., Awaitable[Identity]]


async def test_an_upgrade_offering_no_sub_protocol_is_closed_with_4426(edge: Edge) -> None:
    client = await edge.open(subprotocols=[], read_challenge=False)
    closed = await client.expect_close()
    assert closed.code == 4426
    assert closed.frames == []
    # offering only sub-protocols the endpoint does not speak is the same as offering none
    other = await edge.open(subprotocols=["tether.v2.msgpack", "tether.v1.json"],
                            read_challenge=False)
    assert (await other.expect_close()).code == 4426


async def test_the_challenge_arrives_first_with_a_32_byte_nonce_and_the_controller_id(
        edge: Edge, anon: httpx.AsyncClient) -> None:
    before_ms = int(time.time() * 1000)
    client = await edge.open(read_challenge=False)
    assert client.ws.subprotocol == "tether.v1.msgpack"
    frame = await client.recv(timeout_s=1.0)  # "within 1 s of accept"
    after_ms = int(time.time() * 1000)
    assert frame.t == "edge.challenge"
    body = frame.b
    assert isinstance(body["nonce"], bytes) and len(body["nonce"]) == 32
    assert body["protocols"] == [1]
    assert isinstance(body["time_ms"], int)
    assert before_ms - 5000 <= body["time_ms"] <= after_ms + 5000
    health = (await anon.get("/api/v1/health")).json()
    assert body["controller_id"] == health["controller_id"]
    assert isinstance(body["controller_id"], str) and body["controller_id"]
    another = await edge.open()
    assert another.nonce != body["nonce"]  # a nonce is good for one connection


async def test_a_frame_other_than_hello_first_is_closed_with_4400(edge: Edge) -> None:
    client = await edge.open()
    await client.send(Frame(t="edge.heartbeat", id="hb1", b={"uptime_s": 1}))
    closed = await client.expect_close()
    assert closed.code == 4400
    assert closed.frames == []


async def test_undecodable_bytes_are_closed_with_4400(edge: Edge) -> None:
    client = await edge.open()
    await client.send_raw(b"\xc1\xc1\xc1")  # 0xc1 is never used in msgpack
    assert (await client.expect_close()).code == 4400


async def test_a_msgpack_value_that_is_not_a_map_is_closed_with_4400(edge: Edge) -> None:
    client = await edge.open()
    await client.send_raw(msgpack.packb(["edge.hello"]))
    assert (await client.expect_close()).code == 4400


async def test_a_msgpack_ext_type_is_refused_with_4400(edge: Edge, enroll: Enroll) -> None:
    ident = await enroll()
    client = await edge.open()
    hello = client.hello(ident).to_wire()
    hello["b"]["labels"] = {"x": msgpack.ExtType(5, b"boom")}
    await client.send_raw(msgpack.packb(hello, use_bin_type=True))
    assert (await client.expect_close()).code == 4400


async def test_a_text_frame_is_closed_with_4400(edge: Edge) -> None:
    client = await edge.open()
    await client.send_raw('{"t": "edge.hello"}')
    assert (await client.expect_close()).code == 4400


async def test_a_hello_with_a_malformed_body_is_closed_with_4400(
        edge: Edge, enroll: Enroll) -> None:
    ident = await enroll()
    client = await edge.open()
    hello = client.hello(ident)
    body = {k: v for k, v in hello.b.items() if k != "sig"}
    await client.send(Frame(t="edge.hello", b=body))
    assert (await client.expect_close()).code == 4400


async def test_a_message_over_1_mib_is_closed_with_1009(edge: Edge, enroll: Enroll) -> None:
    ident = await enroll()
    client = await edge.session(ident)
    big = msgpack.packb({"t": "node.resources", "b": {"pad": bytes(MAX_FRAME)}},
                        use_bin_type=True)
    assert len(big) > MAX_FRAME
    await client.send_raw(big)
    assert (await client.expect_close()).code == 1009


async def test_a_message_over_1_mib_before_the_hello_is_closed_with_1009(edge: Edge) -> None:
    client = await edge.open()
    await client.send_raw(bytes(MAX_FRAME + 1))
    assert (await client.expect_close()).code == 1009


async def test_a_message_of_exactly_1_mib_is_accepted(edge: Edge, enroll: Enroll) -> None:
    ident = await enroll()
    client = await edge.session(ident)
    wire = {"t": "x.padding", "id": "pad-1", "b": {"pad": b""}}
    overhead = len(msgpack.packb(wire, use_bin_type=True))
    # bin32 header is 4 bytes longer than the bin8 header of the empty payload
    wire["b"]["pad"] = bytes(MAX_FRAME - overhead - 3)
    data = msgpack.packb(wire, use_bin_type=True)
    assert len(data) == MAX_FRAME
    await client.send_raw(data)
    err = await client.recv_type("error")
    assert err.re == "pad-1"
    assert err.b["code"] == "unknown_type"
    await client.heartbeat()


async def test_a_hello_for_an_unknown_node_is_closed_with_4401(edge: Edge) -> None:
    client = await edge.open()
    ghost = Identity("ghost-node", generate_private_key())
    await client.send(client.hello(ghost))
    closed = await client.expect_close()
    assert closed.code == 4401
    assert closed.frames == []


async def test_a_hello_with_an_invalid_node_id_is_closed_with_4401(edge: Edge) -> None:
    client = await edge.open()
    await client.send(client.hello(Identity("Not_Valid", generate_private_key())))
    assert (await client.expect_close()).code == 4401


async def test_a_hello_signed_over_another_nonce_is_closed_with_4401(
        edge: Edge, enroll: Enroll) -> None:
    ident = await enroll()
    client = await edge.open()
    await client.send(client.hello(ident, sign_nonce=os.urandom(32)))
    closed = await client.expect_close()
    assert closed.code == 4401
    assert closed.frames == []


async def test_a_hello_signed_by_another_key_or_for_another_controller_is_closed_with_4401(
        edge: Edge, enroll: Enroll) -> None:
    ident = await enroll()
    client = await edge.open()
    await client.send(client.hello(Identity(ident.node_id, generate_private_key())))
    assert (await client.expect_close()).code == 4401
    other = await edge.open()
    await other.send(other.hello(ident, sign_controller_id="ctl-someone-else"))
    assert (await other.expect_close()).code == 4401


async def test_a_hello_captured_on_one_connection_is_refused_on_another_with_4401(
        edge: Edge, enroll: Enroll) -> None:
    ident = await enroll()
    first = await edge.open()
    captured = first.hello(ident)
    second = await edge.open()
    await second.send(captured)
    assert (await second.expect_close()).code == 4401


async def test_a_hello_with_protocol_2_is_closed_with_4426(edge: Edge, enroll: Enroll) -> None:
    ident = await enroll()
    client = await edge.open()
    await client.send(client.hello(ident, protocol=2))
    closed = await client.expect_close()
    assert closed.code == 4426
    assert closed.frames == []


async def test_no_hello_within_the_handshake_timeout_is_closed_with_4408(
        tmp_path: Path) -> None:
    ctl = ControllerProc(tmp_path / "ctl-hs", extra=["--handshake-timeout-s", "0.5", *FAST])
    ctl.start()
    edge = Edge(ctl.url)
    try:
        started = time.monotonic()
        client = await edge.open()
        closed = await client.expect_close(timeout_s=5)
        assert closed.code == 4408
        assert 0.3 <= time.monotonic() - started < 4
    finally:
        await edge.aclose()
        ctl.terminate()


async def test_a_valid_hello_is_answered_with_a_welcome(edge: Edge, enroll: Enroll) -> None:
    ident = await enroll()
    client = await edge.open()
    await client.send(client.hello(ident))
    welcome = await client.recv()
    assert welcome.t == "edge.welcome"
    b = welcome.b
    assert isinstance(b["session_id"], str) and b["session_id"]
    assert b["resumed"] is False
    assert isinstance(b["epoch"], int) and not isinstance(b["epoch"], bool)
    assert b["acks"] == {"evt": 0, "cmd": 0}  # cmd: the cursor it resends after
    assert b["heartbeat_s"] == 0.5  # the FAST thresholds of the controller fixture
    assert b["stale_after_s"] == 3
    assert b["offline_after_s"] == 6
    assert b["max_frame"] == MAX_FRAME


async def test_a_reconnect_with_the_previous_session_id_is_resumed(
        edge: Edge, enroll: Enroll) -> None:
    ident = await enroll()
    first = await edge.session(ident)
    assert first.welcome is not None
    old_sid = first.welcome.b["session_id"]
    await first.close()
    second = await edge.session(ident, session_id=old_sid)
    assert second.welcome is not None
    assert second.welcome.b["resumed"] is True
    assert second.welcome.b["session_id"] != old_sid
    assert second.welcome.b["epoch"] == first.welcome.b["epoch"]


async def test_unknown_envelope_and_body_keys_are_ignored(edge: Edge, enroll: Enroll) -> None:
    ident = await enroll()
    client = await edge.open()
    hello = client.hello(ident).to_wire()
    hello["zz_future"] = {"x": 1}
    hello["b"]["future_field"] = [1, 2, 3]
    await client.send_raw(msgpack.packb(hello, use_bin_type=True))
    welcome = await client.recv()
    assert welcome.t == "edge.welcome", welcome
    await client.send_raw(msgpack.packb({"t": "edge.heartbeat", "id": "hb-x", "extra": True,
                                         "b": {"uptime_s": 1, "later": "yes"}},
                                        use_bin_type=True))
    ack = await client.recv_type("edge.heartbeat_ack")
    assert ack.re == "hb-x"


async def test_a_reconnect_with_an_unknown_session_id_is_not_resumed(
        edge: Edge, enroll: Enroll) -> None:
    ident = await enroll()
    client = await edge.session(ident, session_id="s_does_not_exist")
    assert client.welcome is not None
    assert client.welcome.b["resumed"] is False


async def test_a_hello_with_a_full_64_bit_epoch_is_welcomed(
        edge: Edge, enroll: Enroll) -> None:
    """PROTOCOL.md §3: the epoch is 'a random 64-bit integer'; a third-party node that makes
    it with 64 random bits (msgpack uint64) must be able to connect."""
    ident = await enroll()
    client = await edge.open()
    client.epoch = (1 << 64) - 1
    await client.send(client.hello(ident))
    welcome = await client.recv()
    assert welcome.t == "edge.welcome", welcome
    await client.heartbeat()


async def test_a_second_hello_on_the_same_connection_is_closed_with_4400(
        edge: Edge, enroll: Enroll) -> None:
    ident = await enroll()
    client = await edge.session(ident)
    await client.send(client.hello(ident))
    assert (await client.expect_close()).code == 4400
