"""Issue 13: ``GET /metrics`` through prometheus-client. The series exist from the start
(names, types, labels), each counter moves when its event happens, the histograms observe,
and ``--metrics-require-token`` keeps the endpoint to operators. A real controller process,
raw edge clients, read with prometheus-client's own text parser."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.asyncio.client import connect

from tether.controller.services.metrics import code_label
from tether.protocol.frames import Frame

from ..helpers import FAST, ControllerProc, metric_types, parse_metrics
from .conftest import NET_TIMEOUT_S, Edge, Identity, eventually
from .test_edge_session import delivered_command, status
from .test_ws_flood import close_code, stalled_subscriber

Enroll = Callable[..., Awaitable[Identity]]
WS_MAX_QUEUE = 4


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[ControllerProc]:
    """A /ws client may have 4 events queued: a burst of 40 cuts a client that does not
    read."""
    ctl = ControllerProc(tmp_path / "controller",
                         extra=[*FAST, "--ws-max-queue", str(WS_MAX_QUEUE)])
    ctl.start()
    try:
        yield ctl
    finally:
        ctl.terminate()


async def scrape(api: httpx.AsyncClient) -> str:
    resp = await api.get("/metrics")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    return resp.text


async def samples(api: httpx.AsyncClient) -> dict[str, float]:
    return parse_metrics(await scrape(api))


# name as the parser gives it (a counter's without _total) -> type
EXPECTED_TYPES = {
    "tether_edge_sessions": "gauge",
    "tether_nodes": "gauge",
    "tether_edge_frames": "counter",
    "tether_edge_apply_seconds": "histogram",
    "tether_edge_node_outbox_frames": "gauge",
    "tether_edge_downlink_unacked_frames": "gauge",
    "tether_edge_sessions_resumed": "counter",
    "tether_edge_sessions_closed": "counter",
    "tether_edge_handshakes_admitted": "counter",
    "tether_edge_handshakes_refused": "counter",
    "tether_handshakes_refused": "counter",
    "tether_command_queued_to_delivered_seconds": "histogram",
    "tether_command_delivered_to_done_seconds": "histogram",
    "tether_ws_subscribers": "gauge",
    "tether_ws_clients": "gauge",
    "tether_ws_closed": "counter",
    "tether_ws_cut_off": "counter",
    "tether_dead_letters": "counter",
    "tether_store_refused_items": "counter",
    "tether_store_up": "gauge",
    "tether_leader": "gauge",
}


async def test_every_series_is_exposed_with_its_type_from_the_start(
        api: httpx.AsyncClient) -> None:
    text = await scrape(api)
    types = metric_types(text)
    for name, kind in EXPECTED_TYPES.items():
        assert types.get(name) == kind, (name, types.get(name))
    values = parse_metrics(text)
    assert values["tether_store_up"] == 1 and values["tether_leader"] == 1
    for state in ("online", "degraded", "stale", "offline"):
        assert values[f'tether_nodes{{liveness="{state}"}}'] == 0
    assert values["tether_command_queued_to_delivered_seconds_count"] == 0
    assert values['tether_edge_apply_seconds_bucket{le="+Inf"}'] == 0


async def test_frames_sessions_and_nodes_are_counted_as_they_happen(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    ident = await enroll()
    client = await edge.session(ident)
    await client.send(Frame(t="edge.heartbeat", id="hb-1", b={"outbox": {"depth": 3}}))
    await client.recv_type("edge.heartbeat_ack")
    await client.send(Frame(t="node.event", s="evt", q=1, id="e1",
                            b={"kind": "app", "data": {"n": 1}}))
    await client.recv_type("edge.ack")

    async def liveness_counted() -> bool:  # the store's figures: at most every 2 s
        return (await samples(api)).get('tether_nodes{liveness="online"}') == 1
    await eventually(liveness_counted, what="the node counted online")
    values = await samples(api)
    frames = 'tether_edge_frames_total{{direction="{}",type="{}"}}'
    assert values[frames.format("in", "edge.hello")] == 1
    assert values[frames.format("in", "edge.heartbeat")] == 1
    assert values[frames.format("in", "node.event")] == 1
    assert values[frames.format("out", "edge.heartbeat_ack")] == 1
    assert values[frames.format("out", "edge.welcome")] == 1
    assert values[frames.format("out", "edge.ack")] >= 1
    assert values["tether_edge_apply_seconds_count"] == 1  # one batch, one observation
    assert values["tether_edge_sessions"] == 1
    assert values["tether_edge_handshakes_admitted_total"] == 1
    assert values["tether_edge_node_outbox_frames"] == 3  # what the node reported

    await client.send(Frame(t="edge.goodbye", b={"reason": "bye"}))
    await client.expect_close()
    resumed = await edge.session(ident, session_id=client.welcome.b["session_id"]
                                 if client.welcome else None)
    assert resumed.welcome is not None

    async def closed_and_resumed() -> bool:
        values = await samples(api)
        return (values.get('tether_edge_sessions_closed_total{code="1000"}') == 1
                and values["tether_edge_handshakes_admitted_total"] == 2)
    await eventually(closed_and_resumed, what="the goodbye counted under 1000")


async def test_a_refused_handshake_is_counted_under_its_close_code(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    ident = await enroll()
    impostor = Identity(ident.node_id, Ed25519PrivateKey.generate())
    client = await edge.open()
    await client.send(client.hello(impostor))
    assert (await client.expect_close()).code == 4401

    async def counted() -> bool:
        return (await samples(api)).get(
            'tether_edge_handshakes_refused_total{code="4401"}') == 1
    await eventually(counted, what="the refusal counted under 4401")
    assert (await samples(api))["tether_edge_handshakes_admitted_total"] == 0


async def test_a_command_run_end_to_end_is_observed_once_in_each_latency_histogram(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    ident = await enroll()
    client = await edge.session(ident)
    command_id, _ = await delivered_command(api, client, ident.node_id)
    values = await samples(api)
    assert values["tether_command_queued_to_delivered_seconds_count"] == 1
    assert values["tether_command_delivered_to_done_seconds_count"] == 0
    assert values['tether_edge_frames_total{direction="out",type="cmd.deliver"}'] == 1
    await client.send(status(1, command_id, "running"))
    await client.send(status(2, command_id, "succeeded", exit_code=0))

    async def done() -> bool:
        return (await samples(api))["tether_command_delivered_to_done_seconds_count"] == 1
    await eventually(done, what="delivered to done observed")
    values = await samples(api)
    assert values["tether_command_queued_to_delivered_seconds_count"] == 1  # not twice
    assert values["tether_command_delivered_to_done_seconds_sum"] < NET_TIMEOUT_S


async def test_a_slow_ws_client_dropped_is_counted(
        controller: ControllerProc, edge: Edge, enroll: Enroll,
        api: httpx.AsyncClient) -> None:
    ident = await enroll()
    node = await edge.session(ident)
    stalled = await stalled_subscriber(controller, f"monitor:{ident.node_id}")
    # A client that stops reading: what the kernel's socket buffers (up to 32 MiB on the
    # client's side here) and the transport take first is not "slow", so send far more
    # (~54 MB, as test_ws_flood does); past it the queue of WS_MAX_QUEUE overflows.
    sent = 0
    for q in range(1, 900):
        await node.send(Frame(t="monitor.packet", b={"topic": "t", "seq": q, "at_ms": 0,
                                                     "dropped": 0, "data": {"blob": "x" * 60_000}}))
        sent += 1
    code, _ = await close_code(stalled, NET_TIMEOUT_S)
    assert code == 4429

    async def all_counted() -> dict[str, float] | None:
        await node.heartbeat()
        values = await samples(api)
        key = 'tether_edge_frames_total{direction="in",type="monitor.packet"}'
        return values if values.get(key) == sent else None

    values = await eventually(all_counted, what="every packet counted")
    assert values["tether_ws_cut_off_total"] == 1
    assert values['tether_ws_closed_total{code="4429"}'] == 1


async def test_ws_clients_are_counted_while_connected_and_their_close_by_code(
        controller: ControllerProc, api: httpx.AsyncClient) -> None:
    url = controller.url.replace("http", "ws", 1) + "/ws"
    async with connect(url, subprotocols=["tether.v1.json"],  # type: ignore[list-item]
                       open_timeout=NET_TIMEOUT_S) as ws:
        await ws.send(json.dumps({"t": "hello", "b": {"token": controller.token}}))
        assert json.loads(await ws.recv())["t"] == "welcome"
        await ws.send(json.dumps({"t": "subscribe", "b": {"topics": ["nodes"]}}))
        while json.loads(await asyncio.wait_for(ws.recv(), NET_TIMEOUT_S))["t"] != "subscribed":
            pass
        values = await samples(api)
        assert values["tether_ws_subscribers"] == 1 and values["tether_ws_clients"] == 1

    async def closed() -> bool:
        values = await samples(api)
        return (values["tether_ws_clients"] == 0
                and values.get('tether_ws_closed_total{code="1000"}') == 1)
    await eventually(closed, what="the /ws client counted as gone, closed with 1000")


def test_metrics_require_an_operator_token_when_configured(tmp_path: Path) -> None:
    ctl = ControllerProc(tmp_path / "locked", extra=[*FAST, "--metrics-require-token"])
    ctl.start()
    try:
        anonymous = httpx.get(f"{ctl.url}/metrics", timeout=NET_TIMEOUT_S)
        assert anonymous.status_code == 401, anonymous.text
        assert anonymous.json()["error"]["code"] == "unauthorized"
        wrong = httpx.get(f"{ctl.url}/metrics", timeout=NET_TIMEOUT_S,
                          headers={"Authorization": "Bearer not-a-token"})
        assert wrong.status_code == 401
        allowed = httpx.get(f"{ctl.url}/metrics", timeout=NET_TIMEOUT_S,
                            headers={"Authorization": f"Bearer {ctl.token}"})
        assert allowed.status_code == 200
        assert parse_metrics(allowed.text)["tether_store_up"] == 1
    finally:
        ctl.terminate()


async def test_frame_types_and_close_codes_a_node_chooses_cannot_grow_the_series(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    client = await edge.session(await enroll())
    for i in range(20):  # hostile: a new type per frame
        await client.send(Frame(t=f"made.up{i}", id=f"m{i}", b={}))
    for _ in range(20):
        assert (await client.recv_type("error")).b["code"] == "unknown_type"
    await client.ws.close(code=4321)  # a close code outside the table

    async def closed() -> bool:
        return (await samples(api)).get('tether_edge_sessions_closed_total{code="other"}') == 1
    await eventually(closed, what="the session's odd close code counted as 'other'")
    values = await samples(api)
    assert values['tether_edge_frames_total{direction="in",type="other"}'] == 20
    assert not [name for name in values if "made.up" in name or "4321" in name]


def test_a_close_code_label_is_a_known_code_none_or_other() -> None:
    assert [code_label(c) for c in (1000, 1006, 1015, 4401, 4429, 4995)] == [
        "1000", "1006", "1015", "4401", "4429", "4995"]
    assert {code_label(c) for c in (999, 1016, 3000, 4000, 4321, 4999, 65535, -1)} == {"other"}
    assert code_label(None) == "none"
