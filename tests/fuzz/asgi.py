"""A real controller app, in process, for fuzzing its handlers: Starlette's TestClient
drives ``create_app(config)`` (lifespan, store on a temp directory, every route) without a
socket, so one fuzzed request or first frame costs about a millisecond.

``raise_server_exceptions=True``: a handler that raises anything the app's error handlers
do not turn into a 4xx makes the call raise here, with the traceback: that is a crash.
"""

from __future__ import annotations

import base64
import json
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from starlette.websockets import WebSocketDisconnect

from tether.controller.app import EDGE_PATH, create_app
from tether.controller.config import ControllerConfig
from tether.protocol.codec import (
    JSON_SUBPROTOCOL,
    MSGPACK_SUBPROTOCOL,
    decode_json,
    decode_msgpack,
)
from tether.protocol.frames import Frame
from tether.protocol.signing import generate_private_key, public_key_raw, sign_hello

with warnings.catch_warnings():  # starlette asks for httpx2, which this project does not use
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

# What the contract lets an unauthenticated first frame end in (PROTOCOL.md §7, §9):
# 1000 the peer's own close; 1009 too large; 4400 bad frame; 4401 not authenticated;
# 4403 disabled; 4408 too slow; 4426 wrong protocol; 4429 overloaded. Never 1011.
HANDLED_CLOSE_CODES = frozenset({1000, 1009, 4400, 4401, 4403, 4408, 4426, 4429})


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class Outcome:
    """How a WebSocket's first frame ended: a close code, or the first frame sent back.

    The test client passes any close reason; a real server cannot send one over 123 bytes
    (RFC 6455 §5.5), so ``test_regressions.py`` checks those against a real server."""

    close_code: int | None = None
    reason: str = ""
    reply: Frame | None = None


class Controller:
    """``with Controller() as ctl``: a controller app with an operator token, a join token
    of many uses, and one enrolled node (``node_id``, ``key``) for signed hellos."""

    node_id = "fuzz-node"

    def __init__(self, **config: Any) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="tether-fuzz-")
        data_dir = Path(self._tmp.name) / "controller"
        self.config = ControllerConfig(data_dir=data_dir, durability="process",
                                       handshake_timeout_s=1.0, **config)
        self.app = create_app(self.config)
        self.client = TestClient(self.app, raise_server_exceptions=True)
        self.key = generate_private_key()
        self.token = ""
        self.join_token = ""
        self.epoch = 7

    def __enter__(self) -> Controller:
        self.client.__enter__()
        self.token = self.config.admin_token_path.read_text().strip()
        resp = self.rest("POST", "/api/v1/join-tokens",
                         json.dumps({"uses": 10**6, "ttl_s": 86400}).encode())
        assert resp.status_code == 201, resp.text
        self.join_token = resp.json()["token"]
        resp = self.rest("POST", "/v1/edge/enroll", json.dumps({
            "join_token": self.join_token, "node_id": self.node_id,
            "public_key": b64url(public_key_raw(self.key))}).encode(), auth=False)
        assert resp.status_code == 201, resp.text
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.client.__exit__(exc_type, exc, tb)
        finally:
            self._tmp.cleanup()

    # -- REST ----------------------------------------------------------------------------

    def rest(self, method: str, path: str, body: bytes | None = None, *, auth: bool = True,
             headers: dict[str, str] | None = None) -> httpx.Response:
        sent = {"content-type": "application/json", **(headers or {})}
        if auth:
            sent["authorization"] = f"Bearer {self.token}"
        return self.client.request(method, path, content=body, headers=sent)

    # -- WebSockets ----------------------------------------------------------------------

    def edge_first_frame(self, message: bytes | str | None, *,
                         subprotocols: list[str] | None = None) -> Outcome:
        """Open ``/v1/edge/connect``, read the challenge, send ``message`` (None: send
        nothing and wait), and report how the controller answered."""
        offer = [MSGPACK_SUBPROTOCOL] if subprotocols is None else subprotocols
        with self.client.websocket_connect(EDGE_PATH, subprotocols=offer) as ws:
            try:
                challenge = decode_msgpack(ws.receive_bytes())
            except WebSocketDisconnect as exc:
                return Outcome(exc.code, exc.reason)
            assert challenge.t == "edge.challenge", challenge
            self.last_challenge = challenge
            if message is not None:
                self._send(ws, message)
            try:
                return Outcome(reply=decode_msgpack(ws.receive_bytes()))
            except WebSocketDisconnect as exc:
                return Outcome(exc.code, exc.reason)

    def signed_hello(self, nonce: bytes, controller_id: str, **body: Any) -> Frame:
        """A hello for the enrolled node, signed over ``nonce``, with ``body`` on top; its
        evt epoch is :attr:`epoch` (a new one starts the node's evt stream at q=1)."""
        sig = sign_hello(self.key, nonce, controller_id, self.node_id)
        return Frame(t="edge.hello", b={
            "node_id": self.node_id, "protocol": 1, "sig": sig, "epoch": self.epoch,
            "acks": {"cmd": 0}, "session_id": None, "runtime": {"state": "attached"},
            "sidecar": {}, "capabilities": [], "labels": {}, **body})

    def edge_hello(self, build: Any) -> Outcome:
        """Like :meth:`edge_first_frame`, the message built from the challenge:
        ``build(nonce, controller_id) -> bytes | str``."""
        with self.client.websocket_connect(EDGE_PATH, subprotocols=[MSGPACK_SUBPROTOCOL]
                                           ) as ws:
            challenge = decode_msgpack(ws.receive_bytes())
            self._send(ws, build(bytes(challenge.b["nonce"]),
                                 str(challenge.b["controller_id"])))
            try:
                return Outcome(reply=decode_msgpack(ws.receive_bytes()))
            except WebSocketDisconnect as exc:
                return Outcome(exc.code, exc.reason)

    def ws_first_frame(self, message: bytes | str | None, *,
                       subprotocols: list[str] | None = None) -> Outcome:
        """Open ``/ws``, send ``message`` as its hello, report the answer."""
        offer = [JSON_SUBPROTOCOL] if subprotocols is None else subprotocols
        with self.client.websocket_connect("/ws", subprotocols=offer) as ws:
            if message is not None:
                self._send(ws, message)
            try:
                return Outcome(reply=decode_json(ws.receive_text()))
            except WebSocketDisconnect as exc:
                return Outcome(exc.code, exc.reason)

    @staticmethod
    def _send(ws: Any, message: bytes | str) -> None:
        if isinstance(message, bytes):
            ws.send_bytes(message)
        else:
            ws.send_text(message)


def assert_error_shape(resp: httpx.Response) -> None:
    """A 4xx with the one JSON error shape ``{"error": {"code", "message"}}``; never 5xx."""
    assert resp.status_code < 500, f"{resp.status_code} {resp.text[:300]}"
    if resp.status_code < 400:
        return
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    body = resp.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["code"], str) and body["error"]["code"], body
    assert isinstance(body["error"]["message"], str), body
