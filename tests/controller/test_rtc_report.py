"""The node's media-plane report (``node.rtc``, class B) on the controller: latest wins,
served under ``rtc`` by ``/api/v1/nodes/{id}``, apart from liveness; a hostile report gets
``error bad_frame`` and changes nothing — a raw node against a real controller."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from tether.protocol.frames import Frame

from .conftest import Edge, Identity, eventually

Enroll = Callable[..., Awaitable[Identity]]

PEER = {"peer_session_id": "p-1", "remote": "client:c1", "state": "connected",
        "ice_state": "completed", "candidate_pair": "host", "negotiations_total": 3,
        "connections_total": 1,
        "subflows": {"control": {"state": "open", "bytes_in": 10, "bytes_out": 20,
                                 "errors_total": 0},
                     "video": {"state": "failed", "bytes_in": 0, "bytes_out": 0,
                               "errors_total": 2}}}


async def node(api: httpx.AsyncClient, node_id: str) -> dict[str, Any]:
    resp = await api.get(f"/api/v1/nodes/{node_id}")
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


async def test_the_latest_report_is_served_under_rtc_and_a_failed_subflow_leaves_liveness(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    ident = await enroll()
    client = await edge.session(ident)
    assert (await node(api, ident.node_id))["rtc"] is None  # nothing reported yet
    await client.send(Frame(t="node.rtc", b={"peers": [PEER], "history": []}))
    await client.send(Frame(t="node.rtc", b={"peers": [{**PEER, "negotiations_total": 4}],
                                             "history": [{"peer_session_id": "p-0",
                                                          "at": 1.7e9,
                                                          "reason": "replaced by p-1"}]}))

    async def latest() -> bool:
        rtc = (await node(api, ident.node_id))["rtc"]
        return rtc is not None and rtc["peers"][0]["negotiations_total"] == 4

    await eventually(latest)
    view = await node(api, ident.node_id)
    assert view["rtc"]["history"] == [{"peer_session_id": "p-0", "at": 1.7e9,
                                       "reason": "replaced by p-1"}]
    assert view["rtc"]["peers"][0]["subflows"]["video"]["state"] == "failed"
    assert view["liveness"] == "online"  # a media failure never makes the node unhappy
    await client.heartbeat()


@pytest.mark.parametrize("body", [
    {"peers": "all of them"},
    {"peers": [{**PEER, "state": "<img src=x onerror=alert(1)>"}]},
    {"peers": [{**PEER, "peer_session_id": "../../etc"}]},
    {"peers": [{**PEER, "subflows": {"screen": {"state": "open"}}}]},
    {"peers": [PEER] * 1000},
    {"peers": [{**PEER, "negotiations_total": -1}]},
    {"history": [{"peer_session_id": "p", "at": "yesterday", "reason": "x"}]},
    {"history": [{"peer_session_id": "p", "at": 1.0, "reason": "x" * 100_000}]},
    {"history": [{"peer_session_id": "p", "at": float("nan"), "reason": "x"}]},
    {"peers": [{**PEER, "negotiations_total": 1 << 63}]},  # msgpack carries no 2^64
    {"history": [{"peer_session_id": "p", "at": 1.0, "reason": b"bytes, not text"}]},
], ids=["peers-text", "script-state", "bad-id", "unknown-subflow", "too-many", "negative",
        "bad-at", "huge-reason", "nan-at", "count-2^63", "bytes-reason"])
async def test_a_hostile_report_gets_bad_frame_and_keeps_what_was_served(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient, body: dict[str, Any]) -> None:
    ident = await enroll()
    client = await edge.session(ident)
    await client.send(Frame(t="node.rtc", b={"peers": [PEER], "history": []}))
    await eventually(lambda: _has_rtc(api, ident.node_id))
    await client.send(Frame(t="node.rtc", id="bad-rtc", b=body))
    err = await client.recv_type("error")
    assert err.re == "bad-rtc" and err.b["code"] == "bad_frame"
    await client.heartbeat()  # the session stays
    assert (await node(api, ident.node_id))["rtc"]["peers"] == [PEER]


async def _has_rtc(api: httpx.AsyncClient, node_id: str) -> bool:
    return (await node(api, node_id))["rtc"] is not None
