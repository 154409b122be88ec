"""Controllers on PostgreSQL and NATS, as processes: the ``controller`` fixture here is a
replica on this test's own database and nats-server, so the root ``make_node`` fixture enrolls
nodes with it; ``make_replica`` starts more replicas on the same store and bus."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tether.protocol.frames import Frame
from tether.protocol.signing import generate_private_key

from ..controller.conftest import Edge, Identity
from ..helpers import FAST, ControllerProc


@pytest.fixture
def make_replica(tmp_path: Path, pg_dsn: str, nats_url: str
                 ) -> Iterator[Callable[..., ControllerProc]]:
    """make_replica(replica_id, *flags): a started controller process on the test's
    PostgreSQL database and nats-server, data dir ``tmp_path/<replica_id>``, with more
    ``serve`` flags if given; stopped after the test."""
    replicas: list[ControllerProc] = []

    def make(replica_id: str, *flags: str) -> ControllerProc:
        ctl = ControllerProc(tmp_path / replica_id, extra=[
            *FAST, "--durability", "process", "--store", pg_dsn, "--bus", nats_url,
            "--replica-id", replica_id, *flags])
        replicas.append(ctl)
        ctl.start()
        return ctl

    try:
        yield make
    finally:
        for ctl in replicas:
            if ctl.proc is not None:
                ctl.terminate()


@pytest.fixture
def controller(make_replica: Callable[[str], ControllerProc]) -> ControllerProc:
    """Replica ``r-a``: the controller the root ``make_node`` fixture enrolls nodes with."""
    return make_replica("r-a")


@pytest.fixture
async def edges() -> AsyncIterator[Callable[[ControllerProc], Edge]]:
    """edges(ctl): raw edge connections to ``ctl`` (tests/controller/conftest.py), all
    closed after the test."""
    made: list[Edge] = []

    def make(ctl: ControllerProc) -> Edge:
        made.append(Edge(ctl.url))
        return made[-1]
    try:
        yield make
    finally:
        for edge in made:
            await edge.aclose()


async def enrolled(api: httpx.AsyncClient, node_id: str) -> Identity:
    """A new identity for ``node_id``, enrolled through ``api`` with a join token of its own."""
    ident = Identity(node_id, generate_private_key())
    join = await api.post("/api/v1/join-tokens", json={"uses": 1})
    assert join.status_code == 201, join.text
    resp = await api.post("/v1/edge/enroll", json={
        "join_token": join.json()["token"], "node_id": node_id,
        "public_key": ident.public_b64, "labels": {}})
    assert resp.status_code == 201, resp.text
    return ident


def event(q: int, kind: str) -> Frame:
    """A class A ``node.event`` at ``q``."""
    return Frame(t="node.event", s="evt", q=q, id=f"ev-{q}", b={"kind": kind, "data": {}})
