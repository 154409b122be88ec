"""Local fixtures for controller tests: an async operator API client, enrolled identities
without a node process, and a raw edge client that speaks PROTOCOL.md msgpack frames.

Everything talks to the real controller process of the ``controller`` fixture.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tether.protocol.codec import (
    JSON_SUBPROTOCOL,
    MSGPACK_SUBPROTOCOL,
    decode_msgpack,
    encode_msgpack,
)
from tether.protocol.frames import Frame
from tether.protocol.signing import generate_private_key, public_key_raw, sign_hello

from ..helpers import POLL_S, ControllerProc

T = TypeVar("T")

NET_TIMEOUT_S = 5.0  # every single network wait in these tests
_ids = itertools.count(1)


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def assert_error(resp: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """Exact status and the one JSON error shape {"error": {"code", "message"}}."""
    assert resp.status_code == status, f"{resp.status_code} {resp.text}"
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"code", "message"}, body
    assert isinstance(err["code"], str) and err["code"], body
    assert err["code"].replace("_", "").isalnum() and err["code"] == err["code"].lower(), body
    assert isinstance(err["message"], str) and err["message"], body
    if code is not None:
        assert err["code"] == code, body
    return err  # type: ignore[no-any-return]


async def eventually(fn: Callable[[], Awaitable[T]], *, timeout_s: float = 10.0,
                     what: str = "condition") -> T:
    """Poll an async condition until it returns something truthy, with a deadline."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        last = await fn()
        if last:
            return last  # type: ignore[return-value]
        await asyncio.sleep(POLL_S)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last: {last!r})")


@dataclass
class Identity:
    node_id: str
    key: Ed25519PrivateKey

    @property
    def public_b64(self) -> str:
        return b64url(public_key_raw(self.key))


@dataclass
class Closed:
    code: int
    reason: str
    frames: list[Frame]  # what arrived before the close


