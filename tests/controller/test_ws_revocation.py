"""An open /ws, shell or io socket whose token is revoked is closed with 4401 within the
recheck period (controller/services/tokenwatch.py ``TOKEN_RECHECK_S``, shortened here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tether.controller.config import ControllerConfig
from tether.controller.services import tokenwatch
from tether.protocol.codec import JSON_SUBPROTOCOL

from .conftest import (
    NET_TIMEOUT_S,
    Edge,
    browser_connect,
    enroll_in_process,
    json_expect_close,
    json_recv,
    serve_in_process,
)


async def test_an_open_ws_is_closed_with_4401_once_its_token_is_revoked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokenwatch, "TOKEN_RECHECK_S", 0.2)
    config = ControllerConfig(data_dir=tmp_path / "ctl", durability="process", port=0)
    async with serve_in_process(config) as served:
        admin = config.admin_token_path.read_text().strip()
        async with httpx.AsyncClient(base_url=served.url, timeout=NET_TIMEOUT_S, headers={
                "Authorization": f"Bearer {admin}"}) as api:
            made = (await api.post("/api/v1/tokens", json={"role": "viewer"})).json()
            kept = (await api.post("/api/v1/tokens", json={"role": "viewer"})).json()
            url = served.url.replace("http", "ws", 1) + "/ws"
            doomed, other = await browser_connect(url), await browser_connect(url)
            for ws, tok in ((doomed, made), (other, kept)):
                await ws.send(json.dumps({"t": "hello", "id": "h",
                                          "b": {"token": tok["token"]}}))
                assert (await json_recv(ws))["t"] == "welcome"
            await api.delete(f"/api/v1/tokens/{made['token_id']}")
            assert await json_expect_close(doomed) == 4401
            await other.send(json.dumps({"t": "ping", "id": "p"}))  # the other one stays
            assert (await json_recv(other))["t"] == "pong"
            await other.close()


async def test_shell_and_io_sockets_are_closed_with_4401_once_their_token_is_revoked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokenwatch, "TOKEN_RECHECK_S", 0.2)
    config = ControllerConfig(data_dir=tmp_path / "ctl", durability="process", port=0)
    async with serve_in_process(config) as served:
        (ident,) = await enroll_in_process(served, "n-shell")
        edge = Edge(served.url)
        admin = config.admin_token_path.read_text().strip()
        try:
            await edge.session(ident)  # online: a shell needs it
            async with httpx.AsyncClient(base_url=served.url, timeout=NET_TIMEOUT_S, headers={
                    "Authorization": f"Bearer {admin}"}) as api:
                shell_tok = (await api.post("/api/v1/tokens", json={"role": "operator"})).json()
                io_tok = (await api.post("/api/v1/tokens", json={"role": "operator"})).json()
                base = served.url.replace("http", "ws", 1)
                shell = await browser_connect(f"{base}/api/v1/nodes/{ident.node_id}/shell")
                await shell.send(json.dumps({"t": "hello", "b": {"token": shell_tok["token"]}}))
                await shell.send(json.dumps({"t": "open", "b": {"rows": 24, "cols": 80}}))
                opened = await until_frame(shell, "opened")
                io = await connect(f"{base}/api/v1/commands/{opened['b']['command_id']}/io",
                                   subprotocols=[JSON_SUBPROTOCOL],  # type: ignore[list-item]
                                   additional_headers={
                                       "Authorization": f"Bearer {io_tok['token']}"},
                                   open_timeout=NET_TIMEOUT_S, close_timeout=2)
                await until_frame(io, "opened")

                await api.delete(f"/api/v1/tokens/{io_tok['token_id']}")
                assert await json_expect_close(io) == 4401
                await shell.send(json.dumps({"t": "ping", "id": "p"}))  # the other stays
                await until_frame(shell, "pong")
                await api.delete(f"/api/v1/tokens/{shell_tok['token_id']}")
                assert await json_expect_close(shell) == 4401
        finally:
            await edge.aclose()


async def until_frame(ws: ClientConnection, t: str) -> dict[str, Any]:
    """The next frame of type ``t`` (keepalives, credits and welcomes pass)."""
    while True:
        frame = await json_recv(ws)
        if frame["t"] == t:
            return frame
        assert frame["t"] in ("welcome", "credit", "ping", "signalled"), frame
