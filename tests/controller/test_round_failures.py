"""A periodic loop's failed rounds (services/failures.py): a store outage is one warning
per outage, without a traceback; any other failure is logged with its traceback each time."""

from __future__ import annotations

import logging

import pytest

from tether.controller.services.failures import RoundFailures
from tether.protocol.errors import StoreError

log = logging.getLogger("test.rounds")


def test_an_outage_is_one_warning_and_a_bug_is_a_traceback_every_time(
        caplog: pytest.LogCaptureFixture) -> None:
    rounds = RoundFailures(log, failed="round failed", store_down="store down")
    down = StoreError("postgresql read failed", code="unavailable")
    with caplog.at_level(logging.INFO, logger="test.rounds"):
        for _ in range(3):
            rounds.failed(down)
        rounds.failed(ValueError("a bug"))
        rounds.failed(ValueError("a bug"))
        rounds.failed(down)  # a new outage after other failures: said again
        rounds.succeeded()
        rounds.failed(down)  # and after a good round
        rounds.failed(StoreError("corrupt"))  # not an outage: a traceback
    said = [(r.levelname, r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert said == [("WARNING", "store down", False), ("ERROR", "round failed", True),
                    ("ERROR", "round failed", True), ("WARNING", "store down", False),
                    ("WARNING", "store down", False), ("ERROR", "round failed", True)]
