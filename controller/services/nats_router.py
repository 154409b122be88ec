"""The session router across replicas, over NATS (the :class:`~.router.Router` of a cluster).

Subjects: the replica holding node ``N`` subscribes to ``<prefix>.node.<token(N)>.*``
(``token`` is nats_link.py's :func:`~.nats_link.subject_token`; a valid node id is its own
token) from the moment its registry claims ``N`` until it releases it, and receives there:

* ``….nudge`` (empty payload, no reply): wake the session's downlink;
* ``….send`` (one MessagePack frame, request/reply): hand a class E frame to the session;
  the reply ``1`` says the session wrote it;
* ``….disable`` (empty payload, request/reply): close the session with 4403; reply ``1``;
* ``….supersede`` (a session id, request/reply): a hello on another replica took the node
  from that session in the store; if the session held here is exactly that one, close it
  with 4409 and reply ``1`` (a newer session of the node held here is never touched);
* ``….peek`` (a peek request, request/reply): what this replica holds in memory for the
  node, its live session and, when asked, its monitor packets, as one bounded MessagePack
  map (services/peek.py: the wire form, its bounds and its parser).

Every replica also subscribes to ``<prefix>.rescan``: wake the downlink of every session
held here (sent after a replica lost nudges it could not even queue).

Guarantees:

* Rule 1: every call is answered here when this replica holds the node (LocalRouter), and
  goes over NATS only otherwise.
* Rule 2 (nudges are at most once, and healed): a nudge is fire and forget. One that could
  not be queued (NATS down, the link's queue full) is kept, per node, and published again
  after the link reconnects (past ``max_unsent_nudges`` nodes, one ``rescan`` is published
  instead). After each reconnection the replica also wakes every session it holds, which
  covers nudges addressed to it that were lost on the way while the connection broke. A
  nudge that still gets lost waits for the session's next downlink pass.
* Rule 3 (``send``, ``disable`` and ``supersede`` answer within their timeout): a replica
  replies only when its session did it (``1``); no reply is silence, so a replica that is
  just handing a node over cannot answer for the replica taking it. No subscriber at all is
  NATS's "no responders", answered at once; otherwise the requester gives up after
  ``send_timeout_s`` (``disable_timeout_s``, ``supersede_timeout_s``) and says False. A
  class E frame may therefore be written and the answer lost: class E is best effort by
  contract (PROTOCOL.md §3). A ``peek`` is answered the same way (only by the replica
  whose registry holds the node, services/peek.py Rule 1) within ``peek_timeout_s``
  (short: a read waits on it); no answer is None, and the reader shows its own memory.
* Rule 4 (hostile input): a message on a node subject is parsed once, bounded by
  ``max_frame_bytes``; a verb that is not one of the four, a payload that is not a frame, a
  frame that is not class E, a session id that is not short printable ASCII, or a peek
  request that is not one is counted (``malformed_total``) and dropped; a peek reply that
  is not one (services/peek.py Rule 3) is counted (``peek_replies_malformed_total``) and
  taken as no answer. Each
  handler runs under ``handler_timeout_s``. A node's messages are handled in order, one at a
  time (one nats-py subscription task per node held, its queue bounded by
  ``max_pending_per_node``: past it nats-py drops and the link counts a slow consumer).
* Rule 5 (subscriptions follow the registry): the registry's observer calls only mark the
  node; one reconciler task subscribes or unsubscribes while connected, so a claim and a
  release in quick succession end in the registry's state, never in a stale subscription.
  nats-py re-sends live subscriptions on reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from dataclasses import dataclass

import nats
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from tether.common.tasks import cancel_and_wait
from tether.protocol.classes import DeliveryClass, delivery_class
from tether.protocol.codec import MAX_FRAME_BYTES, decode_msgpack, encode_msgpack
from tether.protocol.errors import LocalProtocolError, RemoteProtocolError
from tether.protocol.frames import Frame

from .nats_link import MAX_TOKEN_LEN, NatsLink, subject_token
from .peek import (
    MAX_REPLY_BYTES,
    NodePeek,
    PeekRequest,
    PeekSource,
    encode_reply,
    encode_request,
    parse_reply,
    parse_request,
)
from .registry import SessionRegistry
from .router import LocalRouter, check_ephemeral

logger = logging.getLogger(__name__)

NUDGE, SEND, DISABLE, SUPERSEDE, PEEK = "nudge", "send", "disable", "supersede", "peek"
REPLY_DONE = b"1"
MAX_SESSION_ID_BYTES = 128  # session ids are "s_" and 32 hex digits


@dataclass(frozen=True, slots=True)
class NatsRouterStats:
    """Counters for diag and /metrics."""

    held_subscriptions: int
    nudges_sent_total: int  # queued for another replica
    nudges_unsent_total: int  # could not be queued (kept and published after a reconnect)
    nudges_received_total: int
    remote_calls_total: int  # send/disable/supersede requests made to other replicas
    remote_calls_done_total: int  # of those, answered "done"
    served_total: int  # send/disable/supersede requests this replica did for another
    malformed_total: int
    handler_errors_total: int
    peeks_total: int = 0  # peek requests made to other replicas
    peeks_answered_total: int = 0  # of those, answered with a well-formed reply
    peek_replies_malformed_total: int = 0  # replies dropped (services/peek.py Rule 3)
    peeks_served_total: int = 0  # peeks this replica answered for another


class NatsRouter:
    """:class:`~.router.Router` across replicas (module docstring for the rules). Call
    :meth:`start` after the link's, :meth:`close` before the link's."""

    def __init__(self, registry: SessionRegistry, link: NatsLink, *,
                 send_timeout_s: float = 2.0, disable_timeout_s: float = 6.0,
                 supersede_timeout_s: float = 6.0,
                 handler_timeout_s: float = 10.0, max_frame_bytes: int = MAX_FRAME_BYTES,
                 max_unsent_nudges: int = 65_536, max_pending_per_node: int = 256,
                 peek: PeekSource | None = None, peek_timeout_s: float = 1.0,
                 max_peek_reply_bytes: int = MAX_REPLY_BYTES) -> None:
        self._registry = registry
        self._local = LocalRouter(registry, peek)
        self._link = link
        self._node_prefix = f"{link.prefix}.node."
        self._rescan_subject = f"{link.prefix}.rescan"
        self.send_timeout_s = send_timeout_s
        self.disable_timeout_s = disable_timeout_s
        self.supersede_timeout_s = supersede_timeout_s
        self.peek_timeout_s = peek_timeout_s
        self.max_peek_reply_bytes = max_peek_reply_bytes
        self.handler_timeout_s = handler_timeout_s
        self.max_frame_bytes = max_frame_bytes
        self.max_unsent_nudges = max_unsent_nudges
        self._max_pending_per_node = max_pending_per_node
        self._subs: dict[str, Subscription] = {}
        self._dirty: dict[str, None] = {}  # nodes whose subscription may be out of date
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._reconciler: asyncio.Task[None] | None = None
        self._rescan_sub: Subscription | None = None
        self._unsent: dict[str, None] = {}  # nodes whose nudge could not be queued
        self._unsent_overflow = False
        self.nudges_sent_total = 0
        self.nudges_unsent_total = 0
        self.nudges_received_total = 0
        self.remote_calls_total = 0
        self.remote_calls_done_total = 0
        self.served_total = 0
        self.malformed_total = 0
        self.handler_errors_total = 0
        self.peeks_total = 0
        self.peeks_answered_total = 0
        self.peek_replies_malformed_total = 0
        self.peeks_served_total = 0
        registry.observe(self)
        link.on_reconnect(self._after_reconnect)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe to ``rescan`` and to the nodes held already; start the reconciler."""
        self._rescan_sub = await self._link.nc.subscribe(
            self._rescan_subject, cb=self._on_rescan, pending_msgs_limit=16)
        for session in self._registry.all():
            self._dirty[session.node_id] = None
        self._reconciler = asyncio.create_task(self._reconcile_run(), name="nats-router")
        self._wake.set()

    async def close(self) -> None:
        """Stop the reconciler and unsubscribe (bounded; the link's drain ends them anyway)."""
        if self._reconciler is not None:
            await cancel_and_wait(self._reconciler)
            self._reconciler = None
        subs = list(self._subs.values())
        if self._rescan_sub is not None:
            subs.append(self._rescan_sub)
        self._subs.clear()
        self._rescan_sub = None
        if self._link.connected:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._link.publish_timeout_s):
                    for sub in subs:
                        await sub.unsubscribe()

    async def settled(self, timeout_s: float = 5.0) -> None:
        """Return once every node held here has its subscription and the server has seen it
        (a round trip on the connection), or raise TimeoutError after ``timeout_s``."""
        async with asyncio.timeout(timeout_s):
            while self._dirty or not self._idle.is_set():
                self._idle.clear()
                self._wake.set()
                await self._idle.wait()
            await self._link.nc.flush()

    # -- RegistryObserver ---------------------------------------------------------------------

    def held(self, node_id: str) -> None:
        self._mark(node_id)

    def released(self, node_id: str) -> None:
        self._mark(node_id)

    def _mark(self, node_id: str) -> None:
        self._dirty[node_id] = None
        self._idle.clear()
        self._wake.set()

    async def _reconcile_run(self) -> None:
        """Make the subscriptions match the registry, node by node (Rule 5)."""
        while True:
            if not self._dirty:
                self._idle.set()
            await self._wake.wait()
            self._wake.clear()
            while self._dirty and self._link.connected:
                node_id = next(iter(self._dirty))
                try:
                    await self._reconcile(node_id)
                except (TimeoutError, nats.errors.Error):
                    break  # disconnected meanwhile: the reconnect listener wakes us
                del self._dirty[node_id]

    async def _reconcile(self, node_id: str) -> None:
        want = self._registry.get(node_id) is not None
        sub = self._subs.get(node_id)
        async with asyncio.timeout(self._link.publish_timeout_s):
            if want and sub is None:
                self._subs[node_id] = await self._link.nc.subscribe(
                    f"{self._node_prefix}{subject_token(node_id)}.*",
                    cb=functools.partial(self._on_node_msg, node_id),
                    pending_msgs_limit=self._max_pending_per_node)
            elif sub is not None and not want:
                del self._subs[node_id]
                await sub.unsubscribe()

    # -- Router -----------------------------------------------------------------------------

    def nudge(self, node_id: str) -> None:
        if self._registry.get(node_id) is not None:
            self._local.nudge(node_id)
            return
        subject = self._subject(node_id, NUDGE)
        if subject is None:
            return  # not a node id anyone can hold
        if self._link.publish_nowait(subject, b""):
            self.nudges_sent_total += 1
            return
        self.nudges_unsent_total += 1
        if len(self._unsent) < self.max_unsent_nudges:
            self._unsent[node_id] = None
        else:
            self._unsent_overflow = True

    async def send(self, node_id: str, frame: Frame) -> bool:
        check_ephemeral(frame)
        if self._registry.get(node_id) is not None:
            return await self._local.send(node_id, frame)
        payload = encode_msgpack(frame, max_frame_bytes=self.max_frame_bytes)
        return await self._request(node_id, SEND, payload, self.send_timeout_s)

    async def disable(self, node_id: str) -> bool:
        if self._registry.get(node_id) is not None:
            return await self._local.disable(node_id)
        return await self._request(node_id, DISABLE, b"", self.disable_timeout_s)

    async def supersede(self, node_id: str, session_id: str) -> bool:
        """Rule 1 does not apply as is: the caller usually holds the node here itself (its
        new session), so a session held here that is not ``session_id`` sends the request
        over NATS, where only the replica holding exactly ``session_id`` answers."""
        if await self._local.supersede(node_id, session_id):
            return True
        payload = session_id.encode()
        if len(payload) > MAX_SESSION_ID_BYTES:
            return False  # not a session id this store hands out
        return await self._request(node_id, SUPERSEDE, payload, self.supersede_timeout_s)

    async def peek(self, node_id: str, request: PeekRequest) -> NodePeek | None:
        """What the replica holding ``node_id`` has in memory for it (services/peek.py):
        read here when this replica holds it (Rule 1), else asked over NATS within
        ``peek_timeout_s``. None when nobody answered or the reply was malformed (counted).
        Never raises for what another replica sends."""
        if self._registry.get(node_id) is not None:
            return await self._local.peek(node_id, request)
        self.peeks_total += 1
        data = await self._ask(node_id, PEEK, encode_request(request), self.peek_timeout_s)
        if data is None:
            return None
        peeked = parse_reply(data, node_id=node_id, max_bytes=self.max_peek_reply_bytes)
        if peeked is None:
            self.peek_replies_malformed_total += 1
            return None
        self.peeks_answered_total += 1
        return peeked

    async def _request(self, node_id: str, verb: str, payload: bytes, timeout_s: float) -> bool:
        if not self._link.connected or self._subject(node_id, verb) is None:
            return False
        self.remote_calls_total += 1
        done = await self._ask(node_id, verb, payload, timeout_s) == REPLY_DONE
        if done:
            self.remote_calls_done_total += 1
        return done

    async def _ask(self, node_id: str, verb: str, payload: bytes, timeout_s: float
                   ) -> bytes | None:
        """The reply's payload, or None: no responders, timeout, disconnected."""
        subject = self._subject(node_id, verb)
        if subject is None or not self._link.connected:
            return None
        try:
            async with asyncio.timeout(timeout_s + 1):  # nats-py's own timeout comes first
                reply = await self._link.nc.request(subject, payload, timeout=timeout_s)
        except (TimeoutError, nats.errors.Error):  # no responders, timeout, disconnected
            return None
        data: bytes = reply.data
        return data

    def _subject(self, node_id: str, verb: str) -> str | None:
        token = subject_token(node_id)
        if len(token) > MAX_TOKEN_LEN:
            return None
        return f"{self._node_prefix}{token}.{verb}"

    # -- inbound ------------------------------------------------------------------------------

    async def _on_node_msg(self, node_id: str, msg: Msg) -> None:
        """A message for a node held here (Rule 4). Never raises."""
        try:
            async with asyncio.timeout(self.handler_timeout_s):
                await self._handle(node_id, msg)
        except Exception:
            self.handler_errors_total += 1
            logger.warning("nats router message failed", exc_info=True,
                           extra={"node_id": node_id, "subject": msg.subject[:200]})

    async def _handle(self, node_id: str, msg: Msg) -> None:
        verb = msg.subject.rpartition(".")[2]
        if verb == NUDGE:
            self.nudges_received_total += 1
            self._local.nudge(node_id)
            return
        if verb == SEND:
            frame = self._frame_of(msg.data)
            if frame is None:
                self.malformed_total += 1
                return
            try:
                done = await self._local.send(node_id, frame)
            except LocalProtocolError:  # over the session's frame cap: not sent
                done = False
        elif verb == DISABLE:
            done = await self._local.disable(node_id)
        elif verb == SUPERSEDE:
            session_id = _session_id_of(msg.data)
            if session_id is None:
                self.malformed_total += 1
                return
            done = await self._local.supersede(node_id, session_id)
        elif verb == PEEK:
            await self._serve_peek(node_id, msg)
            return
        else:
            self.malformed_total += 1
            return
        self.served_total += 1
        if done and msg.reply:
            await msg.respond(REPLY_DONE)

    async def _serve_peek(self, node_id: str, msg: Msg) -> None:
        """Answer a peek when a session here holds the node; stay silent otherwise (Rule 3)."""
        request = parse_request(msg.data)
        if request is None:
            self.malformed_total += 1
            return
        peeked = await self._local.peek(node_id, request)
        if peeked is None or not msg.reply:
            return
        self.peeks_served_total += 1
        await msg.respond(encode_reply(peeked, max_bytes=self.max_peek_reply_bytes))

    def _frame_of(self, payload: bytes) -> Frame | None:
        """The class E frame ``payload`` holds, or None."""
        try:
            frame = decode_msgpack(payload, max_frame_bytes=self.max_frame_bytes)
        except RemoteProtocolError:  # BadFrame, FrameTooLarge
            return None
        return frame if delivery_class(frame.t) is DeliveryClass.E else None

    async def _on_rescan(self, msg: Msg) -> None:
        self._wake_all()

    def _wake_all(self) -> None:
        for session in self._registry.all():
            session.wake_downlink()

    async def _after_reconnect(self) -> None:
        """The link reconnected (from its pump, bounded): heal what the outage lost
        (Rule 2) and let the reconciler catch up with the registry (Rule 5)."""
        self._wake_all()
        unsent, self._unsent = self._unsent, {}
        overflow, self._unsent_overflow = self._unsent_overflow, False
        if overflow:
            self._link.publish_nowait(self._rescan_subject, b"")
        for node_id in unsent:
            self.nudge(node_id)
        self._wake.set()

    def stats(self) -> NatsRouterStats:
        return NatsRouterStats(
            held_subscriptions=len(self._subs), nudges_sent_total=self.nudges_sent_total,
            nudges_unsent_total=self.nudges_unsent_total,
            nudges_received_total=self.nudges_received_total,
            remote_calls_total=self.remote_calls_total,
            remote_calls_done_total=self.remote_calls_done_total,
            served_total=self.served_total, malformed_total=self.malformed_total,
            handler_errors_total=self.handler_errors_total, peeks_total=self.peeks_total,
            peeks_answered_total=self.peeks_answered_total,
            peek_replies_malformed_total=self.peek_replies_malformed_total,
            peeks_served_total=self.peeks_served_total)


def _session_id_of(payload: bytes) -> str | None:
    """The session id ``payload`` names (printable ASCII, at most MAX_SESSION_ID_BYTES), or
    None."""
    if not 0 < len(payload) <= MAX_SESSION_ID_BYTES:
        return None
    try:
        text = payload.decode("ascii")
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() else None