class EdgeClient:
    """One raw ``/v1/edge/connect`` connection."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.challenge: Frame | None = None
        self.welcome: Frame | None = None
        self.epoch = 0

    @property
    def nonce(self) -> bytes:
        assert self.challenge is not None
        return bytes(self.challenge.b["nonce"])

    @property
    def controller_id(self) -> str:
        assert self.challenge is not None
        return str(self.challenge.b["controller_id"])

    async def send(self, frame: Frame) -> None:
        await self.ws.send(encode_msgpack(frame, max_frame_bytes=1 << 30))

    async def send_raw(self, data: bytes | str) -> None:
        await self.ws.send(data)

    async def recv(self, timeout_s: float = NET_TIMEOUT_S) -> Frame:
        data = await asyncio.wait_for(self.ws.recv(), timeout_s)
        assert isinstance(data, bytes), f"controller sent a text frame: {data!r}"
        return decode_msgpack(data)

    async def recv_type(self, t: str, timeout_s: float = NET_TIMEOUT_S) -> Frame:
        """The next frame of type ``t``; edge.ack / heartbeat acks before it are skipped,
        anything else fails the test."""
        deadline = time.monotonic() + timeout_s
        while True:
            frame = await self.recv(max(0.01, deadline - time.monotonic()))
            if frame.t == t:
                return frame
            assert frame.t in ("edge.ack", "edge.heartbeat_ack"), (
                f"expected {t}, got {frame.t}: {frame}")

    async def expect_close(self, timeout_s: float = NET_TIMEOUT_S) -> Closed:
        frames: list[Frame] = []
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    data = await self.ws.recv()
                    if isinstance(data, bytes):
                        frames.append(decode_msgpack(data))
        except ConnectionClosed as exc:
            assert exc.rcvd is not None, f"no close frame from the controller ({exc!r})"
            return Closed(exc.rcvd.code, exc.rcvd.reason, frames)
        raise AssertionError("unreachable")

    def hello(self, ident: Identity, *, sign_nonce: bytes | None = None,
              sign_controller_id: str | None = None, **overrides: Any) -> Frame:
        sig = sign_hello(ident.key, self.nonce if sign_nonce is None else sign_nonce,
                         sign_controller_id or self.controller_id, ident.node_id)
        body: dict[str, Any] = {
            "node_id": ident.node_id, "protocol": 1, "sig": sig, "epoch": self.epoch or 7,
            "acks": {"cmd": 0}, "session_id": None,
            "runtime": {"state": "attached", "version": "test-1"},
            "sidecar": {"version": "test-1", "pid": 1}, "capabilities": ["exec"],
            "labels": {}}
        body.update(overrides)
        return Frame(t="edge.hello", b=body)

    async def heartbeat(self, hb_id: str | None = None) -> Frame:
        """Send a heartbeat and return its heartbeat_ack."""
        hb_id = hb_id or f"hb-{next(_ids)}"
        await self.send(Frame(t="edge.heartbeat", id=hb_id, b={
            "uptime_s": 1.0, "runtime": {"state": "attached"},
            "outbox": {"depth": 0, "oldest_age_s": 0}, "acks": {}}))
        ack = await self.recv_type("edge.heartbeat_ack")
        assert ack.re == hb_id, ack
        return ack

    async def close(self) -> None:
        await self.ws.close()


class Edge:
    """Factory for raw edge connections to one controller; closes them all at teardown."""

    def __init__(self, url: str) -> None:
        self.url = url.replace("http", "ws", 1) + "/v1/edge/connect"
        self.clients: list[EdgeClient] = []

    async def open(self, *, subprotocols: list[str] | None = None,
                   read_challenge: bool = True) -> EdgeClient:
        # an empty list means "offer none" (no Sec-WebSocket-Protocol header at all)
        offer = [MSGPACK_SUBPROTOCOL] if subprotocols is None else subprotocols
        ws = await connect(self.url, subprotocols=offer or None,  # type: ignore[arg-type]
            compression=None, open_timeout=NET_TIMEOUT_S, close_timeout=2,
            ping_interval=None, max_size=None)
        client = EdgeClient(ws)
        self.clients.append(client)
        if read_challenge:
            client.challenge = await client.recv()
            assert client.challenge.t == "edge.challenge", client.challenge
        return client

    async def session(self, ident: Identity, *, epoch: int = 7,
                      **hello: Any) -> EdgeClient:
        """A connection that completed the handshake (``.welcome`` set)."""
        client = await self.open()
        client.epoch = epoch
        await client.send(client.hello(ident, **hello))
        welcome = await client.recv()
        assert welcome.t == "edge.welcome", welcome
        client.welcome = welcome
        return client

    async def aclose(self) -> None:
        for client in self.clients:
            try:
                async with asyncio.timeout(3):
                    await client.ws.close()
            except (TimeoutError, ConnectionClosed, OSError):
                pass


@pytest.fixture
async def api(controller: ControllerProc) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=controller.url, timeout=NET_TIMEOUT_S, headers={
            "Authorization": f"Bearer {controller.token}"}) as client:
        yield client


@pytest.fixture
async def anon(controller: ControllerProc) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client without credentials."""
    async with httpx.AsyncClient(base_url=controller.url, timeout=NET_TIMEOUT_S) as client:
        yield client


@pytest.fixture
def join_token(api: httpx.AsyncClient) -> Callable[..., Awaitable[str]]:
    async def make(**body: Any) -> str:
        resp = await api.post("/api/v1/join-tokens", json={"uses": 1, **body})
        assert resp.status_code == 201, resp.text
        return str(resp.json()["token"])
    return make


@pytest.fixture
def enroll(anon: httpx.AsyncClient, join_token: Callable[..., Awaitable[str]]
           ) -> Callable[..., Awaitable[Identity]]:
    """enroll(node_id=None): a node enrolled over HTTP with a fresh Ed25519 key."""
    async def make(node_id: str | None = None) -> Identity:
        ident = Identity(node_id or f"n-{next(_ids)}", generate_private_key())
        resp = await anon.post("/v1/edge/enroll", json={
            "join_token": await join_token(), "node_id": ident.node_id,
            "public_key": ident.public_b64, "labels": {}})
        assert resp.status_code == 201, resp.text
        return ident
    return make


