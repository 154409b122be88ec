"""Bundles across replicas (PostgreSQL + NATS): the bytes live in the shared store, so a
bundle published on replica A is downloaded, by a Range across a chunk boundary, from
replica B, by an operator and by a node signing as itself."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import httpx

from tether.protocol.node_http import node_authorization

from ..controller.bundlefiles import make_bundle
from ..helpers import ControllerProc
from .conftest import enrolled


async def test_a_bundle_published_on_replica_a_is_downloaded_by_range_from_replica_b(
        controller: ControllerProc, make_replica: Callable[..., ControllerProc]) -> None:
    replica_b = make_replica("r-b")
    raw = make_bundle("web", 1, payload=os.urandom(1200 << 10))  # two 1 MiB chunks
    async with httpx.AsyncClient(base_url=controller.url, timeout=10, headers={
            "Authorization": f"Bearer {controller.token}"}) as api_a, \
            httpx.AsyncClient(base_url=replica_b.url, timeout=10, headers={
                "Authorization": f"Bearer {replica_b.token}"}) as api_b, \
            httpx.AsyncClient(base_url=replica_b.url, timeout=10) as anon_b:
        resp = await api_a.post("/api/v1/bundles", content=raw,
                                headers={"Content-Type": "application/octet-stream"})
        assert resp.status_code == 201, resp.text
        first, last = (1 << 20) - 100, len(raw) - 1
        got = await api_b.get("/api/v1/bundles/web/1/file",
                              headers={"Range": f"bytes={first}-"})
        assert got.status_code == 206 and got.content == raw[first:]
        assert got.headers["content-range"] == f"bytes {first}-{last}/{len(raw)}"
        node = await enrolled(api_a, "edge-1")
        path = "/api/v1/bundles/web/1/file"
        header = node_authorization(node.key, node.node_id, "GET", path,
                                    int(time.time() * 1000))
        got = await anon_b.get(path, headers={"Authorization": header,
                                              "Range": "bytes=-512"})
        assert got.status_code == 206 and got.content == raw[-512:]
        # the same file published again on B is the same version, not a new one
        again = await api_b.post("/api/v1/bundles", content=raw,
                                 headers={"Content-Type": "application/octet-stream"})
        assert again.status_code == 200 and again.json() == resp.json()
