"""The controller's latest monitor packets per node and topic, in memory (class C: not
persisted; a controller restart forgets them, nodes keep publishing).

Bounds and overflow policy (drop the oldest, count it):

* ``per_topic`` packets per (node, topic): past it, the topic's oldest packet goes;
* ``max_topics`` topics per node: past it, the topic updated least recently goes;
* ``max_bytes_per_node`` bytes per node: past it, the oldest packets of the node's topic
  updated least recently go, until the node is within its budget;
* ``max_bytes_total`` bytes for all nodes: past it, the same happens to the node updated
  least recently, then the next.

A packet's bytes are the compact JSON size its caller measured (services/events.py
``data_size``); a packet larger than a budget on its own is not kept. Every packet that
goes is counted in ``dropped_packets_total`` / ``dropped_bytes_total``.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from .events import data_size


@dataclass(eq=False)
class _Node:
    # topic -> ring of (size, packet), oldest first; topics in the order last updated
    topics: OrderedDict[str, deque[tuple[int, dict[str, Any]]]] = field(
        default_factory=OrderedDict)
    bytes: int = 0


class MonitorStore:
    def __init__(self, *, per_topic: int = 100, max_topics: int = 64,
                 max_bytes_per_node: int = 4 << 20, max_bytes_total: int = 256 << 20) -> None:
        self.per_topic = per_topic
        self.max_topics = max_topics
        self.max_bytes_per_node = max_bytes_per_node
        self.max_bytes_total = max_bytes_total
        self._nodes: OrderedDict[str, _Node] = OrderedDict()  # least recently updated first
        self.bytes_total = 0
        self.dropped_topics_total = 0
        self.dropped_packets_total = 0
        self.dropped_bytes_total = 0

    def add(self, node_id: str, packet: dict[str, Any], *, size: int | None = None) -> bool:
        """Keep ``packet`` (its ``topic`` names the ring) as the node's newest; False when
        it is larger than a budget on its own and was dropped instead."""
        if size is None:
            size = data_size(packet)
        if size > self.max_bytes_per_node or size > self.max_bytes_total:
            self._dropped(1, size)
            return False
        node = self._nodes.get(node_id)
        if node is None:
            node = self._nodes[node_id] = _Node()
        else:
            self._nodes.move_to_end(node_id)
        topic = packet["topic"]
        ring = node.topics.get(topic)
        if ring is None:
            if len(node.topics) >= self.max_topics:
                _, old = node.topics.popitem(last=False)
                self.dropped_topics_total += 1
                self._forget(node, len(old), sum(s for s, _ in old))
            ring = node.topics[topic] = deque()
        else:
            node.topics.move_to_end(topic)
        ring.append((size, packet))
        node.bytes += size
        self.bytes_total += size
        if len(ring) > self.per_topic:
            self._forget(node, 1, ring.popleft()[0])
        while node.bytes > self.max_bytes_per_node:
            self._drop_oldest(node)
        while self.bytes_total > self.max_bytes_total:
            lru_id, lru = next(iter(self._nodes.items()))
            self._drop_oldest(lru)
            if not lru.topics:
                del self._nodes[lru_id]
        return True

    def _drop_oldest(self, node: _Node) -> None:
        """Drop the oldest packet of the node's topic updated least recently."""
        topic, ring = next(iter(node.topics.items()))
        self._forget(node, 1, ring.popleft()[0])
        if not ring:
            del node.topics[topic]

    def _forget(self, node: _Node, packets: int, nbytes: int) -> None:
        node.bytes -= nbytes
        self.bytes_total -= nbytes
        self._dropped(packets, nbytes)

    def _dropped(self, packets: int, nbytes: int) -> None:
        self.dropped_packets_total += packets
        self.dropped_bytes_total += nbytes

    def node_bytes(self, node_id: str) -> int:
        node = self._nodes.get(node_id)
        return 0 if node is None else node.bytes

    def get(self, node_id: str, topic: str | None = None) -> dict[str, list[dict[str, Any]]]:
        node = self._nodes.get(node_id)
        topics = node.topics if node is not None else OrderedDict()
        if topic is not None:
            return {topic: [p for _, p in topics.get(topic, ())]}
        return {name: [p for _, p in ring] for name, ring in topics.items()}
