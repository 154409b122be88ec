"""Every crash the fuzzers found, pinned with the input that caused it.

Every one is fixed, so every test here passes. A crash found while its fix is being made
elsewhere would be pinned with ``xfail(strict=True)`` and listed in
``targets_asgi.KNOWN_ELSEWHERE`` (empty today), so both must go when the fix lands.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from tether.node.health import health_app
from tether.protocol.codec import MSGPACK_SUBPROTOCOL, decode_json, encode_msgpack
from tether.protocol.errors import BadFrame
from tether.protocol.frames import Frame, parse_body

from ..controller.conftest import browser_connect
from ..helpers import ControllerProc
from .asgi import Controller, TestClient, assert_error_shape
from .targets_asgi import KNOWN_ELSEWHERE
from .test_props_publish import StandInRuntime

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

LONG_TYPE = "é" * 64  # a valid frame type: 64 characters, 128 bytes of UTF-8


async def test_an_early_frame_with_a_long_non_ascii_type_is_closed_with_4400_on_a_real_server(
        controller: ControllerProc) -> None:
    from websockets.asyncio.client import connect

    url = controller.url.replace("http", "ws", 1) + "/v1/edge/connect"
    async with connect(url, subprotocols=[MSGPACK_SUBPROTOCOL],  # type: ignore[list-item]
                       open_timeout=5, close_timeout=2) as ws:
        await ws.recv()  # the challenge
        await ws.send(encode_msgpack(Frame(t=LONG_TYPE)))
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 4400, info.value


async def test_a_ws_hello_with_a_long_non_ascii_type_is_closed_with_4400_on_a_real_server(
        controller: ControllerProc) -> None:
    ws = await browser_connect(controller.url.replace("http", "ws", 1) + "/ws")
    async with ws:
        await ws.send(json.dumps({"t": LONG_TYPE}))
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 4400, info.value


# --- lone surrogates in JSON (fixed in protocol/codec.py) --------------------------------

@pytest.mark.parametrize("text", [
    '{"t": "ping", "id": "\\ud800"}',  # found on /ws: echoed as 're', then unencodable
    '{"t": "x", "b": {"\\udfff": 1}}',
    '{"t": "\\udc00"}',
    '{"t": "x", "b": {"a": [["\\ud83d"]]}}',
])
def test_json_text_holding_a_lone_surrogate_is_a_bad_frame(text: str) -> None:
    with pytest.raises(BadFrame, match="not valid Unicode"):
        decode_json(text)
    with pytest.raises(BadFrame, match="not valid Unicode"):
        decode_json(text.encode())


def test_json_bytes_that_are_not_utf8_are_a_bad_frame_not_guessed_as_utf16() -> None:
    utf16 = '{"t": "x", "id": "\\ud800"}'.encode("utf-16")
    with pytest.raises(BadFrame, match="UTF-8"):
        decode_json(utf16)


def test_a_surrogate_pair_escape_is_one_valid_character() -> None:
    assert decode_json('{"t": "\\ud83d\\ude00"}').t == "\U0001f600"


def test_a_ws_frame_whose_id_is_a_lone_surrogate_gets_4400_not_an_unhandled_error() -> None:
    # found by test_props_ws: the error reply echoed the id and could not be encoded, so
    # LocalProtocolError escaped the /ws handler (1011 and a traceback)
    with Controller() as ctl, ctl.client.websocket_connect(
            "/ws", subprotocols=["tether.v1.json"]) as ws:
        ws.send_text(json.dumps({"t": "hello", "b": {"token": ctl.token}}))
        assert json.loads(ws.receive_text())["t"] == "welcome"
        ws.send_text('{"t": "ping", "id": "\\ud800"}')
        msg = ws.receive()
        assert msg["type"] == "websocket.close" and msg["code"] == 4400, msg


# --- REST crashes found by fuzz_rest.py (all fixed) -----------------------------------------
# While a fix is pending, its case is an entry of targets_asgi.KNOWN_ELSEWHERE and a strict
# xfail here; when the fix lands, the test passes, strict xfail fails it, and both go.

def _rest_case(path: str, body: bytes | None, *, auth: bool = True,
               read_after: tuple[str, ...] = ()) -> None:
    """``path`` with ``body`` answers below 500 with the JSON error shape, and every path in
    ``read_after`` answers 200 afterwards (on a fresh controller: no earlier case leaks in).
    """
    with Controller() as ctl:
        body = None if body is None else body.replace(b"@TOKEN@", ctl.join_token.encode())
        assert_error_shape(ctl.rest("POST" if body is not None else "GET", path, body,
                                    auth=auth))
        for read in read_after:
            assert ctl.rest("GET", read).status_code == 200, read


def test_an_enroll_body_nested_100k_deep_answers_400_not_500() -> None:
    _rest_case("/v1/edge/enroll", b"[" * 100_000, auth=False)


def test_after_beyond_the_signed_64_bit_range_answers_400_not_500() -> None:
    _rest_case(f"/api/v1/nodes/{Controller.node_id}/logs?after={10**30}", None)


@pytest.mark.parametrize("value", [b"NaN", b"Infinity", b"1e999",
                                   b'"\\ud800"'])
def test_command_args_json_cannot_hold_are_refused_and_reads_stay_200(value: bytes) -> None:
    _rest_case(f"/api/v1/nodes/{Controller.node_id}/commands",
               b'{"kind": "x", "args": {"v": ' + value + b"}}",
               read_after=("/api/v1/commands",))


def test_enroll_labels_holding_a_lone_surrogate_are_refused_and_reads_stay_200() -> None:
    _rest_case("/v1/edge/enroll",
               b'{"join_token": "@TOKEN@", "node_id": "surrogate", "public_key": "'
               + b"A" * 42 + b'E", "labels": {"a": "\\udc00"}}',
               auth=False, read_after=("/api/v1/nodes",))


def test_every_crash_tolerated_by_the_rest_harness_is_pinned_here() -> None:
    pinned = {RecursionError, OverflowError, ValueError, UnicodeEncodeError}
    assert {kind for _, kind, _ in KNOWN_ELSEWHERE} <= pinned


# --- typed bodies --------------------------------------------------------------------------

def test_a_log_chunk_whose_text_data_is_a_lone_surrogate_is_a_bad_frame() -> None:
    # found by fuzz_bodies.py: b'\x19{"": "c-dout", "seq": 1, "data": "\\ud800", ...}'
    with pytest.raises(BadFrame):
        parse_body(Frame(t="log.chunk", b={"source": "stdout", "seq": 1, "data": "\ud800"}))


def test_the_log_chunk_crash_input_is_refused_by_the_json_decoder_before_any_body() -> None:
    with pytest.raises(BadFrame, match="not valid Unicode"):
        decode_json('{"t": "log.chunk", "b": {"source": "o", "seq": 1, "data": "\\ud800"}}')


# --- the node's loopback POST /publish -------------------------------------------------------

def _publish(body: bytes) -> tuple[int, list[Any]]:
    runtime = StandInRuntime()
    with TestClient(health_app(runtime),  # type: ignore[arg-type]
                    raise_server_exceptions=True) as client:
        resp = client.post("/publish", content=body,
                           headers={"content-type": "application/json"})
        assert_error_shape(resp)
        return resp.status_code, runtime.published


def test_a_publish_body_nested_60k_deep_answers_400_not_500() -> None:
    _publish(b'{"topic": "t", "data": ' + b"[" * 60_000 + b"}")  # under the 64 KiB cap


@pytest.mark.parametrize("value", [b"NaN", b"1e999", b'"\\ud800"', str(2**64).encode()])
def test_publish_data_that_cannot_travel_is_refused_with_400(value: bytes) -> None:
    status, published = _publish(b'{"topic": "t", "data": {"v": ' + value + b"}}")
    assert status == 400 and published == []


@pytest.mark.parametrize("state", [{"x": 1}, ["attached"], b"attached", 3])
def test_a_runtime_state_that_is_not_text_is_a_bad_frame_not_a_type_error(state: object
                                                                          ) -> None:
    """Found by fuzz_bodies (crashes/bodies/hello-runtime-state-map): a map as the hello's
    runtime state raised TypeError (unhashable) out of the parser."""
    from tether.protocol.errors import BadFrame
    from tether.protocol.frames import Frame, parse_body
    from tether.protocol.local import LocalDetach

    with pytest.raises(BadFrame):
        parse_body(Frame(t="edge.hello", b={"node_id": "n1", "protocol": 1, "sig": b"x" * 64,
                                            "epoch": 1, "acks": {}, "runtime": {"state": state}}))
    with pytest.raises(BadFrame):
        LocalDetach.from_body({"state": state})
