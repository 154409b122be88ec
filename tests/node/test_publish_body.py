"""The node's loopback ``POST /publish`` reads its body through the limit and parses it
strictly (issue 11, item 4), driven in process through the ASGI app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import httpx

from tether.node.health import MAX_PUBLISH_BYTES, health_app

CHUNK = 16 * 1024


class _Runtime:
    identity = SimpleNamespace(node_id="n-1")

    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []

    def publish_monitor(self, topic: str, data: dict[str, Any]) -> int:
        self.published.append((topic, data))
        return len(self.published)


def _client(runtime: _Runtime) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=health_app(runtime)),  # type: ignore[arg-type]
                             base_url="http://127.0.0.1")


async def test_a_chunked_publish_stops_being_read_just_past_64_kib() -> None:
    runtime = _Runtime()
    sent = 0

    async def endless() -> AsyncIterator[bytes]:  # 500 MB if anyone read it all
        nonlocal sent
        for _ in range(500_000_000 // CHUNK):
            sent += 1
            yield b" " * CHUNK

    async with _client(runtime) as client:
        resp = await client.post("/publish", content=endless())
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "frame_too_large"
    assert sent * CHUNK <= MAX_PUBLISH_BYTES + 2 * CHUNK, f"{sent} chunks were read"
    assert runtime.published == []


async def test_a_publish_with_json_no_store_can_hold_is_400() -> None:
    runtime = _Runtime()
    bodies = [b'{"topic": "t", "data": {"v": NaN}}', b'{"topic": "t", "data": {"v": 1e999}}',
              b'{"topic": "t", "data": {"v": -Infinity}}',
              b'{"topic": "t", "data": {"v": 99999999999999999999}}',
              b'{"topic": "t", "data": {"v": "\\ud800"}}',
              b'{"topic": "t", "data": {"v": ' + b"[" * 30_000 + b"]" * 30_000 + b"}}",
              b'{"topic": "t", "data": {"v": ' + b"[" * 50 + b"]" * 50 + b"}}"]
    async with _client(runtime) as client:
        for raw in bodies:
            resp = await client.post("/publish", content=raw)
            assert resp.status_code == 400, (raw[:60], resp.text)
            assert resp.json()["error"]["code"] == "invalid_request"
        ok = await client.post("/publish", json={"topic": "t", "data": {"v": 1.5}})
    assert ok.status_code == 202 and runtime.published == [("t", {"v": 1.5})]
