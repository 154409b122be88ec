"""Controllers on PostgreSQL and NATS, as processes: the ``controller`` fixture here is a
replica on this test's own database and nats-server, so the root ``make_node`` fixture enrolls
nodes with it; ``make_replica`` starts more replicas on the same store and bus."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

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
