"""The NATS side of a replica as /metrics samples: what an operator watches when NATS goes
away and comes back (docs/operations.md, the failure table).

* ``tether_nats_connected`` is 0 while the link is down (it reconnects forever, by backoff);
  ``tether_nats_disconnects_total`` / ``tether_nats_reconnects_total`` count the outages.
* ``tether_nats_dropped_total`` counts what the link refused or failed to publish: while
  NATS is down, every nudge and every ``/ws`` event copy for the other replicas.
* ``tether_nats_nudges_unsent_total`` counts nudges that could not be queued: they are kept
  and published again after the reconnect (nats_router.py, Rule 2);
  ``tether_nats_nudges_received_total`` going up again shows routing to this replica is back.
* ``tether_nats_events_dropped_total`` counts ``/ws`` events the other replicas never got
  (at most once across replicas, nats_bus.py Rule 3); ``tether_nats_events_received_total``
  going up again shows the fan-out is back.
* ``tether_nats_peeks_total`` counts reads of another replica's memory for one node
  (services/peek.py); those not in ``tether_nats_peeks_answered_total`` showed this
  replica's own (nobody answered, or ``tether_nats_peek_replies_malformed_total``).
"""

from __future__ import annotations

from .nats_bus import NatsBus
from .nats_link import NatsLink
from .nats_router import NatsRouter

Sample = tuple[str, str, int]  # (metric name, Prometheus type, value)


def nats_samples(link: NatsLink, bus: NatsBus, router: NatsRouter) -> list[Sample]:
    """The replica's NATS gauges and counters, read now (no I/O)."""
    ls, bs, rs = link.stats(), bus.nats_stats(), router.stats()
    return [
        ("tether_nats_connected", "gauge", int(ls.connected)),
        ("tether_nats_disconnects_total", "counter", ls.disconnects_total),
        ("tether_nats_reconnects_total", "counter", ls.reconnects_total),
        ("tether_nats_published_total", "counter", ls.published_total),
        ("tether_nats_dropped_total", "counter", ls.dropped_total),
        ("tether_nats_queued", "gauge", ls.queued),
        ("tether_nats_slow_consumer_total", "counter", ls.slow_consumer_total),
        ("tether_nats_errors_total", "counter", ls.errors_total),
        ("tether_nats_held_subscriptions", "gauge", rs.held_subscriptions),
        ("tether_nats_nudges_sent_total", "counter", rs.nudges_sent_total),
        ("tether_nats_nudges_unsent_total", "counter", rs.nudges_unsent_total),
        ("tether_nats_nudges_received_total", "counter", rs.nudges_received_total),
        ("tether_nats_remote_calls_total", "counter", rs.remote_calls_total),
        ("tether_nats_remote_calls_done_total", "counter", rs.remote_calls_done_total),
        ("tether_nats_router_malformed_total", "counter", rs.malformed_total),
        ("tether_nats_peeks_total", "counter", rs.peeks_total),
        ("tether_nats_peeks_answered_total", "counter", rs.peeks_answered_total),
        ("tether_nats_peek_replies_malformed_total", "counter",
         rs.peek_replies_malformed_total),
        ("tether_nats_peeks_served_total", "counter", rs.peeks_served_total),
        ("tether_nats_events_sent_total", "counter", bs.sent_total),
        ("tether_nats_events_dropped_total", "counter", bs.dropped_total),
        ("tether_nats_events_received_total", "counter", bs.received_total),
        ("tether_nats_events_malformed_total", "counter", bs.malformed_total),
    ]
