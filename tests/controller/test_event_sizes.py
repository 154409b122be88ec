"""Events pushed to /ws clients are charged their real size (issue 11 item 3), so a
client's byte bound holds for large monitor packets and log chunks. Pure, no sockets."""

from __future__ import annotations

import math

from tether.controller.services.events import Event, EventHub, Subscriber, data_size


def test_a_subscriber_is_cut_off_by_bytes_when_large_events_queue_up() -> None:
    hub = EventHub()
    sub = Subscriber(max_queue=1024, max_bytes=4 << 20)
    hub.subscribe(sub, ["monitor:n1"])
    packet = {"node_id": "n1", "topic": "t", "data": {"blob": "x" * 900_000}, "seq": 1}
    for _ in range(10):  # 9 MB: far past 4 MiB, far below 1,024 events
        hub.publish("monitor:n1", "monitor.packet", packet)
    assert sub.overflowed
    assert hub.cut_off_total == 1
    assert sub.queued_bytes <= 4 << 20


def test_one_event_larger_than_the_byte_bound_still_reaches_an_idle_subscriber() -> None:
    hub = EventHub()
    sub = Subscriber(max_queue=16, max_bytes=100_000)
    hub.subscribe(sub, ["logs:c1"])
    hub.publish("logs:c1", "log.chunk", {"data": "x" * 500_000})
    assert not sub.overflowed and sub.queue.qsize() == 1
    hub.publish("logs:c1", "log.chunk", {"data": "y"})  # behind a full byte budget
    assert sub.overflowed


def test_the_size_of_an_event_is_its_json_size_and_measuring_never_raises() -> None:
    assert data_size({"data": "x" * 1000}) >= 1000
    assert data_size({"k": [1, 2.5, None, True]}) >= len('{"k":[1,2.5,null,true]}')
    assert data_size({"bad": math.nan}) > 0  # not plain data: charged its repr
    assert data_size({"big": 1 << 70}) > 0


def test_a_direct_subscriber_is_served_at_once_and_queues_while_it_cannot_be() -> None:
    """Subscriber.direct: tried only while nothing is queued (order holds); an event it
    declines is queued, and every later one queues behind it until the queue drains."""
    delivered: list[str] = []
    accept = {"now": True}

    def direct(event: Event) -> bool:
        if accept["now"]:
            delivered.append(event.kind)
        return accept["now"]

    hub = EventHub()
    sub = Subscriber(direct=direct)
    hub.subscribe(sub, ["t"])
    hub.publish("t", "a", {})
    accept["now"] = False
    hub.publish("t", "b", {})
    accept["now"] = True
    hub.publish("t", "c", {})  # b is queued: c must follow it, not overtake it
    assert delivered == ["a"]
    assert [sub.queue.get_nowait().kind for _ in range(2)] == ["b", "c"]  # type: ignore[union-attr]
    hub.publish("t", "d", {})  # queue drained: direct again
    assert delivered == ["a", "d"]
