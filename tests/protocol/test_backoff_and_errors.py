"""Reconnect delays and close codes (PROTOCOL.md §7), and the delivery classes of §3."""

from __future__ import annotations

from itertools import islice

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.protocol.backoff import backoff_delays
from tether.protocol.classes import (
    FRAME_CLASS,
    FRAME_STREAM,
    STREAMS,
    DeliveryClass,
    delivery_class,
)
from tether.protocol.errors import (
    ERROR_TABLE,
    AuthError,
    BadFrame,
    Conflict,
    FrameTooLarge,
    InvalidRequest,
    LocalProtocolError,
    NotFound,
    ProtocolError,
    RemoteProtocolError,
    StoreError,
    TetherError,
    close_code_for,
    http_status_for,
)
from tether.protocol.frames import Frame, parse_body
from tether.protocol.streams import StreamRegressed

PROPERTY = settings(max_examples=100, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

# --- backoff -------------------------------------------------------------------------------


class FakeUniform:
    """Stands in for random.uniform: records each (low, high) and returns a fixed fraction
    of the way between them."""

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction
        self.calls: list[tuple[float, float]] = []

    def __call__(self, low: float, high: float) -> float:
        self.calls.append((low, high))
        return low + self.fraction * (high - low)


def test_the_ceiling_doubles_from_half_a_second_and_stops_at_thirty() -> None:
    uniform = FakeUniform(1.0)
    delays = list(islice(backoff_delays(uniform), 10))
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]
    assert all(low == 0.0 for low, _ in uniform.calls)


def test_the_cap_is_reached_on_the_seventh_attempt_and_held_forever() -> None:
    uniform = FakeUniform(1.0)
    delays = list(islice(backoff_delays(uniform), 2000))
    assert delays.index(30.0) == 6
    assert set(delays[6:]) == {30.0}


@PROPERTY
@given(st.floats(min_value=0.0, max_value=1.0), st.integers(min_value=1, max_value=80))
def test_every_delay_n_is_full_jitter_within_zero_and_min_30_and_half_times_2_to_the_n(
        fraction: float, attempts: int) -> None:
    uniform = FakeUniform(fraction)
    for n, delay in enumerate(islice(backoff_delays(uniform), attempts)):
        ceiling = min(30.0, 0.5 * 2**n)
        assert uniform.calls[n] == (0.0, ceiling)
        assert 0.0 <= delay <= ceiling


def test_a_zero_jitter_draw_gives_an_immediate_retry() -> None:
    assert list(islice(backoff_delays(FakeUniform(0.0)), 3)) == [0.0, 0.0, 0.0]


def test_base_and_cap_can_be_changed() -> None:
    delays = list(islice(backoff_delays(FakeUniform(1.0), base_s=1.0, cap_s=5.0), 5))
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_a_fresh_generator_starts_again_from_the_base() -> None:
    """The 60 s reset of §7 is the caller making a new generator."""
    uniform = FakeUniform(1.0)
    first = backoff_delays(uniform)
    list(islice(first, 8))
    assert next(backoff_delays(uniform)) == 0.5


# --- errors and close codes ----------------------------------------------------------------

SECTION_7 = {
    "frame_too_large": 1009,
    "bad_frame": 4400,
    "protocol_error": 4400,
    "auth_failed": 4401,
    "node_disabled": 4403,
    "handshake_timeout": 4408,
    "heartbeat_timeout": 4408,
    "superseded": 4409,
    "unsupported_protocol": 4426,
    "rate_limited": 4429,
}


@pytest.mark.parametrize(("code", "close_code"), SECTION_7.items())
def test_error_codes_map_to_the_close_codes_of_protocol_md(code: str, close_code: int) -> None:
    assert close_code_for(code) == close_code
    assert TetherError("x", code=code).close_code == close_code


def test_an_unknown_error_code_closes_as_an_internal_error() -> None:
    assert close_code_for("no_such_code") == 1011
    assert http_status_for("no_such_code") == 500
    assert TetherError("x", code="no_such_code").close_code == 1011


def test_every_close_code_in_the_table_is_a_valid_websocket_close_code() -> None:
    for code, spec in ERROR_TABLE.items():
        assert 1000 <= spec.close_code <= 1014 or 4000 <= spec.close_code <= 4999, code
        assert 400 <= spec.http_status <= 599, code
        assert code == code.lower() and " " not in code


