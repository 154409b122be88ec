"""``tether nodes show``'s media-plane lines: the node's ``rtc`` report as the controller
serves it (``/api/v1/nodes/{id}``: the node's last ``node.rtc``, docs/protocol.md).

Rule: the report came from a node, a peer. The controller checked it (protocol/rtc.py
``NodeRtcReport``), but the CLI trusts neither its shape nor its text: any JSON renders
(a missing or odd part is ``-``), every value goes through :func:`~.render.human` (control
and format characters escaped), each is clipped to :data:`MAX_FIELD` characters (a
replacement's reason to :data:`MAX_REASON`), and at most the protocol's bounds of peers
and replacements are shown, with a line saying how many more there were.
"""

from __future__ import annotations

import datetime
from typing import Any

from tether.protocol.rtc import MAX_REPORT_HISTORY, MAX_REPORT_PEERS, SUBFLOW_NAMES

from .render import MISSING, human

MAX_FIELD = 64
MAX_REASON = 200


def _clip(value: Any, limit: int = MAX_FIELD) -> str:
    """``value`` as one terminal-safe line of at most ``limit`` characters before escaping
    (a string is clipped first, so an escape is never cut in half; escaping shows each
    control character as up to 6)."""
    if isinstance(value, str):
        return human(value[:limit]) + ("…" if len(value) > limit else "")
    text = human(value)  # a number, or whatever other JSON: escaped already
    return text if len(text) <= limit else text[:limit] + "…"


def _map(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _at(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1e11:
        return datetime.datetime.fromtimestamp(value, datetime.UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ")
    return _clip(value)


def _more(shown: int, total: int, what: str) -> list[str]:
    return [f"  ... {total - shown} more {what} not shown"] if total > shown else []


def rtc_show_lines(rtc: Any) -> list[str]:
    """The ``rtc`` part of a node view as lines (module Rule): a summary, then per peer its
    state, ICE state, candidate pair, negotiations and connections, then per subflow its
    state, bytes and errors, then the recent replacements with their reasons."""
    if rtc is None:
        return ["rtc           none reported (the node has sent no media-plane report)"]
    peers, history = _list(_map(rtc).get("peers")), _list(_map(rtc).get("history"))
    connected = sum(1 for p in peers if _map(p).get("state") == "connected")
    lines = [f"rtc           {len(peers)} peer(s), {connected} connected; "
             f"{len(history)} recent replacement(s)"]
    for peer in peers[:MAX_REPORT_PEERS]:
        p = _map(peer)
        lines.append(
            f"  peer {_clip(p.get('peer_session_id'))} with {_clip(p.get('remote'))}: "
            f"{_clip(p.get('state'))}, ice {_clip(p.get('ice_state'))}, "
            f"pair {_clip(p.get('candidate_pair'))}, "
            f"{_clip(p.get('negotiations_total'))} negotiation(s), "
            f"{_clip(p.get('connections_total'))} connection(s)")
        flows = _map(p.get("subflows"))
        # the known subflows in their order, then anything else the report holds (bounded)
        names = [n for n in SUBFLOW_NAMES if n in flows]
        names += [n for n in flows if n not in SUBFLOW_NAMES][:len(SUBFLOW_NAMES)]
        for name in names:
            f = _map(flows[name])
            lines.append(f"    {_clip(name):<9} {_clip(f.get('state')):<9} "
                         f"in {_clip(f.get('bytes_in'))} B  out {_clip(f.get('bytes_out'))} B"
                         f"  errors {_clip(f.get('errors_total'))}")
        if not names:
            lines.append(f"    subflows  {MISSING}")
    lines += _more(min(len(peers), MAX_REPORT_PEERS), len(peers), "peer(s)")
    recent = history[-MAX_REPORT_HISTORY:]
    for event in recent:
        h = _map(event)
        lines.append(f"  replaced {_clip(h.get('peer_session_id'))} at {_at(h.get('at'))}: "
                     f"{_clip(h.get('reason'), MAX_REASON)}")
    lines += _more(len(recent), len(history), "replacement(s)")
    return lines
