"""The replica's NATS counters as /metrics samples (services/nats_metrics.py): what an
operator sees while NATS is down. No server needed: a link that never connected is down."""

from __future__ import annotations

from tether.controller.services.nats_bus import NatsBus
from tether.controller.services.nats_link import NatsLink
from tether.controller.services.nats_metrics import nats_samples
from tether.controller.services.nats_router import NatsRouter
from tether.controller.services.registry import SessionRegistry


async def test_a_replica_cut_off_from_nats_shows_it_and_counts_what_it_could_not_send() -> None:
    link = NatsLink("nats://127.0.0.1:1", replica_id="r-x")
    bus = NatsBus(link)
    router = NatsRouter(SessionRegistry(), link)
    router.nudge("n-elsewhere")  # held by another replica: kept for after the reconnect
    bus.publish("command:c-1", "command.updated", {"state": "succeeded"})
    samples = {name: (kind, value) for name, kind, value in nats_samples(link, bus, router)}
    assert samples["tether_nats_connected"] == ("gauge", 0)
    assert samples["tether_nats_nudges_unsent_total"] == ("counter", 1)
    assert samples["tether_nats_events_dropped_total"] == ("counter", 1)
    assert samples["tether_nats_dropped_total"] == ("counter", 1)  # the nudge the link refused
    assert all(name.startswith("tether_nats_") for name in samples)
    assert len(samples) == len(nats_samples(link, bus, router))  # one sample per name
