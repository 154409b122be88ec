"""The controller's last-N monitor packets per node and topic, in memory (class C: not
persisted; a controller restart forgets them, nodes keep publishing).

Bounds: ``per_topic`` packets per (node, topic); ``max_topics`` topics per node — past it
the topic updated least recently is forgotten.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any


class MonitorStore:
    def __init__(self, *, per_topic: int = 100, max_topics: int = 64) -> None:
        self.per_topic = per_topic
        self.max_topics = max_topics
        self._nodes: dict[str, OrderedDict[str, deque[dict[str, Any]]]] = {}
        self.dropped_topics_total = 0

    def add(self, node_id: str, packet: dict[str, Any]) -> None:
        topics = self._nodes.setdefault(node_id, OrderedDict())
        topic = packet["topic"]
        ring = topics.get(topic)
        if ring is None:
            if len(topics) >= self.max_topics:
                topics.popitem(last=False)
                self.dropped_topics_total += 1
            ring = topics[topic] = deque(maxlen=self.per_topic)
        else:
            topics.move_to_end(topic)
        ring.append(packet)

    def get(self, node_id: str, topic: str | None = None) -> dict[str, list[dict[str, Any]]]:
        topics = self._nodes.get(node_id, OrderedDict())
        if topic is not None:
            return {topic: list(topics.get(topic, ()))}
        return {name: list(ring) for name, ring in topics.items()}
