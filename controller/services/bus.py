"""The event bus: what ``/ws`` subscribers (browsers, ``tether exec``) see, and only this.

Every event a subscriber receives was published through an :class:`EventBus`. The local bus
wraps this process's :class:`~.events.EventHub` (bounded per subscriber, overflow cuts the
subscriber off: see events.py); a cross-process bus (NATS) publishes to its peers as well
and feeds what they publish into its own hub, behind the same interface.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from .events import EventHub, Subscriber


@dataclass(frozen=True, slots=True)
class BusStats:
    """Counters for diag and /metrics (this process's subscribers)."""

    subscribers: int
    published_total: int
    cut_off_total: int
    unencodable_total: int


class EventBus(Protocol):
    def publish(self, topic: str, kind: str, data: dict[str, Any], *,
                size: int | None = None) -> None:
        """Offer an event to the topic's subscribers, without waiting. ``size`` is what
        the caller already measured of ``data`` (events.py ``data_size``)."""
        ...

    def subscribe(self, sub: Subscriber, topics: Iterable[str]) -> None:
        """Deliver events of ``topics`` to ``sub`` from now on (in addition to its others)."""
        ...

    def unsubscribe(self, sub: Subscriber) -> None:
        """Deliver nothing more to ``sub``."""
        ...

    def count_unencodable(self) -> None:
        """A subscriber skipped an event it could not encode (browser.py)."""
        ...

    def stats(self) -> BusStats: ...


class LocalBus:
    """:class:`EventBus` within this process."""

    def __init__(self, hub: EventHub | None = None) -> None:
        self.hub = hub or EventHub()

    def publish(self, topic: str, kind: str, data: dict[str, Any], *,
                size: int | None = None) -> None:
        self.hub.publish(topic, kind, data, size=size)

    def subscribe(self, sub: Subscriber, topics: Iterable[str]) -> None:
        self.hub.subscribe(sub, list(topics))

    def unsubscribe(self, sub: Subscriber) -> None:
        self.hub.unsubscribe(sub)

    def count_unencodable(self) -> None:
        self.hub.unencodable_total += 1

    def stats(self) -> BusStats:
        hub = self.hub
        return BusStats(subscribers=hub.subscribers, published_total=hub.published_total,
                        cut_off_total=hub.cut_off_total,
                        unencodable_total=hub.unencodable_total)
