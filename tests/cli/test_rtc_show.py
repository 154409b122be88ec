"""``tether nodes show``'s rtc lines (cli/rtc_show.py) over any JSON a controller may serve
under ``rtc``: never a crash, never a raw control character, long text clipped, lists
bounded with a line saying how many were left out."""

from __future__ import annotations

from typing import Any

import pytest

from tether.cli.rtc_show import MAX_FIELD, MAX_REASON, rtc_show_lines
from tether.protocol.rtc import MAX_REPORT_HISTORY, MAX_REPORT_PEERS

ESC = "\x1b"


@pytest.mark.parametrize("rtc", [
    "all of them", 5, [], {"peers": "x", "history": 7}, {"peers": [5, None, [ESC]]},
    {"peers": [{"subflows": [1, 2]}, {"subflows": {ESC + "[2J": ESC, "video": 3}}]},
    {"peers": [{"peer_session_id": {"deep": [ESC + "]0;t\x07"]}, "state": True}]},
    {"history": [{"at": "yesterday", "reason": {"x": ESC}}, {"at": -1}, {"at": 1e30}, 9]},
], ids=["text", "number", "list", "odd-parts", "odd-peers", "odd-subflows", "nested",
        "odd-history"])
def test_any_shape_renders_without_crashing_or_raw_controls(rtc: Any) -> None:
    lines = rtc_show_lines(rtc)
    assert lines and lines[0].startswith("rtc ")
    text = "\n".join(lines)
    assert ESC not in text and "\x07" not in text and "None" not in text, text


def test_long_text_is_clipped_and_escaped_before_it_reaches_the_terminal() -> None:
    long_id = ESC + "[31m" + "p" * 5000
    lines = rtc_show_lines({"peers": [{"peer_session_id": long_id, "remote": "r" * 5000,
                                       "subflows": {"x" * 5000: {"state": "s" * 5000}}}],
                            "history": [{"peer_session_id": "p", "at": 0,
                                         "reason": "\u202e" + "why " * 5000}]})
    text = "\n".join(lines)
    assert ESC not in text and "\u202e" not in text
    assert "\\x1b[31m" in text and "\\u202e" in text
    assert max(len(line) for line in lines) < 6 * MAX_FIELD + 2 * MAX_REASON
    assert "p" * (MAX_FIELD - 5) + "…" in text and "p" * MAX_FIELD not in text


def test_peers_and_replacements_past_the_protocols_bounds_are_counted_not_shown() -> None:
    peers = [{"peer_session_id": f"p{i}", "state": "connected",
              "subflows": {"control": {"state": "open", "bytes_in": i, "bytes_out": 0,
                                       "errors_total": 0}}} for i in range(40)]
    history = [{"peer_session_id": f"h{i}", "at": 1.7e9, "reason": f"r{i}"}
               for i in range(30)]
    lines = rtc_show_lines({"peers": peers, "history": history})
    assert lines[0] == "rtc           40 peer(s), 40 connected; 30 recent replacement(s)"
    assert sum(line.startswith("  peer ") for line in lines) == MAX_REPORT_PEERS
    assert f"  ... {40 - MAX_REPORT_PEERS} more peer(s) not shown" in lines
    shown = [line for line in lines if line.startswith("  replaced ")]
    assert len(shown) == MAX_REPORT_HISTORY and shown[-1].endswith(": r29")  # the latest
    assert f"  ... {30 - MAX_REPORT_HISTORY} more replacement(s) not shown" in lines


def test_a_node_with_no_peers_says_so() -> None:
    assert rtc_show_lines({"peers": [], "history": []}) == [
        "rtc           0 peer(s), 0 connected; 0 recent replacement(s)"]
    assert rtc_show_lines(None)[0].startswith("rtc           none reported")
