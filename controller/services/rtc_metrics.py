"""The fleet's media plane as gauges (``GET /metrics``, controller/api/metrics.py), counted
with no I/O from the ``node.rtc`` reports of the sessions this replica holds (each replica
exposes its own nodes; Prometheus sums over replicas).

Rule (bounded cardinality): labels take values from the protocol's fixed sets only
(protocol/rtc.py ``PEER_STATES``, ``SUBFLOW_NAMES``, ``SUBFLOW_STATES``), every combination
always present (zero or not), never a node id, a peer id or any text a node chose. The
gateway checked each report already (``NodeRtcReport``); anything outside the sets is
skipped here all the same, so whatever a report holds, the set of series is fixed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tether.protocol.rtc import PEER_STATES, SUBFLOW_NAMES, SUBFLOW_STATES


@dataclass(frozen=True, slots=True)
class RtcFigures:
    """``peers``: peer sessions by state; ``subflows``: (subflow, state) -> how many peers'
    subflow is in that state. Both hold every key of the fixed sets."""

    peers: Mapping[str, int]
    subflows: Mapping[tuple[str, str], int]


def rtc_figures(reports: Iterable[Mapping[str, Any]]) -> RtcFigures:
    """Count the peers and subflows of ``reports`` (one per node session; ``{}`` for a node
    that has not reported) by the module's Rule."""
    peers = dict.fromkeys(PEER_STATES, 0)
    subflows = {(name, state): 0 for name in SUBFLOW_NAMES for state in SUBFLOW_STATES}
    for report in reports:
        listed = report.get("peers") if isinstance(report, Mapping) else None
        for peer in listed if isinstance(listed, list | tuple) else ():
            if not isinstance(peer, Mapping):
                continue
            state = peer.get("state")
            if isinstance(state, str) and state in peers:
                peers[state] += 1
            flows = peer.get("subflows")
            for name, flow in (flows.items() if isinstance(flows, Mapping) else ()):
                state = flow.get("state") if isinstance(flow, Mapping) else None
                if isinstance(name, str) and isinstance(state, str) \
                        and (name, state) in subflows:
                    subflows[name, state] += 1
    return RtcFigures(peers=peers, subflows=subflows)
