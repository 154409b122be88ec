"""The cluster's servers as the tests start them (tools/servers.py, tests/conftest.py):
PostgreSQL in a temporary directory, a restartable nats-server, and a missing server reported
with its reason."""

from __future__ import annotations

import asyncio
import glob
from pathlib import Path

import asyncpg
import nats
import pytest

from tether.tools import servers
from tether.tools.servers import NatsServer, PostgresServer, ServerUnavailable

from ..conftest import server_unavailable


async def test_pg_dsn_is_a_fresh_database_on_a_durable_server_that_runs_unprivileged(
        pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn, timeout=5)
    try:
        tables = await conn.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        fsync = await conn.fetchval("SHOW fsync")
        listen = await conn.fetchval("SHOW listen_addresses")
        await conn.execute("CREATE TABLE t (v BIGINT)")
    finally:
        await conn.close()
    assert (tables, fsync, listen) == (0, "on", "127.0.0.1")


async def test_a_stopped_postgres_comes_back_on_the_same_port_with_its_data() -> None:
    async with PostgresServer() as server:
        dsn = await server.create_database("kept")
        conn = await asyncpg.connect(dsn, timeout=5)
        await conn.execute("CREATE TABLE t (v BIGINT); INSERT INTO t VALUES (7)")
        await conn.close()
        port = server.port
        await server.stop()
        with pytest.raises(OSError):
            await asyncpg.connect(dsn, timeout=2)
        await server.start()
        conn = await asyncpg.connect(dsn, timeout=5)
        assert (server.port, await conn.fetchval("SELECT v FROM t")) == (port, 7)
        await conn.close()
    assert server.dir is None


async def test_nats_messages_flow_and_the_client_reconnects_across_a_restart(
        nats_server: NatsServer, nats_url: str) -> None:
    reconnected = asyncio.Event()

    async def on_reconnect() -> None:
        reconnected.set()

    client = await nats.connect(nats_url, connect_timeout=2, reconnect_time_wait=0.1,
                                max_reconnect_attempts=-1, reconnected_cb=on_reconnect)
    try:
        sub = await client.subscribe("tether.test")
        await client.publish("tether.test", b"before")
        assert (await sub.next_msg(timeout=5)).data == b"before"

        await nats_server.restart()
        async with asyncio.timeout(15):
            await reconnected.wait()
        await client.publish("tether.test", b"after")
        assert (await sub.next_msg(timeout=5)).data == b"after"
    finally:
        await client.close()


@pytest.mark.parametrize("server", [PostgresServer, NatsServer])
async def test_a_missing_binary_is_reported_with_what_to_install(
        server: type[PostgresServer | NatsServer], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servers, "find_binary", lambda name: None)
    with pytest.raises(ServerUnavailable, match=r"not installed.*apt-get install"):
        await server().start()


def test_postgresql_binaries_are_found_where_debian_puts_them_when_not_on_path(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        server_unavailable(ServerUnavailable(
            "postgresql is not installed under /usr/lib/postgresql: 'make test' installs it "
            "when run as root (apt-get install postgresql)"))
    monkeypatch.setenv("PATH", str(tmp_path))
    found = servers.find_binary("initdb")
    assert found is not None and found.startswith("/usr/lib/postgresql/")
    assert servers.find_binary("no-such-binary") is None


def test_an_unavailable_server_skips_with_its_reason_but_fails_under_ci(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="nats-server is not installed"):
        server_unavailable(ServerUnavailable("nats-server is not installed"))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"nats-server is not installed.*CI"):
        server_unavailable(ServerUnavailable("nats-server is not installed"))
