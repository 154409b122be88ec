"""`tether controller serve --store/--bus/--replica-id`: the flags reach the config, app.build
composes the engines they name, and a controller that cannot reach its PostgreSQL or its NATS
exits at once with one line saying so (no traceback) and a non-zero status."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from tether.controller.app import build, start, stop
from tether.controller.config import ControllerConfig
from tether.controller.services.bus import LocalBus
from tether.controller.services.nats_bus import NatsBus
from tether.controller.services.nats_router import NatsRouter
from tether.controller.services.router import LocalRouter
from tether.controller.store.pg import PostgresDriver
from tether.controller.store.sqlite import SqliteDriver

from ..cli.test_serve_flags import served_config
from ..helpers import tether_cmd


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_cluster_flags_reach_the_config(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    config = served_config(monkeypatch, [
        "--data-dir", str(tmp_path), "--store", "postgresql://u@127.0.0.1/db",
        "--bus", "nats://127.0.0.1:4222", "--replica-id", "r-a"])
    assert (config.store_url, config.bus_url, config.replica_id) == (
        "postgresql://u@127.0.0.1/db", "nats://127.0.0.1:4222", "r-a")


def test_without_cluster_flags_the_controller_keeps_its_sqlite_file_and_local_services(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = served_config(monkeypatch, ["--data-dir", str(tmp_path)])
    assert (config.store_url, config.bus_url, config.replica_id) == (None, None, None)
    ctl = build(config)
    assert isinstance(ctl.driver, SqliteDriver)
    assert ctl.driver.db.path == tmp_path / "controller.db"
    assert isinstance(ctl.router, LocalRouter) and isinstance(ctl.bus, LocalBus)
    assert ctl.cluster is None


def test_a_postgres_store_and_a_nats_bus_are_composed_from_their_urls(tmp_path: Path) -> None:
    ctl = build(ControllerConfig(data_dir=tmp_path, store_url="postgresql://u@127.0.0.1/db",
                                 bus_url="nats://127.0.0.1:4222", replica_id="r-a"))
    assert isinstance(ctl.driver, PostgresDriver)
    assert isinstance(ctl.router, NatsRouter) and isinstance(ctl.bus, NatsBus)
    assert ctl.cluster is not None and ctl.cluster.link.replica_id == "r-a"
    assert ctl.replica_id == "r-a"


def test_a_replica_given_no_id_keeps_the_one_it_generated_in_its_data_dir(
        tmp_path: Path) -> None:
    first = build(ControllerConfig(data_dir=tmp_path)).replica_id
    assert first.startswith("r-")
    assert build(ControllerConfig(data_dir=tmp_path)).replica_id == first
    assert build(ControllerConfig(data_dir=tmp_path / "other")).replica_id != first


def test_a_replica_id_that_is_not_one_subject_token_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run(tether_cmd("controller", "serve", "--data-dir", str(tmp_path),
                                     "--replica-id", "a.b"),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "replica id 'a.b' must be" in done.stderr


def serve_until_exit(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tether_cmd("controller", "serve", "--data-dir", str(tmp_path),
                                     "--port", "0", *flags),
                          capture_output=True, text=True, timeout=60)


def test_a_controller_that_cannot_reach_postgresql_says_so_in_one_line_and_exits_1(
        tmp_path: Path) -> None:
    url = f"postgresql://tether:s3cret@127.0.0.1:{closed_port()}/tether"
    done = serve_until_exit(tmp_path, "--store", url)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "Traceback" not in out
    (line,) = [line for line in out.splitlines() if "controller cannot start" in line]
    assert "cannot open the store at postgresql://tether:***@127.0.0.1:" in line
    assert "s3cret" not in out  # the password never reaches the log
    assert not (tmp_path / "controller.url").exists()


def test_a_controller_that_cannot_reach_nats_says_so_in_one_line_and_exits_1(
        tmp_path: Path) -> None:
    done = serve_until_exit(tmp_path, "--bus", f"nats://127.0.0.1:{closed_port()}")
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "Traceback" not in out
    (line,) = [line for line in out.splitlines() if "controller cannot start" in line]
    assert "cannot connect to NATS at nats://127.0.0.1:" in line


async def test_a_controller_starts_and_stops_on_postgresql_and_nats(
        tmp_path: Path, pg_dsn: str, nats_url: str) -> None:
    ctl = build(ControllerConfig(data_dir=tmp_path, store_url=pg_dsn, bus_url=nats_url,
                                 durability="process", replica_id="r-a"))
    sweeper = await start(ctl)
    try:
        assert ctl.cluster is not None and ctl.cluster.link.connected
        assert ctl.run.controller_id.startswith("ctl-")
        assert (tmp_path / "admin.token").exists()
        read_ms, write_ms = await ctl.store.probe()
        assert read_ms >= 0 and write_ms >= 0
    finally:
        await stop(ctl, sweeper)
    assert not ctl.cluster.link.connected


async def test_a_replica_restarting_on_postgresql_closes_only_the_sessions_it_held(
        tmp_path: Path, pg_dsn: str) -> None:
    config = ControllerConfig(data_dir=tmp_path, store_url=pg_dsn, durability="process",
                              replica_id="r-a")
    ctl = build(config)
    sweeper = await start(ctl)
    try:
        for node_id, replica in (("n1", "r-a"), ("n2", "r-b")):
            token, _ = await ctl.store.create_join_token(ttl_s=60, uses=1, labels={},
                                                         actor="admin")
            await ctl.store.enroll(join_token=token, node_id=node_id,
                                   public_key=bytes(32), labels={})
            await ctl.store.open_session(
                node_id=node_id, remote="r", previous_session=None, evt_epoch=7,
                cmd_acked=0, runtime={}, sidecar={}, capabilities=[], labels={},
                replica_id=replica)
    finally:
        await stop(ctl, sweeper)  # as if it crashed: the store still says r-a holds n1
    again = build(config)
    sweeper = await start(again)
    try:
        (n1,), (n2,) = await again.store.sessions("n1"), await again.store.sessions("n2")
        assert n1.reason == "controller_restart" and n1.closed_at is not None
        assert n2.closed_at is None  # r-b's session is live: not this replica's to close
    finally:
        await stop(again, sweeper)
