"""Monitor packet bounds, pure: last N per topic, max topics per node, bytes per node and
in total, node-side drops."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

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


def test_a_node_keeps_its_monitor_packets_within_its_byte_budget_dropping_the_oldest() -> None:
    """Issue 11 item 3: 900 KB packets are bounded in bytes, not only in packets per topic."""
    store = MonitorStore(per_topic=100, max_topics=64, max_bytes_per_node=4 << 20,
                         max_bytes_total=1 << 30)
    blob = "x" * 900_000
    for i in range(300):
        store.add("n1", {"topic": f"t{i % 10}", "seq": i, "data": {"blob": blob}})
    assert store.node_bytes("n1") <= 4 << 20
    kept = sorted(p["seq"] for ring in store.get("n1").values() for p in ring)
    assert kept == list(range(300 - len(kept), 300))  # the newest survive
    assert store.dropped_packets_total == 300 - len(kept)
    assert store.dropped_bytes_total >= (300 - len(kept)) * 900_000


def test_all_nodes_together_stay_within_the_global_budget_the_least_recent_node_first() -> None:
    store = MonitorStore(max_bytes_per_node=1 << 20, max_bytes_total=3 << 20)
    blob = "y" * 500_000
    for node in range(10):
        for i in range(2):
            store.add(f"n{node}", {"topic": "t", "seq": i, "data": {"blob": blob}})
    assert store.bytes_total <= 3 << 20
    assert store.get("n0") == {}  # updated least recently: forgotten first
    assert len(store.get("n9")["t"]) == 2  # the freshest node keeps its packets
    assert store.dropped_packets_total == 20 - sum(
        len(r) for n in range(10) for r in store.get(f"n{n}").values())


def test_a_packet_larger_than_the_node_budget_on_its_own_is_dropped_and_counted() -> None:
    store = MonitorStore(max_bytes_per_node=1000)
    store.add("n1", {"topic": "t", "seq": 1, "data": {}})
    assert store.add("n1", {"topic": "t", "seq": 2, "data": {"blob": "z" * 5000}}) is False
    assert [p["seq"] for p in store.get("n1")["t"]] == [1]
    assert store.dropped_packets_total == 1 and store.dropped_bytes_total > 5000


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 5), st.integers(1, 400)),
                max_size=120))
def test_the_budgets_and_the_counts_hold_after_any_sequence_of_packets(
        adds: list[tuple[int, int, int]]) -> None:
    """Whatever arrives: every bound holds, what is kept plus what was dropped is what
    arrived (in packets and bytes), and the newest packet is kept when it fits."""
    store = MonitorStore(per_topic=3, max_topics=4, max_bytes_per_node=1000,
                         max_bytes_total=2000)
    for i, (node, topic, size) in enumerate(adds):
        packet = {"topic": f"t{topic}", "seq": i}
        kept = store.add(f"n{node}", packet, size=size)
        assert kept == (size <= 1000)
        if kept:
            assert store.get(f"n{node}", f"t{topic}")[f"t{topic}"][-1] is packet
    sizes = {i: size for i, (_, _, size) in enumerate(adds)}
    total_kept = kept_bytes = 0
    for node in range(4):
        rings = store.get(f"n{node}")
        assert len(rings) <= 4 and all(len(r) <= 3 for r in rings.values())
        node_bytes = sum(sizes[p["seq"]] for r in rings.values() for p in r)
        assert node_bytes == store.node_bytes(f"n{node}") <= 1000
        total_kept += sum(len(r) for r in rings.values())
        kept_bytes += node_bytes
    assert kept_bytes == store.bytes_total <= 2000
    assert total_kept + store.dropped_packets_total == len(adds)
    assert kept_bytes + store.dropped_bytes_total == sum(sizes.values())
