"""A node's media-plane report (``node.rtc``) as the operator sees the fleet: ``tether nodes
show`` prints it escaped (``--json`` as served), and the controller's ``/metrics`` counts the
peers and subflows of the sessions it holds in fixed label sets — a raw node against a real
controller."""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from tether.cli import operator
from tether.protocol.frames import Frame
from tether.protocol.rtc import PEER_STATES, SUBFLOW_NAMES, SUBFLOW_STATES

from ..helpers import parse_metrics
from .conftest import Edge, Identity, eventually

Enroll = Callable[..., Awaitable[Identity]]
ESC = "\x1b"


def peer(psid: str, state: str = "connected", **flows: str) -> dict[str, Any]:
    return {"peer_session_id": psid, "remote": "client:c1", "state": state,
            "ice_state": "completed", "candidate_pair": "host", "negotiations_total": 3,
            "connections_total": 1,
            "subflows": {name: {"state": s, "bytes_in": 10, "bytes_out": 20,
                                "errors_total": 1 if s in ("failed", "degraded") else 0}
                         for name, s in flows.items()}}


async def view(api: httpx.AsyncClient, node_id: str) -> dict[str, Any]:
    resp = await api.get(f"/api/v1/nodes/{node_id}")
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


async def rtc_series(api: httpx.AsyncClient) -> dict[str, float]:
    text = (await api.get("/metrics")).text
    return {k: v for k, v in parse_metrics(text).items()
            if k.startswith(("tether_rtc_peers{", "tether_rtc_subflows{"))}


def show(node: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
         capsys: pytest.CaptureFixture[str], *, as_json: bool = False) -> str:
    class ServedApi:
        def get(self, path: str, **_: Any) -> Any:
            assert path == f"/api/v1/nodes/{node['node_id']}"
            return node

    monkeypatch.setattr(operator, "api_from", lambda args: ServedApi())
    args = argparse.Namespace(json=as_json, url=None, token=None, node_id=node["node_id"])
    assert operator.nodes_show(args) == 0
    return capsys.readouterr().out


async def test_nodes_show_prints_the_rtc_report_escaped_and_json_keeps_it_as_served(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    ident = await enroll()
    client = await edge.session(ident)
    before = show(await view(api, ident.node_id), monkeypatch, capsys)
    assert "rtc           none reported" in before
    hostile = ESC + "]0;pwn\x07" + ESC + "[2J" + "\u202e"
    reason = hostile + "r" * (200 - len(hostile.encode()))  # the protocol's most: 200 bytes
    await client.send(Frame(t="node.rtc", b={"peers": [peer("p-1", control="open",
                                                            video="failed")],
                                             "history": [{"peer_session_id": "p-0",
                                                          "at": 1.7e9,
                                                          "reason": reason}]}))

    async def reported() -> dict[str, Any] | None:
        node = await view(api, ident.node_id)
        return node if node["rtc"] is not None else None

    node = await eventually(reported)
    out = show(node, monkeypatch, capsys)
    assert ESC not in out and "\x07" not in out and "\u202e" not in out, out
    assert "\\x1b]0;pwn\\x07\\x1b[2J\\u202e" in out  # shown, escaped
    assert "rtc           1 peer(s), 1 connected; 1 recent replacement(s)" in out
    assert "  peer p-1 with client:c1: connected, ice completed, pair host, " \
           "3 negotiation(s), 1 connection(s)" in out
    assert [line.split()[:2] for line in out.splitlines() if line.startswith("    ")] == \
        [["control", "open"], ["video", "failed"]]
    assert "replaced p-0 at 2023-11-14T22:13:20Z: " in out
    assert max(len(line) for line in out.splitlines()) < 400
    as_json = json.loads(show(node, monkeypatch, capsys, as_json=True))
    assert as_json["rtc"] == node["rtc"]
    assert as_json["rtc"]["history"][0]["reason"] == reason
    await client.heartbeat()


async def test_rtc_gauges_follow_the_reports_of_the_sessions_held_and_stay_bounded(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    fixed = {f'tether_rtc_peers{{state="{s}"}}' for s in PEER_STATES} | {
        f'tether_rtc_subflows{{state="{s}",subflow="{n}"}}'
        for n in SUBFLOW_NAMES for s in SUBFLOW_STATES}
    empty = await rtc_series(api)
    assert set(empty) == fixed and not any(empty.values())  # every series, zero

    a, b = await enroll(), await enroll()
    node_a, node_b = await edge.session(a), await edge.session(b)
    await node_a.send(Frame(t="node.rtc", b={"peers": [
        peer("p-1", control="open", file="degraded", video="failed"),
        peer("p-2", "failed", control="failed")], "history": []}))
    # many peers with ids of the node's choosing: counted, never a label
    await node_b.send(Frame(t="node.rtc", b={"peers": [
        peer(f"id-{i}-{'x' * 50}", "connecting", video="open") for i in range(16)]}))

    async def moved() -> dict[str, float] | None:
        series = await rtc_series(api)
        return series if series['tether_rtc_peers{state="connecting"}'] == 16 \
            and series['tether_rtc_peers{state="connected"}'] == 1 else None

    series = await eventually(moved)
    assert set(series) == fixed
    assert series['tether_rtc_peers{state="failed"}'] == 1
    assert series['tether_rtc_subflows{state="degraded",subflow="file"}'] == 1
    assert series['tether_rtc_subflows{state="failed",subflow="video"}'] == 1
    assert series['tether_rtc_subflows{state="failed",subflow="control"}'] == 1
    assert series['tether_rtc_subflows{state="open",subflow="video"}'] == 16

    for hostile in ({"peers": [peer("p-9", "exploded", control="open")]},
                    {"peers": [peer("p-9", control="weird")]},
                    {"peers": [{**peer("p-9"), "subflows": {"screen-" + ESC: {
                        "state": "failed", "bytes_in": 0, "bytes_out": 0,
                        "errors_total": 0}}}]}):
        await node_a.send(Frame(t="node.rtc", id="bad", b=hostile))
        err = await node_a.recv_type("error")
        assert err.b["code"] == "bad_frame"
    await node_a.heartbeat()
    assert await rtc_series(api) == series  # refused: nothing moved, no series added

    await node_a.send(Frame(t="node.rtc", b={"peers": []}))  # latest wins

    async def dropped() -> bool:
        return (await rtc_series(api))['tether_rtc_peers{state="connected"}'] == 0

    await eventually(dropped)
    await node_b.close()  # a session that ends takes its report with it

    async def gone() -> bool:
        return (await rtc_series(api))['tether_rtc_peers{state="connecting"}'] == 0

    await eventually(gone)
    assert set(await rtc_series(api)) == fixed
