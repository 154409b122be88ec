"""Fixtures: a real controller process and enrolled node processes, torn down after use; the
cluster's PostgreSQL and NATS, started here on loopback (tools/servers.py)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest

from tether.tools.servers import HaproxyServer, NatsServer, PostgresServer, ServerUnavailable

from .helpers import ControllerProc, NodeProc, wait_until

T = TypeVar("T")


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[ControllerProc]:
    ctl = ControllerProc(tmp_path / "controller")
    ctl.start()
    try:
        yield ctl
    finally:
        ctl.terminate()


@pytest.fixture
def make_node(tmp_path: Path, controller: ControllerProc
              ) -> Iterator[Callable[..., NodeProc]]:
    """make_node(node_id, start=True): an enrolled node process, online when returned."""
    nodes: list[NodeProc] = []

    def make(node_id: str, *, start: bool = True, extra: list[str] | None = None) -> NodeProc:
        node = NodeProc(tmp_path / node_id, node_id, extra=extra)
        node.enroll(controller)
        nodes.append(node)
        if start:
            node.start()
            api = controller.api()
            wait_until(lambda: api.liveness(node_id) == "online",
                       what=f"{node_id} online")
        return node

    try:
        yield make
    finally:
        for node in nodes:
            node.cleanup()


# -- PostgreSQL and NATS ------------------------------------------------------------------
# Started by the tests themselves, never found already running. When one cannot start, the
# test is skipped with the reason (pytest -ra prints it), except under CI, where everything
# must run and the test fails with that reason.


def server_unavailable(exc: ServerUnavailable) -> NoReturn:
    """Skip with the reason, or fail under CI (the CI environment variable is set)."""
    if os.environ.get("CI"):
        pytest.fail(f"{exc.reason} (CI runs every test: install it, see 'make sysdeps')")
    pytest.skip(exc.reason)


def require_binary(name: str, why: str) -> str:
    """``name``'s path; when it is missing, skip with the reason (fail under CI)."""
    found = shutil.which(name)
    if found is None:
        server_unavailable(ServerUnavailable(f"{name} is not installed ({why})"))
    return found


def _run(coro: Coroutine[Any, Any, T]) -> T:
    # On a loop of its own in another thread: a session fixture may first be set up from
    # inside a test's running loop, and it outlives that loop (the servers hold a Popen, not
    # a loop-bound transport, so any loop may stop them). Their start/stop waits are bounded.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="test-servers") as pool:
        return pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL for the session (fsync on). Tests take a database of their own through
    ``pg_dsn``; a test that stops or restarts a server starts its own PostgresServer."""
    server = PostgresServer()
    try:
        _run(server.start())
    except ServerUnavailable as exc:
        _run(server.close())
        server_unavailable(exc)
    try:
        yield server
    finally:
        _run(server.close())


@pytest.fixture
async def pg_dsn(postgres_server: PostgresServer) -> AsyncIterator[str]:
    """The DSN of a new, empty database on the session's PostgreSQL, dropped after the test
    (connections still open to it are ended)."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    dsn = await postgres_server.create_database(name)
    try:
        yield dsn
    finally:
        await postgres_server.drop_database(name)


ServerT = TypeVar("ServerT", PostgresServer, NatsServer, HaproxyServer)


@contextlib.asynccontextmanager
async def started(server: ServerT) -> AsyncIterator[ServerT]:
    """``server`` started for one test and closed after it; when it cannot start, the test
    is skipped with the reason (failed under CI, see :func:`server_unavailable`)."""
    try:
        await server.start()
    except ServerUnavailable as exc:
        await server.close()
        server_unavailable(exc)
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def nats_server() -> AsyncIterator[NatsServer]:
    """A nats-server of this test's own (JetStream off); ``restart()`` keeps its port."""
    async with started(NatsServer()) as server:
        yield server


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    """``nats://127.0.0.1:<port>`` of this test's nats-server."""
    return nats_server.url
