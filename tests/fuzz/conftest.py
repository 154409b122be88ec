"""One in-process controller app per fuzz module (a store on a temp directory): building it
costs about 100 ms, a fuzzed request on it about 1 ms."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .asgi import Controller


@pytest.fixture(scope="module")
def ctl() -> Iterator[Controller]:
    with Controller() as controller:
        yield controller


@pytest.fixture(scope="session", autouse=True)
def _close_the_shared_rest_target() -> Iterator[None]:
    """The REST target (``targets_asgi.controller()``) is built on first use and shared by
    the corpus replays; close it when the session ends, while the interpreter's thread pools
    still run (at exit they are shut down before ``atexit`` handlers, and the app's sweeper
    would log a failed sweep into the end of the test output)."""
    yield
    from . import targets_asgi

    targets_asgi._close()
    targets_asgi._ctl = None
