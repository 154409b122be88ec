"""Monitor packet bounds, pure: last N per topic, max topics per node, node-side drops."""

from __future__ import annotations

from tether.controller.services.monitor import MonitorStore
from tether.node.monitor import MonitorBuffer


def test_the_controller_keeps_the_last_n_packets_per_topic_and_forgets_old_topics() -> None:
    store = MonitorStore(per_topic=3, max_topics=2)
    for i in range(5):
        store.add("n1", {"topic": "temp", "seq": i})
    assert [p["seq"] for p in store.get("n1")["temp"]] == [2, 3, 4]
    store.add("n1", {"topic": "fan", "seq": 5})
    store.add("n1", {"topic": "temp", "seq": 6})  # temp is now the freshest
    store.add("n1", {"topic": "door", "seq": 7})  # evicts fan, the least recently updated
    assert set(store.get("n1")) == {"temp", "door"}
    assert store.dropped_topics_total == 1
    assert store.get("n1", "nope") == {"nope": []}
    assert store.get("unknown") == {}


def test_the_node_buffer_drops_the_oldest_and_the_next_packet_says_how_many() -> None:
    buf = MonitorBuffer(max_packets=2)
    for i in range(5):
        buf.add("t", {"i": i})
    packets = buf.take()
    assert [p.data["i"] for p in packets] == [3, 4]
    assert [p.seq for p in packets] == [4, 5]
    assert packets[0].dropped == 3 and packets[1].dropped == 0
    assert buf.dropped_total == 3 and len(buf) == 0
