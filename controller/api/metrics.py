"""``GET /metrics``: the controller's Prometheus exposition, through prometheus-client.

The registry is the controller process's own (app.py builds it; services/metrics.py says
what is recorded where). This module adds one collector that reads, at scrape time, the
figures services already keep as plain numbers, and what the store holds (read at most every
2 s whatever the scrape rate, services/probe.py ``CachedStoreFigures``; while the store
cannot be reached the store's series are left out and ``tether_store_up`` is 0, every
in-memory figure still answers).

Who may read it (docs/security.md): anyone who reaches the port by default, as scrapers
expect; with ``--metrics-require-token`` (``ControllerConfig.metrics_require_token``) a
valid operator token of any role is required (``Authorization: Bearer``), else 401.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tether.common.tasks import live_tasks
from tether.protocol.errors import AuthError

from ..services.metrics import EdgeCounters, WsCounters
from ..services.probe import StoreFigures
from ..services.registry import LiveSession
from ..services.rtc_metrics import rtc_figures
from .routes import ApiServices

# The classic text format every Prometheus version scrapes (generate_latest writes it)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_USAGE_METRICS = (  # (metric, node_usage key, counter?)
    ("tether_store_kept_items", "items", False),
    ("tether_store_kept_bytes", "bytes", False),
    ("tether_store_pruned_items_total", "pruned_items", True),
    ("tether_store_pruned_bytes_total", "pruned_bytes", True),
    ("tether_store_refused_items_total", "refused_items", True),
    ("tether_store_refused_bytes_total", "refused_bytes", True),
)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _by_label(family: CounterMetricFamily | GaugeMetricFamily,
              values: dict[str, int]) -> CounterMetricFamily | GaugeMetricFamily:
    for label, value in sorted(values.items()):
        family.add_metric([label], value)
    return family


class ScrapeCollector(Collector):
    """Samples read when scraped from the services' own counters (no I/O: the store's
    figures are the last :attr:`figures` the route read, see :func:`metrics`)."""

    def __init__(self, api: ApiServices, edge: EdgeCounters, ws: WsCounters,
                 outbox_frames: Callable[[], tuple[int, int]],
                 sessions: Callable[[], Iterable[LiveSession]] = tuple) -> None:
        self._api = api
        self._edge = edge
        self._ws = ws
        self._outbox_frames = outbox_frames
        self._sessions = sessions
        self.figures = StoreFigures(up=False)

    def collect(self) -> Iterator[Metric]:
        yield from self._in_memory()
        yield from self._edge_counts()
        yield from self._from_store(self.figures)
        yield from self._rtc()
        ctl = self._api
        for name, kind, value in ctl.nats_samples() if ctl.nats_samples is not None else ():
            yield (_counter if kind == "counter" else _gauge)(name, "NATS (nats_metrics.py)",
                                                              value)

    def _in_memory(self) -> Iterator[Metric]:
        ctl = self._api
        gate, mon, bus, db = ctl.admission.hello, ctl.monitor, ctl.bus.stats(), ctl.probe.counters()
        pending_evt_bytes, pending_log_bytes = ctl.edge_pending()
        yield _gauge("tether_edge_sessions", "Edge sessions open on this replica",
                     len(ctl.presence))
        yield _gauge("tether_ws_subscribers", "/ws clients subscribed on this replica",
                     bus.subscribers)
        yield _gauge("tether_ws_clients", "/ws clients connected to this replica",
                     self._ws.clients)
        yield _by_label(CounterMetricFamily(
            "tether_ws_closed_total", "/ws connections closed, by close code (4429: too slow)",
            labels=["code"]), self._ws.closed)
        yield _counter("tether_ws_cut_off_total",
                       "/ws clients dropped for being slow (queue overflow, 4429)",
                       bus.cut_off_total)
        yield _counter("tether_ws_events_unencodable_total",
                       "/ws events skipped: not encodable as a frame", bus.unencodable_total)
        yield _counter("tether_events_published_total", "Events published to /ws topics",
                       bus.published_total)
        yield _counter("tether_store_batches_total", "Store group commits", db["batches_total"])
        yield _counter("tether_store_writes_total", "Store write transactions",
                       db["writes_total"])
        yield _gauge("tether_store_write_queue", "Store writes waiting", db["write_queue"])
        yield _gauge("tether_monitor_bytes", "Monitor packets held in memory, bytes",
                     mon.bytes_total)
        yield _counter("tether_monitor_dropped_packets_total",
                       "Monitor packets dropped over their budgets", mon.dropped_packets_total)
        yield _counter("tether_monitor_dropped_bytes_total",
                       "Monitor packet bytes dropped over their budgets", mon.dropped_bytes_total)
        yield _gauge("tether_prehello_waiting", "Edge connections waiting for their hello",
                     gate.waiting)
        yield _counter("tether_prehello_expired_total", "Connections silent past the hello "
                       "deadline", gate.expired_total)
        yield _counter("tether_prehello_evicted_total", "Connections pushed out of the hello "
                       "wait by newer ones", gate.evicted_total)
        yield _gauge("tether_edge_pending_evt_bytes", "Class A bytes awaiting the store",
                     pending_evt_bytes)
        yield _gauge("tether_edge_pending_log_bytes", "Log chunk bytes awaiting the store",
                     pending_log_bytes)
        yield _counter("tether_handshakes_refused_total",
                       "Edge handshakes refused by admission (4429)", ctl.admission.refused_total)
        for name, value in ctl.run.http_counters().items():
            yield _counter(f"tether_http_{name}", "HTTP server (common/http_deadlines.py)",
                           value)
        yield _gauge("tether_leader", "1 while this replica runs the fleet-wide singletons",
                     int(ctl.is_leader()))
        yield _counter("tether_downlink_wakes_total", "Sessions woken by the downlink check",
                       ctl.loop_lag.downlink_wakes_total)
        tasks = live_tasks()  # collect() runs on the loop's thread, in the /metrics route
        if tasks is not None:
            yield _gauge("tether_asyncio_tasks", "asyncio tasks alive in this process "
                         "(flat when nothing leaks)", tasks)

    def _edge_counts(self) -> Iterator[Metric]:
        edge = self._edge
        frames = CounterMetricFamily("tether_edge_frames_total",
                                     "Edge frames by direction and type",
                                     labels=["direction", "type"])
        for direction, counts in (("in", edge.frames_in), ("out", edge.frames_out)):
            for frame_type, value in sorted(counts.items()):
                frames.add_metric([direction, frame_type], value)
        yield frames
        yield _counter("tether_edge_handshakes_admitted_total",
                       "Edge handshakes welcomed (sessions opened)", edge.sessions_opened)
        yield _counter("tether_edge_sessions_resumed_total",
                       "Sessions that resumed the node's previous one (reconnects)",
                       edge.sessions_resumed)
        yield _by_label(CounterMetricFamily(
            "tether_edge_handshakes_refused_total",
            "Edge connections closed before a welcome, by close code", labels=["code"]),
            edge.handshakes_refused)
        yield _by_label(CounterMetricFamily(
            "tether_edge_sessions_closed_total", "Welcomed edge sessions ended, by close code",
            labels=["code"]), edge.sessions_closed)
        node_outbox, downlink_unacked = self._outbox_frames()
        yield _gauge("tether_edge_node_outbox_frames",
                     "Class A frames the nodes here report unacked in their outboxes",
                     node_outbox)
        yield _gauge("tether_edge_downlink_unacked_frames",
                     "Downlink frames sent to the nodes here and not yet acked",
                     downlink_unacked)

    def _rtc(self) -> Iterator[Metric]:
        """The media plane of the nodes held here (services/rtc_metrics.py: fixed label
        sets, every series present)."""
        figures = rtc_figures(s.snapshot().rtc for s in self._sessions())
        yield _by_label(GaugeMetricFamily(
            "tether_rtc_peers", "WebRTC peer sessions of the nodes on this replica, by state",
            labels=["state"]), dict(figures.peers))
        subflows = GaugeMetricFamily(
            "tether_rtc_subflows", "WebRTC subflows of those peers, by subflow and state "
            "(degraded or failed: that subflow alone is hurt)", labels=["subflow", "state"])
        for (name, state), value in sorted(figures.subflows.items()):
            subflows.add_metric([name, state], value)
        yield subflows

    @staticmethod
    def _from_store(figures: StoreFigures) -> Iterator[Metric]:
        yield _gauge("tether_store_up", "1 when the store answered the last read",
                     int(figures.up))
        if not figures.up:
            return  # unknown, not 0
        yield _counter("tether_dead_letters_total", "Poison frames recorded, all nodes",
                       figures.dead_letters_total)
        if figures.nodes_by_liveness:
            yield _by_label(GaugeMetricFamily(
                "tether_nodes", "Enrolled nodes by liveness (all replicas)",
                labels=["liveness"]), figures.nodes_by_liveness)
        # the store's budgets per ``what`` ('events', 'logs', 'node_logs'), summed over nodes:
        # typed from the start, with a sample per budget once a node has used it
        for name, key, counter in _USAGE_METRICS:
            family = (CounterMetricFamily if counter else GaugeMetricFamily)(
                name, "Store budgets (store/quotas.py), summed over nodes", labels=["what"])
            for what, row in sorted(figures.usage.items()):
                family.add_metric([what], row[key] or 0)
            yield family


@dataclass(frozen=True, slots=True, eq=False)
class MetricsServices:
    """What ``/metrics`` uses (``app.state.metrics``, built by :meth:`build`)."""

    registry: CollectorRegistry
    collector: ScrapeCollector
    api: ApiServices
    require_token: bool = False

    @classmethod
    def build(cls, registry: CollectorRegistry, *, api: ApiServices, edge: EdgeCounters,
              ws: WsCounters, outbox_frames: Callable[[], tuple[int, int]],
              require_token: bool = False,
              sessions: Callable[[], Iterable[LiveSession]] = tuple) -> MetricsServices:
        """Register the scrape collector in ``registry`` (once per process). ``sessions``:
        the node sessions this replica holds (their ``node.rtc`` reports feed the
        ``tether_rtc_*`` gauges)."""
        collector = ScrapeCollector(api, edge, ws, outbox_frames, sessions)
        registry.register(collector)
        return cls(registry=registry, collector=collector, api=api,
                   require_token=require_token)


async def _any_operator(request: Request, api: ApiServices) -> None:
    """Raise 401 unless the request carries a valid operator token, whatever its role (a
    scraper's least token: with roles, a viewer's)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip() or \
            await api.store.operator_role(token.strip()) is None:
        raise AuthError("/metrics needs an operator token here (--metrics-require-token): "
                        "send 'Authorization: Bearer <token>'", code="unauthorized")


async def metrics(request: Request) -> Response:
    """Prometheus text exposition (prometheus-client) of the controller's series; 401
    without a valid operator token when ``--metrics-require-token`` is set."""
    svc: MetricsServices = request.app.state.metrics
    if svc.require_token:
        await _any_operator(request, svc.api)
    svc.collector.figures = await svc.api.store_figures.get()
    return Response(generate_latest(svc.registry), media_type=CONTENT_TYPE)


ROUTES = [Route("/metrics", metrics, methods=["GET"])]
