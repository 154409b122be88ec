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
