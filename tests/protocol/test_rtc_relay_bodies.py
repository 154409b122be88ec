"""``rtc.link`` and ``rtc.relay`` bodies (protocol/rtc.py), parsed once and bounded."""

from __future__ import annotations

from typing import Any

import pytest

from tether.protocol.errors import BadFrame
from tether.protocol.rtc import MAX_RELAY_DATA, MAX_RELAY_WINDOW, RtcLink, RtcRelay

IDS = {"node_id": "n-2", "peer_session_id": "link-x"}


def test_a_relay_frame_round_trips_with_data_and_an_ack() -> None:
    body = RtcRelay.from_body({**IDS, "to": "node:n-2", "seq": 3, "data": b"\x00" * 10,
                               "ack": 7, "window": 4096})
    assert (body.seq, body.data, body.ack, body.window, body.to) == (
        3, b"\x00" * 10, 7, 4096, "node:n-2")
    assert RtcRelay.from_body(body.to_body()) == body


def test_relay_data_may_come_as_base64url_text() -> None:
    assert RtcRelay.from_body({**IDS, "seq": 1, "data": "AAEC"}).data == b"\x00\x01\x02"


@pytest.mark.parametrize("hostile", [
    {"seq": 1, "data": b"x" * (MAX_RELAY_DATA + 1)},  # over the data limit
    {"seq": 0, "data": b"x"},  # data without a seq
    {"seq": True, "data": b"x"},  # a bool is not a seq
    {"seq": -1, "data": b"x"},
    {"seq": 1 << 53, "data": b"x"},
    {"seq": 1, "data": 12},  # not bytes
    {"seq": 1, "data": "not base64!"},
    {"ack": 1},  # an ack without its window
    {"ack": 1, "window": MAX_RELAY_WINDOW + 1},
    {"ack": 1, "window": 1.5},
    {"window": 10},  # a window without an ack
    {},  # neither data nor ack
    {"seq": 1, "data": b"x", "from": "somewhere"},  # not an address
    {"seq": 1, "data": b"x", "node_id": "N-UPPER"},
    {"seq": 1, "data": b"x", "peer_session_id": "a b"},
])
def test_a_hostile_relay_body_is_a_bad_frame(hostile: dict[str, Any]) -> None:
    with pytest.raises(BadFrame):
        RtcRelay.from_body({**IDS, **hostile})


def test_a_link_round_trips_and_names_another_node() -> None:
    link = RtcLink(node_id="n-2", peer_session_id="link-x", from_="node:n-1",
                   expires_at_ms=1_700_000_000_000)
    assert RtcLink.from_body(link.to_body()) == link
    for bad in ({"from": "client:abc"}, {"from": None}, {"expires_at_ms": True},
                {"expires_at_ms": -1}, {"expires_at_ms": "soon"}):
        with pytest.raises(BadFrame):
            RtcLink.from_body({**link.to_body(), **bad})