def test_enrollment_errors_have_the_http_statuses_of_section_8() -> None:
    assert http_status_for("invalid_token") == 401
    assert http_status_for("node_id_taken") == 409
    assert http_status_for("invalid_request") == 400


@pytest.mark.parametrize(("error", "code", "close_code"), [
    (BadFrame("x"), "bad_frame", 4400),
    (FrameTooLarge("x"), "frame_too_large", 1009),
    (RemoteProtocolError("x"), "protocol_error", 4400),
    (LocalProtocolError("x"), "protocol_error", 4400),
    (AuthError("x"), "auth_failed", 4401),
    (NotFound("x"), "not_found", 4400),
    (Conflict("x"), "conflict", 4400),
    (InvalidRequest("x"), "invalid_request", 4400),
    (StoreError("x"), "store_corrupt", 1011),
    (TetherError("x"), "internal", 1011),
])
def test_each_error_class_carries_its_default_code_and_close_code(
        error: TetherError, code: str, close_code: int) -> None:
    assert (error.code, error.close_code) == (code, close_code)
    assert error.message == "x" == str(error)


def test_protocol_errors_split_into_local_and_remote_under_one_root() -> None:
    assert issubclass(LocalProtocolError, ProtocolError)
    assert issubclass(RemoteProtocolError, ProtocolError)
    assert not issubclass(LocalProtocolError, RemoteProtocolError)
    for cls in (BadFrame, FrameTooLarge, StreamRegressed):
        assert issubclass(cls, RemoteProtocolError)
    assert issubclass(ProtocolError, TetherError)


def raised_by_parse_body_for_an_unknown_type() -> TetherError:
    try:
        parse_body(Frame(t="no.such.type"))
    except TetherError as exc:
        return exc
    raise AssertionError("parse_body accepted an unknown type")


def test_every_error_the_protocol_package_raises_has_a_code_in_the_table() -> None:
    """errors.TetherError: ``code`` is a key of ERROR_TABLE, so it travels with a meaningful
    close code and HTTP status.

    Fails today: streams.StreamRegressed uses code "stream_regressed" and frames.parse_body
    raises BadFrame(code="unknown_type"); neither is in ERROR_TABLE, so both would close
    with 1011 (internal error) instead of 4400."""
    errors = [StreamRegressed("peer cursor 9 is outside 0..3"),
              raised_by_parse_body_for_an_unknown_type()]
    missing = [e.code for e in errors if e.code not in ERROR_TABLE]
    assert missing == []
    assert all(e.close_code == 4400 for e in errors)


# --- delivery classes (PROTOCOL.md §3) -----------------------------------------------------


@pytest.mark.parametrize(("frame_type", "cls"), [
    ("cmd.deliver", DeliveryClass.A), ("cmd.status", DeliveryClass.A),
    ("bundle.status", DeliveryClass.A), ("twin.patch", DeliveryClass.A),
    ("edge.heartbeat", DeliveryClass.B), ("node.resources", DeliveryClass.B),
    ("log.chunk", DeliveryClass.C), ("monitor.packet", DeliveryClass.C),
    ("rtc.offer", DeliveryClass.E), ("diag.ping", DeliveryClass.E),
    ("edge.hello", DeliveryClass.CONTROL), ("edge.ack", DeliveryClass.CONTROL),
    ("no.such.type", None),
])
def test_frame_types_have_the_delivery_class_of_protocol_md(
        frame_type: str, cls: DeliveryClass | None) -> None:
    assert delivery_class(frame_type) is cls


def test_class_a_frames_travel_on_the_stream_of_their_direction() -> None:
    assert STREAMS == ("cmd", "evt")
    assert FRAME_STREAM["cmd.deliver"] == "cmd"
    assert {FRAME_STREAM[t] for t in ("cmd.status", "bundle.status", "node.event")} == {"evt"}
    class_a = {t for t, c in FRAME_CLASS.items() if c is DeliveryClass.A}
    assert class_a == set(FRAME_STREAM)


def test_a_close_reason_is_cut_to_123_utf8_bytes_never_inside_a_character() -> None:
    from tether.protocol.errors import close_reason

    assert close_reason("short") == "short"
    cut = close_reason("é" * 100)
    assert len(cut.encode()) <= 123 and cut == "é" * 61
    assert len(close_reason("x" * 500).encode()) == 123
    assert close_reason("\ud800 lone").encode()  # encodable, whatever the input
