"""PostgreSQL down under a replica (a real replica process on a PostgreSQL of this test's
own, stopped and started again): what the node and the operator see is what the error table
says, and nothing is lost.

* A session whose write cannot reach the store ends with 1013 (try again later: the node
  backs off and retries), and a hello meanwhile is refused with 1013; neither is a 1011 with
  a traceback in the log.
* ``/metrics`` still answers, with ``tether_store_up 0`` and every in-memory figure, so
  monitoring keeps seeing the replica exactly when it matters; the REST API answers 503.
* When PostgreSQL is back, the node's next hello is welcomed with the cursor of what was
  committed, and the event the outage refused is applied once, on resend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tether.protocol.errors import CloseCode
from tether.tools.servers import PostgresServer

from ..conftest import started
from ..controller.conftest import NET_TIMEOUT_S, Edge, eventually
from ..helpers import FAST, ControllerProc, metric
from .conftest import enrolled, event


@pytest.fixture
async def own_postgres() -> AsyncIterator[PostgresServer]:
    """A PostgreSQL of this test's own, to stop without disturbing the others."""
    async with started(PostgresServer()) as server:
        yield server


async def test_with_postgresql_down_sessions_end_1013_metrics_answer_and_nothing_is_lost(
        own_postgres: PostgresServer, nats_url: str, tmp_path: Path,
        edges: Callable[[ControllerProc], Edge]) -> None:
    dsn = await own_postgres.create_database("outage")
    ctl = ControllerProc(tmp_path / "r-a", extra=[
        *FAST, "--durability", "process", "--store", dsn, "--bus", nats_url,
        "--replica-id", "r-a"])
    ctl.start()
    try:
        async with httpx.AsyncClient(base_url=ctl.url, timeout=NET_TIMEOUT_S, headers={
                "Authorization": f"Bearer {ctl.token}"}) as api:
            ident = await enrolled(api, "n-out")
            session = await edges(ctl).session(ident)
            await session.send(event(1, "before"))
            assert (await session.recv_type("edge.ack")).b["acks"] == {"evt": 1}

            await own_postgres.stop()
            try:
                await session.send(event(2, "during"))
            except ConnectionClosed:
                pass
            closed = await session.expect_close(timeout_s=30)
            assert closed.code == CloseCode.TRY_AGAIN_LATER, closed
            assert not [f for f in closed.frames if f.t == "edge.ack"], closed.frames

            refused = await edges(ctl).open()
            await refused.send(refused.hello(ident))
            assert (await refused.expect_close(timeout_s=30)).code == \
                CloseCode.TRY_AGAIN_LATER

            scraped = await api.get("/metrics")
            assert scraped.status_code == 200, scraped.text
            assert metric(scraped.text, "tether_store_up") == 0
            assert metric(scraped.text, "tether_nats_connected") == 1
            assert "tether_dead_letters_total" not in scraped.text  # unknown, not 0
            assert (await api.get("/api/v1/nodes/n-out")).status_code == 503

            await own_postgres.start()

            async def welcomed() -> dict[str, int] | None:
                try:
                    again = await edges(ctl).session(ident)
                except (AssertionError, ConnectionClosed):
                    return None  # refused while the replica reconnects: retried
                assert again.welcome is not None
                await again.send(event(2, "during"))  # the node resends what was not acked
                return (await again.recv_type("edge.ack")).b["acks"]  # type: ignore[no-any-return]
            assert await eventually(welcomed, timeout_s=30, what="a welcome") == {"evt": 2}

            async def store_up() -> bool:  # the figures are read at most every 2 s
                return metric((await api.get("/metrics")).text, "tether_store_up") == 1
            await eventually(store_up, timeout_s=10, what="tether_store_up 1")
            events = (await api.get("/api/v1/nodes/n-out/events")).json()["items"]
            assert sorted(e["kind"] for e in events) == ["before", "during"]
    finally:
        ctl.terminate()
    log = ctl.log()
    assert "Traceback" not in log, log[-3000:]
    assert "the store is unavailable" in log
