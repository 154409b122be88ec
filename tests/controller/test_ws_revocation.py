"""An open /ws whose token is revoked is closed with 4401 within the recheck period
(controller/browser.py ``TOKEN_RECHECK_S``, shortened here), served in this process."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tether.controller import browser
from tether.controller.config import ControllerConfig

from .conftest import NET_TIMEOUT_S, browser_connect, json_expect_close, json_recv, serve_in_process


async def test_an_open_ws_is_closed_with_4401_once_its_token_is_revoked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(browser, "TOKEN_RECHECK_S", 0.2)
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
