"""The event bus across replicas, over NATS (the :class:`~.bus.EventBus` of a cluster).

Subjects: an event of topic ``T`` is published on ``<prefix>.ev.<token(T)>``, where
``token`` is nats_link.py's :func:`~.nats_link.subject_token` (``node:n-1`` stays
``node:n-1``; a ``.``, ``*`` or ``>`` in a topic is written ``%2E``, ``%2A``, ``%3E``). Each
replica subscribes to ``<prefix>.ev.*``. The payload is one MessagePack map:
``{"v": 1, "r": <replica id>, "k": <kind>, "d": <data>}``.

Delivery:

* Rule 1 (exactly once here): :meth:`NatsBus.publish` offers the event to this replica's own
  subscribers at once, synchronously, and to NATS; the replica never delivers it a second
  time (its connection is ``no_echo``, and a message carrying its own replica id is dropped
  and counted besides). Local subscribers thus see their replica's events in publish order
  even while NATS is down.
* Rule 2 (order): the events of one replica reach the others in publish order, per topic and
  across topics: one connection, one pump task publishing in queue order (nats_link.py), and
  NATS keeps the order of a connection's messages to a subscriber.
* Rule 3 (at most once across replicas): events are class C-like, as ``/ws`` treats them: a
  subscriber's view heals from its snapshot. While NATS is down, or the link's queue is full,
  the remote copy is dropped and counted; an event over ``max_event_bytes`` encoded, or one
  that cannot be encoded, is delivered locally only and counted.
* Rule 4 (hostile input): whatever arrives on the bus subjects is parsed once, bounded: a
  subject that is not an encoding of a topic, a payload over ``max_event_bytes``, not
  MessagePack, not the envelope above, or data that is not a plain map is counted
  (``malformed_total``) and dropped; the subscription carries on. A message for a topic
  nobody here subscribes to is not decoded at all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import msgpack
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from tether.protocol.codec import MAX_CONTAINER_LEN
from tether.protocol.errors import BadFrame
from tether.protocol.values import Limits, plain_map

from .bus import LocalBus
from .events import EventHub
from .nats_link import MAX_TOKEN_LEN, NatsLink, subject_token, token_text

logger = logging.getLogger(__name__)

ENVELOPE_VERSION = 1
MAX_KIND_LEN = 128
MAX_REPLICA_ID_LEN = 128


@dataclass(frozen=True, slots=True)
class NatsBusStats:
    """Counters of the NATS side of the bus (diag, /metrics)."""

    sent_total: int  # events handed to the link for the other replicas
    dropped_total: int  # not sent: NATS down or the link's queue full
    oversize_total: int  # not sent: over max_event_bytes encoded, or its topic too long
    unsendable_total: int  # not sent: data MessagePack cannot encode
    received_total: int  # messages from other replicas
    delivered_total: int  # of those, offered to subscribers here
    malformed_total: int  # dropped: hostile or broken (module docstring, Rule 4)
    echo_total: int  # dropped: carried this replica's own id


class NatsBus(LocalBus):
    """:class:`~.bus.EventBus` across replicas (module docstring for the rules): the local
    bus, plus a copy of each event to the other replicas. Call :meth:`start` after the
    link's, :meth:`close` before the link's."""

    def __init__(self, link: NatsLink, hub: EventHub | None = None, *,
                 max_event_bytes: int = 512 << 10, max_inbound_msgs: int = 65_536,
                 max_inbound_bytes: int = 64 << 20) -> None:
        super().__init__(hub)
        self._link = link
        self._subject_prefix = f"{link.prefix}.ev."
        self.max_event_bytes = max_event_bytes
        self._max_inbound_msgs = max_inbound_msgs
        self._max_inbound_bytes = max_inbound_bytes
        self._limits = Limits(max_depth=64, max_entries=MAX_CONTAINER_LEN,
                              max_bytes=2 * max_event_bytes, max_key_len=1024,
                              allow_bytes=True)
        self._sub: Subscription | None = None
        self.sent_total = 0
        self.dropped_total = 0
        self.oversize_total = 0
        self.unsendable_total = 0
        self.received_total = 0
        self.delivered_total = 0
        self.malformed_total = 0
        self.echo_total = 0

    async def start(self) -> None:
        """Subscribe to the other replicas' events (the link is connected)."""
        self._sub = await self._link.nc.subscribe(
            f"{self._subject_prefix}*", cb=self._on_msg,
            pending_msgs_limit=self._max_inbound_msgs,
            pending_bytes_limit=self._max_inbound_bytes)

    async def close(self) -> None:
        """Stop receiving (best effort: the link's drain ends the subscription anyway)."""
        sub, self._sub = self._sub, None
        if sub is not None and self._link.connected:
            try:
                await sub.unsubscribe()
            except Exception:
                logger.debug("nats bus unsubscribe failed", exc_info=True)

    # -- EventBus ---------------------------------------------------------------------------

    def publish(self, topic: str, kind: str, data: dict[str, Any], *,
                size: int | None = None) -> None:
        super().publish(topic, kind, data, size=size)  # Rule 1: here, now, once
        if not self._link.connected:
            self.dropped_total += 1
            return
        try:
            payload: bytes = msgpack.packb(
                {"v": ENVELOPE_VERSION, "r": self._link.replica_id, "k": kind, "d": data},
                use_bin_type=True)
        except (TypeError, ValueError, OverflowError):
            self.unsendable_total += 1
            return
        if len(payload) > self.max_event_bytes:
            self.oversize_total += 1
            return
        token = subject_token(topic)
        if len(token) > MAX_TOKEN_LEN:  # the other replicas would refuse it (Rule 4)
            self.oversize_total += 1
            return
        if self._link.publish_nowait(self._subject_prefix + token, payload):
            self.sent_total += 1
        else:
            self.dropped_total += 1

    def nats_stats(self) -> NatsBusStats:
        return NatsBusStats(
            sent_total=self.sent_total, dropped_total=self.dropped_total,
            oversize_total=self.oversize_total, unsendable_total=self.unsendable_total,
            received_total=self.received_total, delivered_total=self.delivered_total,
            malformed_total=self.malformed_total, echo_total=self.echo_total)

    # -- inbound ------------------------------------------------------------------------------

    async def _on_msg(self, msg: Msg) -> None:
        """One message from the bus subject (Rule 4). Never raises: nats-py would only log."""
        self.received_total += 1
        try:
            subject = msg.subject
            topic = (token_text(subject[len(self._subject_prefix):])
                     if subject.startswith(self._subject_prefix) else None)
            if topic is None:
                self.malformed_total += 1
                return
            if not self.hub.has_subscribers(topic):
                return  # nobody here wants it: not even decoded
            event = self._decode(msg.data)
            if event is None:
                self.malformed_total += 1
                return
            replica, kind, data = event
            if replica == self._link.replica_id:
                self.echo_total += 1
                return
            self.hub.publish(topic, kind, data)
            self.delivered_total += 1
        except Exception:  # a bug here must not end the subscription either
            self.malformed_total += 1
            logger.exception("nats bus message could not be handled")

    def _decode(self, payload: bytes) -> tuple[str, str, dict[str, Any]] | None:
        """(replica id, kind, data) of one envelope, or None when it is not one."""
        if len(payload) > self.max_event_bytes:
            return None
        try:
            obj = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True,
                                  ext_hook=_refuse_ext, max_str_len=self.max_event_bytes,
                                  max_bin_len=self.max_event_bytes,
                                  max_array_len=MAX_CONTAINER_LEN,
                                  max_map_len=MAX_CONTAINER_LEN, max_ext_len=0)
        except Exception:  # msgpack raises many types (ExtraData, ValueError, ...)
            return None
        if not isinstance(obj, dict) or obj.get("v") != ENVELOPE_VERSION:
            return None
        replica, kind = obj.get("r"), obj.get("k")
        if not (isinstance(replica, str) and 0 < len(replica) <= MAX_REPLICA_ID_LEN
                and isinstance(kind, str) and 0 < len(kind) <= MAX_KIND_LEN):
            return None
        try:
            return replica, kind, plain_map(obj.get("d"), "d", self._limits)
        except (BadFrame, RecursionError):
            return None


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack ext type {code} is not allowed")
