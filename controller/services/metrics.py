"""What the controller records for Prometheus (``GET /metrics``, controller/api/metrics.py).

Every series lives in the :class:`~prometheus_client.CollectorRegistry` of one controller
process, built by app.py: never the library's global registry, since tests run several
controllers in one process. Two kinds of recording, chosen per series by its cost:

* **Counted where it happens, read at scrape time.** The edge gateway's per-frame and
  per-session counts are plain ints in :class:`EdgeCounters` (one dict increment per frame:
  the acked-throughput path is benchmarked; a prometheus-client ``Counter.labels().inc()``
  takes a lock and a label lookup), turned into samples by the scrape's collector. Other
  services' existing counters (admission, bus, monitor, the store's write queue) are read
  the same way: no double bookkeeping.
* **Histograms**, observed per batch or per command, never per frame:
  ``tether_edge_apply_seconds`` (:class:`EdgeCounters`) and the command latencies
  (:class:`CommandLatency`, observed by the store in the transaction's replica, after it
  commits).

Label values are bounded: frame types outside the handled set count as ``other``, close
codes outside the known table as ``other`` (a peer chooses both).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Histogram

from tether.protocol.errors import CloseCode

from ..domain.jobs import LIVENESS_STATES

# class A apply: one group commit, fsync included (ms), up to a store that struggles (s)
APPLY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# commands: a live node answers in milliseconds; a queued one waits for its node (hours)
COMMAND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   300.0, 1800.0, 3600.0, 21600.0, 86400.0)

# RFC 6455 codes a peer may close with, and ours (protocol/errors.py): anything else is
# 'other', so that a node choosing codes cannot grow the number of series.
_RFC6455_REGISTERED = 16  # 1000 to 1015
_KNOWN_CODES = frozenset({*range(CloseCode.NORMAL_CLOSURE,
                                 CloseCode.NORMAL_CLOSURE + _RFC6455_REGISTERED),
                          *(int(c) for c in CloseCode)})


def code_label(code: int | None) -> str:
    """A close code as a label value: the code, ``none`` (the peer's close carried none) or
    ``other`` (a code outside the known table)."""
    if code is None:
        return "none"
    return str(code) if code in _KNOWN_CODES else "other"


class EdgeCounters:
    """What the edge gateway counts, shared by its sessions (single event loop: no lock).

    * ``frames_in`` / ``frames_out``: frames by type (a batch envelope's frames each count,
      the envelope itself does not; a type without a handler counts as ``other``);
    * ``sessions_opened`` / ``sessions_resumed``: welcomes sent, and those that resumed the
      node's previous session (a reconnect);
    * ``sessions_closed``: welcomed sessions ended, by :func:`code_label` of the close code
      sent or received;
    * ``handshakes_refused``: connections this controller closed before a welcome, by code
      (4401 auth, 4403 disabled, 4408 no hello in time, 4429 overloaded, 4400...);
    * ``apply_seconds``: per class A batch, from its first frame's arrival to its commit.
    """

    __slots__ = ("apply_seconds", "frames_in", "frames_out", "handshakes_refused",
                 "sessions_closed", "sessions_opened", "sessions_resumed")

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.frames_in: defaultdict[str, int] = defaultdict(int)
        self.frames_out: defaultdict[str, int] = defaultdict(int)
        self.sessions_opened = 0
        self.sessions_resumed = 0
        self.sessions_closed: defaultdict[str, int] = defaultdict(int)
        self.handshakes_refused: defaultdict[str, int] = defaultdict(int)
        self.apply_seconds = Histogram(
            "tether_edge_apply_seconds",
            "Class A batches: first frame received to the commit that holds them",
            buckets=APPLY_BUCKETS, registry=registry)


class WsCounters:
    """``/ws`` clients of this process: ``clients`` connected now (past the sub-protocol
    check), and ``closed`` by :func:`code_label` of the close code sent (4429: a slow client
    dropped, its queue overflowed or a send waited too long; 4401 a bad token; 4403 a
    foreign origin; 1006 the client went away)."""

    __slots__ = ("clients", "closed")

    def __init__(self) -> None:
        self.clients = 0
        self.closed: defaultdict[str, int] = defaultdict(int)


class CommandLatency:
    """The command latency histograms; the store calls :meth:`delivered` and :meth:`done`
    after committing the transition (store/base.py ``CommandLatencySink``), so each command
    is observed once per transition, by the replica that applied it."""

    __slots__ = ("delivered_to_done", "queued_to_delivered")

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.queued_to_delivered = Histogram(
            "tether_command_queued_to_delivered_seconds",
            "Commands: submitted to applied by the node (its cmd ack, or a status implying it)",
            buckets=COMMAND_BUCKETS, registry=registry)
        self.delivered_to_done = Histogram(
            "tether_command_delivered_to_done_seconds",
            "Commands: delivered to a terminal status reported by the node",
            buckets=COMMAND_BUCKETS, registry=registry)

    def delivered(self, seconds: float) -> None:
        self.queued_to_delivered.observe(max(0.0, seconds))

    def done(self, seconds: float) -> None:
        self.delivered_to_done.observe(max(0.0, seconds))


class NodeRows(Protocol):
    async def list_nodes(self) -> Iterable[Any]: ...


async def nodes_by_liveness(store: NodeRows, view: Callable[[Any], dict[str, Any]]
                            ) -> dict[str, int]:
    """Every enrolled node counted by its liveness as ``view`` judges it (services/nodes.py:
    live sessions here from memory, nodes held by other replicas from their touches), each
    state present, zero or not."""
    counts = dict.fromkeys(LIVENESS_STATES, 0)
    for row in await store.list_nodes():
        state = view(row)["liveness"]
        counts[state] = counts.get(state, 0) + 1
    return counts
