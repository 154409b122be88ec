"""controller/services/rtc_metrics.py, sans I/O: the fleet's rtc gauges count peers and
subflows in the protocol's fixed sets, whatever shape the reports have."""

from __future__ import annotations

from typing import Any

from tether.controller.services.rtc_metrics import rtc_figures
from tether.protocol.rtc import PEER_STATES, SUBFLOW_NAMES, SUBFLOW_STATES

FIXED_SUBFLOWS = {(n, s) for n in SUBFLOW_NAMES for s in SUBFLOW_STATES}


def test_no_reports_give_every_series_at_zero() -> None:
    figures = rtc_figures([])
    assert figures.peers == dict.fromkeys(PEER_STATES, 0)
    assert set(figures.subflows) == FIXED_SUBFLOWS and not any(figures.subflows.values())


def test_peers_and_subflows_are_summed_over_the_reports() -> None:
    report = {"peers": [{"state": "connected", "subflows": {"file": {"state": "degraded"},
                                                            "video": {"state": "failed"}}},
                        {"state": "failed", "subflows": {"control": {"state": "failed"}}}]}
    figures = rtc_figures([report, report, {}])
    assert figures.peers["connected"] == 2 and figures.peers["failed"] == 2
    assert figures.subflows[("file", "degraded")] == 2
    assert figures.subflows[("video", "failed")] == 2
    assert figures.subflows[("control", "failed")] == 2
    assert sum(figures.subflows.values()) == 6


def test_anything_outside_the_fixed_sets_is_skipped_and_adds_no_key() -> None:
    hostile: list[Any] = [
        "text", None, {"peers": "all"},
        {"peers": [5, None, {"state": ["connected"],
                             "subflows": {"video": {"state": ["failed"]}}}]},
        {"peers": [{"state": "node-7", "subflows": {"screen": {"state": "failed"},
                                                     "video": {"state": "on fire"},
                                                     "audio": "failed", 5: {}}}]},
        {"peers": [{"state": {"x": 1}, "subflows": [("video", "failed")]}]},
    ]
    figures = rtc_figures(hostile)
    assert set(figures.peers) == set(PEER_STATES) and not any(figures.peers.values())
    assert set(figures.subflows) == FIXED_SUBFLOWS and not any(figures.subflows.values())
