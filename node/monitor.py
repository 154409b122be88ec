"""The class C uplink buffer for ``monitor.packet``.

Bounded to ``max_packets``; overflow policy: the oldest packet is dropped and counted, and
the next packet sent carries the count in ``dropped``.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from tether.protocol.frames import MonitorPacket


class MonitorBuffer:
    def __init__(self, *, max_packets: int = 1024) -> None:
        self.max_packets = max_packets
        self._packets: deque[MonitorPacket] = deque()
        self._seq = 0
        self._dropped_pending = 0
        self.dropped_total = 0

    def add(self, topic: str, data: dict[str, Any]) -> int:
        self._seq += 1
        if len(self._packets) >= self.max_packets:
            self._packets.popleft()
            self._dropped_pending += 1
            self.dropped_total += 1
        self._packets.append(MonitorPacket(topic=topic, data=data, seq=self._seq,
                                           at_ms=int(time.time() * 1000)))
        return self._seq

    def take(self) -> list[MonitorPacket]:
        packets = list(self._packets)
        self._packets.clear()
        if packets and self._dropped_pending:
            first = packets[0]
            packets[0] = MonitorPacket(topic=first.topic, data=first.data, seq=first.seq,
                                       at_ms=first.at_ms, dropped=self._dropped_pending)
            self._dropped_pending = 0
        return packets

    def __len__(self) -> int:
        return len(self._packets)
