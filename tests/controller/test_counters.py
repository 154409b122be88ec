"""Issue 11: what the controller drops, prunes, refuses or times out is counted where an
operator looks (`GET /api/v1/diag` and `/metrics`), and each counter moves when its event
happens. A real controller process with small budgets, raw edge clients."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tether.protocol.frames import Frame

from ..helpers import FAST, ControllerProc, parse_metrics
from .conftest import NET_TIMEOUT_S, Edge, Identity, eventually
from .test_poison import acks_and_errors

Enroll = Callable[..., Awaitable[Identity]]
MONITOR_BUDGET = 200_000
MIN_HELLO_S = 0.3
HELLO_S = 1.0


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[ControllerProc]:
    """Small budgets so that each counter can be made to move quickly: 200 kB of monitor
    packets per node, 1 KiB per node event, two dead letters kept per node, one silent
    socket waiting for its hello (for 1 s, never pushed out before 0.3 s), and 0.5 s for
    an HTTP request header."""
    ctl = ControllerProc(tmp_path / "controller", extra=[
        *FAST, "--max-monitor-bytes-per-node", str(MONITOR_BUDGET),
        "--max-node-event-bytes", "1024", "--max-dead-letters-per-node", "2",
        "--max-prehello", "1", "--min-hello-timeout-s", str(MIN_HELLO_S),
        "--handshake-timeout-s", str(HELLO_S), "--header-timeout-s", "0.5"])
    ctl.start()
    try:
        yield ctl
    finally:
        ctl.terminate()


async def metrics(api: httpx.AsyncClient) -> dict[str, float]:
    resp = await api.get("/metrics")
    assert resp.status_code == 200, resp.text
    return parse_metrics(resp.text)


async def diag(api: httpx.AsyncClient) -> dict[str, Any]:
    resp = await api.get("/api/v1/diag")
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


NAMES = ["tether_monitor_bytes", "tether_monitor_dropped_packets_total",
         "tether_monitor_dropped_bytes_total", "tether_prehello_waiting",
         "tether_prehello_expired_total", "tether_prehello_evicted_total",
         "tether_http_header_timeouts_total", "tether_http_body_timeouts_total",
         "tether_http_pending_headers_evicted_total", "tether_dead_letters_total",
         "tether_ws_events_unencodable_total", "tether_handshakes_refused_total",
         "tether_edge_pending_evt_bytes", "tether_edge_pending_log_bytes"]


async def test_every_counter_is_shown_at_zero_before_anything_happens(
        api: httpx.AsyncClient) -> None:
    samples = await metrics(api)
    for name in NAMES:
        assert samples[name] == 0, name
    body = await diag(api)
    assert body["monitor"]["dropped_packets_total"] == 0
    assert body["edge"]["prehello_evicted_total"] == 0
    assert body["http"]["header_timeouts_total"] == 0
    assert body["ws"]["unencodable_total"] == 0
    assert body["edge"]["pending_evt_bytes"] == 0


async def test_monitor_drops_refused_events_and_dead_letters_are_counted(
        edge: Edge, enroll: Enroll, api: httpx.AsyncClient) -> None:
    ident = await enroll()
    client = await edge.session(ident)
    blob = "m" * 60_000
    for seq in range(1, 6):  # 5 x 60 kB against a 200 kB budget: the oldest go
        await client.send(Frame(t="monitor.packet", b={
            "topic": "t", "seq": seq, "at_ms": 0, "dropped": 0, "data": {"blob": blob}}))
    await client.send(Frame(t="node.event", s="evt", q=1, id="big",
                            b={"kind": "app", "data": {"x": "y" * 4096}}))
    for q in (2, 3, 4):
        await client.send(Frame(t="node.event", s="evt", q=q, id=f"nan-{q}",
                                b={"kind": "app", "data": {"x": float("nan")}}))
    await client.send(Frame(t="node.event", s="evt", q=5, id="ok",
                            b={"kind": "app", "data": {"n": 5}}))
    best, errors = await acks_and_errors(client, until_evt=5, errors=3)
    assert best == 5 and set(errors) == {"nan-2", "nan-3", "nan-4"}
    await client.heartbeat()  # the monitor packets before it have been taken in

    samples = await metrics(api)
    assert samples["tether_monitor_dropped_packets_total"] >= 2
    assert samples["tether_monitor_dropped_bytes_total"] >= 2 * 60_000
    assert 0 < samples["tether_monitor_bytes"] <= MONITOR_BUDGET
    assert samples["tether_dead_letters_total"] == 3
    assert samples['tether_store_refused_items_total{what="events"}'] == 1
    assert samples['tether_store_refused_bytes_total{what="events"}'] > 4096
    assert samples['tether_store_kept_items{what="events"}'] == 2  # a note of the refusal

    body = await diag(api)
    assert body["monitor"]["dropped_packets_total"] == \
        samples["tether_monitor_dropped_packets_total"]
    assert body["monitor"]["bytes"] == samples["tether_monitor_bytes"]
    assert body["edge"]["dead_letters_total"] == 3
    assert body["quotas"]["events"]["refused_items"] == 1
    letters = (await api.get(f"/api/v1/nodes/{ident.node_id}/dead-letters")).json()
    assert letters["total"] == 3 and len(letters["items"]) == 2  # --max-dead-letters-per-node


async def test_silent_sockets_pushed_out_or_timed_out_before_their_hello_are_counted(
        edge: Edge, api: httpx.AsyncClient) -> None:
    first = await edge.open()
    await asyncio.sleep(MIN_HELLO_S + 0.2)  # the floor a waiter is never pushed out under
    second = await edge.open()  # --max-prehello 1: the first goes
    assert (await first.expect_close()).code == 4408
    assert (await metrics(api))["tether_prehello_evicted_total"] == 1
    assert (await second.expect_close(timeout_s=HELLO_S + NET_TIMEOUT_S)).code == 4408
    samples = await eventually(lambda: _moved(api, "tether_prehello_expired_total"),
                               what="the expired hello to be counted")
    assert samples["tether_prehello_evicted_total"] == 1
    assert samples["tether_prehello_waiting"] == 0
    body = await diag(api)
    assert body["edge"]["prehello_expired_total"] == 1
    assert body["edge"]["prehello_evicted_total"] == 1


async def _moved(api: httpx.AsyncClient, name: str) -> dict[str, float] | None:
    samples = await metrics(api)
    return samples if samples[name] > 0 else None


async def test_a_request_header_that_never_completes_is_counted(
        controller: ControllerProc, api: httpx.AsyncClient) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", controller.port)
    try:
        writer.write(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), NET_TIMEOUT_S)
        assert answer.startswith(b"HTTP/1.1 408"), answer
    finally:
        writer.close()
    samples = await metrics(api)
    assert samples["tether_http_header_timeouts_total"] == 1
    assert (await diag(api))["http"]["header_timeouts_total"] == 1
