"""protocol/rtc.py NodeRtcReport (``node.rtc``): a good report round-trips; every hostile
value is a BadFrame naming the field, never a crash."""

from __future__ import annotations

from typing import Any

import pytest

from tether.protocol.errors import BadFrame
from tether.protocol.rtc import MAX_REPORT_HISTORY, MAX_REPORT_PEERS, NodeRtcReport

FLOW = {"state": "open", "bytes_in": 10, "bytes_out": 20, "errors_total": 0}
PEER = {"peer_session_id": "p1", "remote": "client:c1", "state": "connected",
        "ice_state": "completed", "candidate_pair": "host", "negotiations_total": 3,
        "connections_total": 1, "subflows": {"control": FLOW, "video": FLOW}}
EVENT = {"peer_session_id": "p0", "at": 1_700_000_000.5, "reason": "replaced"}


def test_a_report_round_trips_and_drops_unknown_fields() -> None:
    body = {"peers": [{**PEER, "extra": "x"}], "history": [EVENT], "junk": 1}
    report = NodeRtcReport.from_body(body)
    assert NodeRtcReport.from_body(report.to_body()) == report
    assert "extra" not in report.peers[0] and report.history[0]["reason"] == "replaced"


def test_a_report_without_a_selected_pair_is_fine() -> None:
    peer = {k: v for k, v in PEER.items() if k != "candidate_pair"}
    assert NodeRtcReport.from_body({"peers": [peer]}).peers[0]["candidate_pair"] is None


@pytest.mark.parametrize("body", [
    {"peers": "x"},
    {"peers": [PEER] * (MAX_REPORT_PEERS + 1)},
    {"history": [EVENT] * (MAX_REPORT_HISTORY + 1)},
    {"peers": [1]},
    {"peers": [{**PEER, "state": "on fire"}]},
    {"peers": [{**PEER, "ice_state": None}]},
    {"peers": [{**PEER, "candidate_pair": "tcp"}]},
    {"peers": [{**PEER, "peer_session_id": "x" * 65}]},
    {"peers": [{**PEER, "remote": "evil"}]},
    {"peers": [{**PEER, "negotiations_total": -1}]},
    {"peers": [{**PEER, "negotiations_total": True}]},
    {"peers": [{**PEER, "subflows": {"screen": FLOW}}]},
    {"peers": [{**PEER, "subflows": {"video": {**FLOW, "bytes_in": 2 ** 70}}}]},
    {"peers": [{**PEER, "subflows": {"video": "open"}}]},
    {"history": [{**EVENT, "at": "now"}]},
    {"history": [{**EVENT, "reason": "r" * 1000}]},
])
def test_hostile_reports_are_bad_frames(body: dict[str, Any]) -> None:
    with pytest.raises(BadFrame):
        NodeRtcReport.from_body(body)
