"""The node's Prometheus metrics, served on its loopback status port (``GET /metrics``,
node/health.py) through prometheus-client, in a registry of the runtime's own.

Every figure is read when scraped from what the runtime already keeps (its streams, the
sidecar's last transport report, its buffers, its incidents): nothing is counted twice and
nothing here runs between scrapes. The sidecar's figures are as of its last report, and
absent while no sidecar ever reported (``state`` in ``tether_node_link_state``: the link as
the sidecar last saw it, ``unknown`` before that).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tether.common.tasks import live_tasks

if TYPE_CHECKING:
    from .runtime import NodeRuntime

LINK_STATES = ("disconnected", "connecting", "connected", "stopped", "unknown")
RTC_PEER_STATES = ("new", "connecting", "connected", "failed", "closed")
RTC_SUBFLOWS = ("control", "file", "video", "audio")  # node/rtc/subflow.py SUBFLOWS


class NodeCollector(Collector):
    """The runtime's figures as samples, read at scrape time (no I/O)."""

    def __init__(self, runtime: NodeRuntime) -> None:
        self._runtime = runtime

    def collect(self) -> Iterator[Metric]:
        rt = self._runtime
        yield GaugeMetricFamily("tether_node_outbox_frames",
                                "Class A frames in the outbox, not yet acked by the controller",
                                value=rt.evt.unacked)
        yield CounterMetricFamily("tether_node_outbox_acked_total",
                                  "Class A frames the controller acked (this epoch's cursor)",
                                  value=rt.evt.acked)
        yield CounterMetricFamily("tether_node_cmd_applied_total",
                                  "Downlink frames applied (this epoch's cursor)",
                                  value=rt.cmd.applied)
        yield GaugeMetricFamily("tether_node_commands_running", "Commands running now",
                                value=len(rt.runners))
        ready = rt.readiness()
        yield GaugeMetricFamily("tether_node_ready", "1 when /readyz answers 200",
                                value=int(bool(ready["ready"])))
        link = rt.link.status
        yield GaugeMetricFamily("tether_node_sidecar_attached",
                                "1 while the runtime is attached to its sidecar",
                                value=int(link.attached))
        yield CounterMetricFamily("tether_node_sidecar_restarts_total",
                                  "Sidecar processes restarted by the runtime",
                                  value=link.sidecar_restarts)
        yield from self._transport(rt.transport_view)
        incidents = CounterMetricFamily("tether_node_incidents_total",
                                        "Incidents recorded, by class", labels=["class"])
        for klass, count in sorted(rt.incidents.counts.items()):
            incidents.add_metric([klass], count)
        yield incidents
        yield GaugeMetricFamily("tether_node_logs_buffered_chunks",
                                "Log chunks waiting to be sent", value=len(rt.logs))
        yield CounterMetricFamily("tether_node_logs_dropped_total",
                                  "Log chunks dropped over the buffer's bound",
                                  value=rt.logs.dropped_total)
        yield CounterMetricFamily("tether_node_monitor_dropped_total",
                                  "Monitor packets dropped over the buffer's bound",
                                  value=rt.monitor.dropped_total)
        tasks = live_tasks()  # None when scraped off the loop (a test calling collect)
        if tasks is not None:
            yield GaugeMetricFamily("tether_node_asyncio_tasks",
                                    "asyncio tasks alive in the runtime (flat when nothing "
                                    "leaks)", value=tasks)
        yield from self._rtc(rt.rtc.status() if rt.rtc is not None else {"peers": []})

    @staticmethod
    def _rtc(view: dict[str, Any]) -> Iterator[Metric]:
        """The media plane (node/rtc): kept apart from readiness, never part of it."""
        peers = GaugeMetricFamily("tether_node_rtc_peers", "WebRTC peers open, by state",
                                  labels=["state"])
        states = Counter(p["state"] for p in view["peers"])
        for state in RTC_PEER_STATES:
            peers.add_metric([state], states.get(state, 0))
        yield peers
        yield CounterMetricFamily("tether_node_rtc_negotiations_total",
                                  "Offer/answer rounds of the peers open now",
                                  value=sum(p["negotiations_total"] for p in view["peers"]))
        flow_bytes = CounterMetricFamily("tether_node_rtc_subflow_bytes_total",
                                         "Bytes per subflow of the peers open now",
                                         labels=["subflow", "direction"])
        flow_errors = CounterMetricFamily("tether_node_rtc_subflow_errors_total",
                                          "Errors per subflow of the peers open now",
                                          labels=["subflow"])
        totals: Counter[tuple[str, str]] = Counter()
        for peer in view["peers"]:
            for name, flow in peer["subflows"].items():
                totals[(name, "in")] += flow["bytes_in"]
                totals[(name, "out")] += flow["bytes_out"]
                totals[(name, "errors")] += flow["errors_total"]
        for name in RTC_SUBFLOWS:
            flow_bytes.add_metric([name, "in"], totals[(name, "in")])
            flow_bytes.add_metric([name, "out"], totals[(name, "out")])
            flow_errors.add_metric([name], totals[(name, "errors")])
        yield flow_bytes
        yield flow_errors
        errors = CounterMetricFamily("tether_node_rtc_errors_total",
                                     "rtc.* frames refused, by error code", labels=["code"])
        for code, count in sorted(view.get("errors_total", {}).items()):
            errors.add_metric([code], count)
        yield errors

    @staticmethod
    def _transport(view: dict[str, object]) -> Iterator[Metric]:
        state = view.get("state")
        state = state if isinstance(state, str) and state in LINK_STATES else "unknown"
        states = GaugeMetricFamily("tether_node_link_state",
                                   "The controller link as the sidecar last reported it",
                                   labels=["state"])
        for each in LINK_STATES:
            states.add_metric([each], int(each == state))
        yield states
        reconnects = view.get("reconnects")
        yield CounterMetricFamily("tether_node_reconnects_total",
                                  "Reconnects of the sidecar's controller link",
                                  value=reconnects if isinstance(reconnects, int) else 0)
        rtt_ms = view.get("rtt_ms")
        if isinstance(rtt_ms, int | float):
            yield GaugeMetricFamily("tether_node_rtt_seconds",
                                    "Heartbeat round trip to the controller",
                                    value=rtt_ms / 1000)


def node_registry(runtime: NodeRuntime) -> CollectorRegistry:
    """A registry holding the runtime's collector (one per runtime, never the global one)."""
    registry = CollectorRegistry()
    registry.register(NodeCollector(runtime))
    return registry
