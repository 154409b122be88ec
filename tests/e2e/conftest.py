"""End-to-end controllers on either backend.

One mechanism: a test marked ``both_backends`` (a whole module with ``pytestmark =
pytest.mark.both_backends``) that starts a controller runs twice, ``[sqlite]`` and
``[postgres+nats]``. The ``controller`` fixture and the ``make_controller`` factory here start
it on the ``backend`` of the test:

* ``sqlite``: the zero-setup default, the store in the controller's data dir;
* ``postgres+nats``: a database of the test's own on the session's PostgreSQL (``pg_dsn``)
  and a nats-server of its own (``nats_url``), as one replica would run in a cluster
  (``--durability process`` like tests/cluster). When either cannot start, that test is
  skipped with the reason (failed under CI), and its ``[sqlite]`` twin still runs.

Every other test (unmarked, or starting no controller) runs once, on SQLite.

Marked, whole modules: test_core_mesh, test_execution, test_exec_output, test_offline_runtime,
test_frame_cap, test_enroll_conflict, test_ws_slow_client (the controller's store and its
routing of commands, output, liveness, sessions, join tokens and /ws events); single tests
of test_sidecar, test_diag and test_cli_and_demo (those whose answer comes from the store or
the routing, each module says which). Left on SQLite only, with why:

* test_cli_and_demo's demo and CLI-only tests: ``tether demo`` is SQLite by definition;
* test_fleet: a thousand simulated nodes, for its cost; tests/cluster drives fleets against
  replicas on PostgreSQL + NATS;
* test_flood, test_overload, test_transport_options, test_reconnect_spread,
  test_enroll_pinning, test_readiness: the edge's socket handling, TLS, the sidecar's dialling
  and the node's readiness, the same code whichever store and bus are behind;
* test_apps, test_exec_policy, test_clean_stop, test_diag_node_exit: the node's own
  processes and policy, where the controller only carries commands.

The added cost is the marked tests' run time once more (a PostgreSQL controller starts about
as fast as a SQLite one); PostgreSQL itself starts once per session.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..helpers import FAST, ControllerProc

BACKENDS = ("sqlite", "postgres+nats")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "both_backends: run each test that starts a controller on SQLite and on "
                   "PostgreSQL + NATS (tests/e2e/conftest.py)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if (metafunc.definition.get_closest_marker("both_backends") is not None
            and "backend" in metafunc.fixturenames):
        metafunc.parametrize("backend", BACKENDS, indirect=True)


@dataclass(frozen=True)
class Backend:
    """Where a test's controllers keep their state and route: ``name`` is one of
    :data:`BACKENDS`, ``flags`` the ``serve`` flags that say so."""

    name: str
    flags: tuple[str, ...] = ()

    @property
    def durability(self) -> str:
        """What the controller reports as its store's durability on this backend."""
        return "fsync" if self.name == "sqlite" else "process"


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> Backend:
    """This test's backend: ``sqlite`` unless its module is marked ``both_backends``. Sync,
    so that PostgreSQL and NATS are set up only for ``postgres+nats``."""
    name: str = getattr(request, "param", "sqlite")
    if name == "sqlite":
        return Backend(name)
    assert name == "postgres+nats", name
    dsn: str = request.getfixturevalue("pg_dsn")
    url: str = request.getfixturevalue("nats_url")
    return Backend(name, ("--durability", "process", "--store", dsn, "--bus", url))


@pytest.fixture
def make_controller(tmp_path: Path, backend: Backend
                    ) -> Iterator[Callable[..., ControllerProc]]:
    """make_controller(name, extra=FAST): a started controller on the test's backend, data
    dir ``tmp_path/<name>`` (its replica id is ``name``); stopped after the test. Two on
    ``postgres+nats`` would be two replicas of one cluster."""
    made: list[ControllerProc] = []

    def make(name: str = "controller", *, extra: list[str] | None = None) -> ControllerProc:
        flags = [*(FAST if extra is None else extra), *backend.flags]
        if backend.flags:
            flags += ["--replica-id", name]
        ctl = ControllerProc(tmp_path / name, extra=flags)
        made.append(ctl)
        ctl.start()
        return ctl

    try:
        yield make
    finally:
        for ctl in made:
            if ctl.proc is not None:
                ctl.terminate()


@pytest.fixture
def controller(make_controller: Callable[..., ControllerProc]) -> ControllerProc:
    """The controller the root ``make_node`` fixture enrolls nodes with, on the backend."""
    return make_controller()
