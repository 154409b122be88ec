"""In-process event hub for live subscribers (/ws clients, `tether exec`).

Each subscriber has a queue bounded in events (``max_queue``) and in bytes
(``max_bytes``). An event's size is its data's compact JSON size (an upper bound, from
:func:`data_size`) plus the envelope, computed once per publish that has subscribers, so
the byte bound holds for large events (monitor packets, log chunks) too. One event is
always accepted by an empty queue, so a client is held to ``max_bytes`` plus one event.
Overflow policy: a subscriber that falls behind is cut off (``overflowed`` set, queue
closed) rather than slowing the publisher or growing memory; it reconnects and resyncs
from a snapshot.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tether.protocol.errors import BadFrame
from tether.protocol.values import plain_size

EVENT_OVERHEAD = 96  # the event frame's envelope around its data: topic, kind, at_ms


def data_size(data: object) -> int:
    """The compact JSON size of ``data`` (an upper bound), for byte budgets. Never raises:
    a value that is not plain data is charged the size of its ``repr``."""
    try:
        return plain_size(data)
    except (BadFrame, RecursionError):
        return len(repr(data))


@dataclass(slots=True)
class Event:
    """One published event, offered as the same object to every local subscriber.

    ``wire`` is the event as a /ws client receives it (the whole WebSocket frame), built by
    the first subscriber's pusher and shared by the rest (browser.py): a fan-out to 1,000
    clients encodes it once, not 1,000 times. Nothing else is ever changed after publish."""

    topic: str
    kind: str
    data: dict[str, Any]
    size: int  # bytes charged against the subscribers' byte bounds (module docstring)
    at_ms: float = field(default_factory=lambda: time.time() * 1000)  # when published
    wire: bytes | None = field(default=None, repr=False, compare=False)


@dataclass(eq=False)
class Subscriber:
    """One consumer's bounded queue of events. ``direct``, when set, is tried first while
    the queue is empty: it delivers the event at once and returns True, or returns False
    (the event is then queued); it must never raise. Order holds: nothing is delivered
    directly while anything is queued."""

    max_queue: int = 1024
    max_bytes: int = 16 << 20
    topics: set[str] = field(default_factory=set)
    overflowed: bool = False
    queued_bytes: int = 0
    queue: asyncio.Queue[Event | None] = field(init=False)
    direct: Callable[[Event], bool] | None = None

    def __post_init__(self) -> None:
        # One slot more than max_queue so the closing sentinel always fits.
        self.queue = asyncio.Queue(self.max_queue + 1)

    def offer(self, event: Event) -> None:
        if self.overflowed:
            return
        if self.direct is not None and self.queue.empty() and self.direct(event):
            return
        if self.queue.qsize() >= self.max_queue or (
                self.queued_bytes and self.queued_bytes + event.size > self.max_bytes):
            self.overflowed = True
            self.queue.put_nowait(None)
            return
        self.queued_bytes += event.size
        self.queue.put_nowait(event)

    async def get(self) -> Event | None:
        """The next event, or None once the subscriber was cut off."""
        event = await self.queue.get()
        if event is not None:
            self.queued_bytes -= event.size
        return event


class EventHub:
    def __init__(self) -> None:
        self._by_topic: dict[str, set[Subscriber]] = defaultdict(set)
        self.published_total = 0
        self.cut_off_total = 0
        # events a /ws endpoint could not encode as a frame (a value JSON cannot hold, or
        # over the frame limit): skipped, the subscriber kept (browser.py ``_push``)
        self.unencodable_total = 0

    def subscribe(self, sub: Subscriber, topics: list[str]) -> None:
        for topic in topics:
            sub.topics.add(topic)
            self._by_topic[topic].add(sub)

    def unsubscribe(self, sub: Subscriber) -> None:
        for topic in sub.topics:
            subs = self._by_topic.get(topic)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_topic[topic]
        sub.topics.clear()

    def publish(self, topic: str, kind: str, data: dict[str, Any], *,
                size: int | None = None) -> None:
        """Offer an event to the topic's subscribers. ``size`` is what the caller already
        knows of ``data``'s size (:func:`data_size`); without it, it is measured here, only
        when someone is subscribed."""
        subs = self._by_topic.get(topic)
        if not subs:
            return
        if size is None:
            size = data_size(data)
        event = Event(topic, kind, data, EVENT_OVERHEAD + len(topic) + len(kind) + size)
        self.published_total += 1
        for sub in list(subs):
            was = sub.overflowed
            sub.offer(event)
            if sub.overflowed and not was:
                self.cut_off_total += 1

    def has_subscribers(self, topic: str) -> bool:
        """Whether anyone here is subscribed to ``topic`` (a bus skips decoding otherwise)."""
        return topic in self._by_topic

    @property
    def subscribers(self) -> int:
        return len({s for subs in self._by_topic.values() for s in subs})
