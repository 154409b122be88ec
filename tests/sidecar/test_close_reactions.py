"""The sidecar reacts to each close code as ERROR_TABLE says (PROTOCOL.md §7): it stops for
good, or waits the ordinary backoff, the maximum, or the announced retry_after."""

from __future__ import annotations

import pytest

from tether.protocol.errors import CLOSE_TABLE, CloseCode, CloseSpec, Incident, Reaction
from tether.sidecar.transport import MAX_BACKOFF_S, is_final, reconnect_delay


class Draws:
    """Stands in for random.random: returns ``value`` and counts the draws."""

    def __init__(self, value: float) -> None:
        self.value, self.total = value, 0

    def __call__(self) -> float:
        self.total += 1
        return self.value


def delay(close_code: int | None, reason: str | None = None, *, backoff_s: float = 1.25,
          draw: float = 0.5) -> tuple[float, int]:
    draws = Draws(draw)
    return reconnect_delay(close_code, reason, backoff_s=backoff_s, random=draws), draws.total


@pytest.mark.parametrize("close_code", sorted(CLOSE_TABLE))
def test_the_sidecar_follows_the_table_for_every_close_code(close_code: CloseCode) -> None:
    reaction = CLOSE_TABLE[close_code].reaction
    assert is_final(close_code) is (reaction is Reaction.STOP)
    if reaction is Reaction.STOP:
        return
    expected = {Reaction.BACKOFF: (1.25, 0),
                Reaction.BACKOFF_MAX: (MAX_BACKOFF_S * 0.75, 1),
                Reaction.RETRY_AFTER: (7.0 * 1.25, 1)}[reaction]
    assert delay(int(close_code), "overloaded; retry_after=7") == expected


def test_the_codes_that_stopped_the_link_before_the_table_still_do() -> None:
    assert [c for c in (None, *CLOSE_TABLE, 1012) if is_final(c)] == [4403, 4409, 4426]


@pytest.mark.parametrize("close_code", [4401, 4995])
@pytest.mark.parametrize("draw", [0.0, 0.999])
def test_auth_failure_and_pin_mismatch_back_off_to_between_15_and_30_seconds(
        close_code: int, draw: float) -> None:
    waited, draws = delay(close_code, backoff_s=0.0, draw=draw)
    assert waited == MAX_BACKOFF_S * (0.5 + draw / 2) and 15.0 <= waited < 30.0
    assert draws == 1


def test_rate_limited_waits_the_announced_retry_after_plus_up_to_half() -> None:
    assert delay(4429, "overloaded; retry_after=4", draw=0.0) == (4.0, 1)
    assert delay(4429, "overloaded; retry_after=4", draw=1.0) == (6.0, 1)


def test_rate_limited_without_a_retry_after_jitters_the_ordinary_backoff() -> None:
    assert delay(4429, "overloaded", backoff_s=2.0, draw=1.0) == (3.0, 1)


@pytest.mark.parametrize("close_code", [None, 1000, 1001, 1006, 1009, 1011, 1012, 4400, 4408])
def test_other_closes_wait_the_ordinary_backoff_and_draw_nothing(
        close_code: int | None) -> None:
    assert delay(close_code, backoff_s=0.0) == (0.0, 0)  # 0: a reconnect asked for stays 0
    assert delay(close_code, backoff_s=3.5) == (3.5, 0)


@pytest.mark.parametrize(("reaction", "final", "expected"), [
    (Reaction.STOP, True, None),
    (Reaction.BACKOFF_MAX, False, (MAX_BACKOFF_S * 0.75, 1)),
    (Reaction.RETRY_AFTER, False, (7.0 * 1.25, 1)),
])
def test_changing_the_table_changes_what_the_sidecar_does(
        monkeypatch: pytest.MonkeyPatch, reaction: Reaction, final: bool,
        expected: tuple[float, int] | None) -> None:
    assert not is_final(4408) and delay(4408, "retry_after=7") == (1.25, 0)
    monkeypatch.setitem(CLOSE_TABLE, CloseCode.TIMEOUT,
                        CloseSpec("timeout", reaction, Incident.TRANSPORT))
    assert is_final(4408) is final
    if expected is not None:
        assert delay(4408, "retry_after=7") == expected