@pytest.fixture
async def edge(controller: ControllerProc) -> AsyncIterator[Edge]:
    factory = Edge(controller.url)
    try:
        yield factory
    finally:
        await factory.aclose()


@pytest.fixture
def ws_url(controller: ControllerProc) -> str:
    return controller.url.replace("http", "ws", 1) + "/ws"


async def browser_connect(url: str, *, subprotocols: list[str] | None = None,
                          origin: str | None = None) -> ClientConnection:
    offer = [JSON_SUBPROTOCOL] if subprotocols is None else subprotocols
    return await connect(url, subprotocols=offer or None,  # type: ignore[arg-type]
        origin=origin, compression=None, open_timeout=NET_TIMEOUT_S, close_timeout=2,  # type: ignore[arg-type]
        ping_interval=None)


async def json_recv(ws: ClientConnection, timeout_s: float = NET_TIMEOUT_S) -> dict[str, Any]:
    data = await asyncio.wait_for(ws.recv(), timeout_s)
    assert isinstance(data, str), f"/ws sent a binary frame: {data!r}"
    obj = json.loads(data)
    assert isinstance(obj, dict)
    return obj


async def json_expect_close(ws: ClientConnection, timeout_s: float = NET_TIMEOUT_S) -> int:
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                await ws.recv()
    except ConnectionClosed as exc:
        assert exc.rcvd is not None, f"no close frame from the controller ({exc!r})"
        return exc.rcvd.code
    raise AssertionError("unreachable")


# -- a controller served in this process (tests that reach its services directly) ---------


@dataclass(frozen=True)
class InProcess:
    """A controller served by uvicorn on this test's loop, with its services at hand."""

    controller: Any  # tether.controller.app.Controller
    url: str


@contextlib.asynccontextmanager
async def serve_in_process(config: Any) -> AsyncIterator[InProcess]:
    """Serve ``config`` (a ControllerConfig) on its port (0: any), yield once it listens,
    and stop it (lifespan shutdown included) on exit."""
    from tether.controller.server import build_server

    config.data_dir.mkdir(parents=True, exist_ok=True)
    server = build_server(config)
    task = asyncio.create_task(server.serve(), name="controller-under-test")
    try:
        async with asyncio.timeout(NET_TIMEOUT_S * 2):
            while server.url is None:
                assert not task.done(), "the controller stopped while starting"
                await asyncio.sleep(0.01)
        yield InProcess(server.controller, server.url)
    finally:
        server.should_exit = True
        async with asyncio.timeout(NET_TIMEOUT_S * 3):
            await task


async def enroll_identity(controller: ControllerProc, node_id: str) -> Identity:
    """``node_id`` enrolled with a fresh key on ``controller`` (a process), for tests
    outside this directory that play a raw node."""
    ident = Identity(node_id, generate_private_key())
    async with httpx.AsyncClient(base_url=controller.url, timeout=NET_TIMEOUT_S) as http:
        resp = await http.post("/api/v1/join-tokens", json={"uses": 1}, headers={
            "Authorization": f"Bearer {controller.token}"})
        assert resp.status_code == 201, resp.text
        resp = await http.post("/v1/edge/enroll", json={
            "join_token": resp.json()["token"], "node_id": node_id,
            "public_key": ident.public_b64})
        assert resp.status_code == 201, resp.text
    return ident


async def enroll_in_process(served: InProcess, *node_ids: str) -> list[Identity]:
    """Enroll ``node_ids`` with fresh keys through the served controller's REST API."""
    token = served.controller.config.admin_token_path.read_text().strip()
    idents = [Identity(node_id, generate_private_key()) for node_id in node_ids]
    async with httpx.AsyncClient(base_url=served.url, timeout=NET_TIMEOUT_S) as http:
        resp = await http.post("/api/v1/join-tokens", json={"uses": len(idents)},
                               headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 201, resp.text
        join = resp.json()["token"]
        for ident in idents:
            resp = await http.post("/v1/edge/enroll", json={
                "join_token": join, "node_id": ident.node_id,
                "public_key": ident.public_b64})
            assert resp.status_code == 201, resp.text
    return idents
