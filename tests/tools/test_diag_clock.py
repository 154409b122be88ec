"""`tether diag route`'s clock offset: the fastest of a few health round trips, so that the
first request's connection setup (one-sided delay) does not skew the per-hop timings. The
clock and the controller are fakes: the seam under test is the estimate alone."""

from __future__ import annotations

from typing import Any

import pytest

from tether.tools.diag import route

OFFSET_MS = 250.0


class FakeApi:
    """Each get: ``before`` ms pass on the way in, the controller stamps its clock (ours +
    OFFSET_MS), ``after`` ms pass on the way back."""

    def __init__(self, clock: list[float], legs: list[tuple[float, float]]) -> None:
        self.clock, self.legs = clock, legs

    async def get(self, path: str) -> dict[str, Any]:
        assert path == "/api/v1/health"
        before, after = self.legs.pop(0)
        self.clock[0] += before / 1000
        stamped = self.clock[0] * 1000 + OFFSET_MS
        self.clock[0] += after / 1000
        return {"controller_id": "ctl-x", "time_ms": stamped}


async def test_the_fastest_round_trip_sets_the_offset_not_the_first(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1_700_000_000.0]
    monkeypatch.setattr(route.time, "time", lambda: clock[0])
    # the first request pays 40 ms of connecting on the way in only: alone it would be
    # off by 20 ms; the fastest (1 ms, symmetric) is exact
    legs = [(40.0, 1.0), (3.0, 1.0), (0.5, 0.5), (2.0, 2.0), (1.5, 4.0)]
    health, offset = await route._clock_offset(FakeApi(clock, legs))  # type: ignore[arg-type]
    assert health["controller_id"] == "ctl-x"
    assert offset == pytest.approx(OFFSET_MS, abs=1e-6)
    assert legs == []  # all samples taken


async def test_something_that_is_not_a_controller_gets_no_offset() -> None:
    class NotTether:
        async def get(self, path: str) -> dict[str, Any]:
            return {"status": "ok"}

    health, offset = await route._clock_offset(NotTether())  # type: ignore[arg-type]
    assert health == {"status": "ok"} and offset == 0.0
