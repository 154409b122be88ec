"""The delivery-class table (PROTOCOL.md §3): which class and stream each frame type has.

Class A frames travel on a sequenced stream and must be persisted by the sender before
sending and by the receiver (effect + cursor, one transaction) before acking.
"""

from __future__ import annotations

from enum import StrEnum


class DeliveryClass(StrEnum):
    A = "A"  # must not lose: persisted, sequenced, acked, replayed
    B = "B"  # latest wins: not persisted, not replayed
    C = "C"  # bounded best effort: oldest dropped and counted on overflow
    E = "E"  # ephemeral: only meaningful while both ends are connected
    CONTROL = "control"  # session plumbing: handshake, acks, errors


CMD_STREAM = "cmd"  # controller -> node
EVT_STREAM = "evt"  # node -> controller
STREAMS = (CMD_STREAM, EVT_STREAM)

FRAME_CLASS: dict[str, DeliveryClass] = {
    "edge.challenge": DeliveryClass.CONTROL,
    "edge.hello": DeliveryClass.CONTROL,
    "edge.welcome": DeliveryClass.CONTROL,
    "edge.ack": DeliveryClass.CONTROL,
    "edge.resume": DeliveryClass.CONTROL,
    "edge.goodbye": DeliveryClass.CONTROL,
    "error": DeliveryClass.CONTROL,
    "edge.heartbeat": DeliveryClass.B,
    "edge.heartbeat_ack": DeliveryClass.B,
    "edge.runtime": DeliveryClass.B,
    "node.resources": DeliveryClass.B,
    "node.rtc": DeliveryClass.B,  # the node's WebRTC peers (protocol/rtc.py NodeRtcReport)
    "cmd.deliver": DeliveryClass.A,
    "cmd.status": DeliveryClass.A,
    "node.event": DeliveryClass.A,
    "bundle.status": DeliveryClass.A,
    "log.chunk": DeliveryClass.C,
    "monitor.packet": DeliveryClass.C,
    # interactive io (exec stdin, shell): ordered and windowed by their own seq and io.ack,
    # never stored; the command's start and end stay class A (docs/protocol.md)
    "io.input": DeliveryClass.E,
    "io.output": DeliveryClass.E,
    "io.ack": DeliveryClass.E,
    "io.resize": DeliveryClass.E,
    "io.signal": DeliveryClass.E,
}

# Class A frame types and the one stream each travels on.
FRAME_STREAM: dict[str, str] = {
    "cmd.deliver": CMD_STREAM,
    "cmd.status": EVT_STREAM,
    "node.event": EVT_STREAM,
    "bundle.status": EVT_STREAM,
}


def delivery_class(frame_type: str) -> DeliveryClass | None:
    """The class of ``frame_type``, or None for a type this version does not know
    (``twin.*`` is class A by PROTOCOL.md §3 but has no stream until it lands)."""
    if frame_type in FRAME_CLASS:
        return FRAME_CLASS[frame_type]
    if frame_type.startswith("twin."):
        return DeliveryClass.A
    if frame_type.startswith(("rtc.", "diag.")):
        return DeliveryClass.E
    return None
