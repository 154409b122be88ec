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
from tether.tools.servers import HaproxyServer, NatsServer, PostgresServer, ServerUnavailable

from ..conftest import server_unavailable, started


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


async def _http_backend(name: str) -> asyncio.Server:
    """A loopback HTTP/1.1 server answering every request with 200 and its ``name`` (the
    health check's ``GET /api/v1/health`` too), closing each connection after the answer."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            body = name.encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                         % len(body) + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
    return await asyncio.start_server(serve, "127.0.0.1", 0)


def test_the_haproxy_config_balances_without_stickiness_and_checks_health() -> None:
    cfg = servers.haproxy_config(8080, [("r-1", "127.0.0.1:9001"), ("r-2", "127.0.0.1:9002")],
                                 check_inter_ms=250)
    lines = {line.strip() for line in cfg.splitlines()}
    assert {"mode http", "balance roundrobin", "option redispatch", "retries 3",
            "timeout tunnel 1h", "option httpchk GET /api/v1/health",
            "default-server check inter 250ms fall 2 rise 1", "bind 127.0.0.1:8080",
            "server r-1 127.0.0.1:9001", "server r-2 127.0.0.1:9002"} <= lines
    assert not [line for line in lines if "cookie" in line or "stick" in line]


async def test_haproxy_round_robins_and_takes_a_dead_backend_out() -> None:
    import httpx

    backends = {name: await _http_backend(name) for name in ("r-1", "r-2")}
    addresses = [(name, f"127.0.0.1:{srv.sockets[0].getsockname()[1]}")
                 for name, srv in backends.items()]
    try:
        async with started(HaproxyServer(addresses, check_inter_ms=100)) as lb, \
                httpx.AsyncClient(base_url=lb.url, timeout=5) as http:
            async def answers(count: int) -> list[str]:
                return [(await http.get("/x")).text for _ in range(count)]

            async with asyncio.timeout(15):  # until both passed their first check
                while set(await answers(4)) != {"r-1", "r-2"}:
                    await asyncio.sleep(0.05)
            backends["r-1"].close()
            await backends["r-1"].wait_closed()
            # a refused dial is redispatched at once; the check then takes r-1 out
            assert set(await answers(6)) == {"r-2"}
    finally:
        for srv in backends.values():
            srv.close()


async def test_a_missing_haproxy_is_reported_with_what_to_install(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servers, "find_binary", lambda name: None)
    server = HaproxyServer([("r-1", "127.0.0.1:1")])
    with pytest.raises(ServerUnavailable, match=r"not installed.*apt-get install haproxy"):
        await server.start()
    await server.close()
