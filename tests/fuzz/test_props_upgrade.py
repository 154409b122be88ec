"""Fuzz the edge's HTTP upgrade on a real controller process (uvicorn, on loopback): a
request line and headers a hostile client makes up, sent on a raw socket.

Each one gets an HTTP answer or a closed connection within the deadline, never a hang;
afterwards the controller still answers its health check and still sends a real client
the challenge, and its log holds no traceback.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.protocol.codec import MSGPACK_SUBPROTOCOL

from ..helpers import ControllerProc
from .strategies import fuzz_settings

NET_TIMEOUT_S = 5.0
KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's sample key

header_text = st.text(st.characters(min_codepoint=1, max_codepoint=255,
                                    exclude_characters="\r\n"), max_size=40)
headers = st.dictionaries(
    st.sampled_from(["Upgrade", "Connection", "Sec-WebSocket-Key", "Sec-WebSocket-Version",
                     "Sec-WebSocket-Protocol", "Sec-WebSocket-Extensions", "Host",
                     "Content-Length", "Transfer-Encoding", "Origin"]) | header_text,
    st.sampled_from(["websocket", "Upgrade", KEY, "13", "8", MSGPACK_SUBPROTOCOL,
                     "permessage-deflate; client_max_window_bits", "0", "chunked", ""])
    | header_text, max_size=8)
request_lines = (st.sampled_from(["GET /v1/edge/connect HTTP/1.1", "GET /ws HTTP/1.1",
                                  "POST /v1/edge/connect HTTP/1.1",
                                  "GET /v1/edge/connect HTTP/1.0", "GET  HTTP/1.1"])
                 | header_text)


@pytest.fixture(scope="module")
def real_controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControllerProc]:
    ctl = ControllerProc(Path(tmp_path_factory.mktemp("upgrade")) / "controller")
    ctl.start()
    try:
        yield ctl
    finally:
        ctl.terminate()


def exchange(port: int, request: bytes) -> bytes:
    """Send ``request``, read until the server closes or has answered with headers."""
    with socket.create_connection(("127.0.0.1", port), timeout=NET_TIMEOUT_S) as sock:
        sock.sendall(request)
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = sock.recv(4096)
            if not chunk:
                break
            got += chunk
        return got


@fuzz_settings(150)
@given(line=request_lines, fields=headers)
def test_any_upgrade_request_is_answered_or_closed_and_the_controller_lives_on(
        real_controller: ControllerProc, line: str, fields: dict[str, str]) -> None:
    head = line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
    answer = exchange(real_controller.port, head.encode("latin-1"))
    # an answer is an HTTP status line; a refusal may also just close the connection
    assert answer == b"" or answer.startswith(b"HTTP/1.1 "), answer[:200]
    if answer.startswith(b"HTTP/1.1 5"):
        raise AssertionError(f"5xx for {head!r}: {answer[:200]!r}")


def test_after_the_upgrade_fuzzing_a_real_node_still_gets_the_challenge(
        real_controller: ControllerProc) -> None:
    resp = httpx.get(real_controller.url + "/api/v1/health", timeout=NET_TIMEOUT_S)
    assert resp.status_code == 200
    request = ("GET /v1/edge/connect HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n"
               f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {MSGPACK_SUBPROTOCOL}"
               "\r\n\r\n")
    assert exchange(real_controller.port, request.encode()).startswith(b"HTTP/1.1 101")
    assert "Traceback" not in real_controller.log(), real_controller.log()[-3000:]
