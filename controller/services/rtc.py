"""The media plane's signalling relay (docs/protocol.md "Media plane signalling"): ``rtc.*``
between ``/ws`` clients and nodes and between two nodes, and the bounded ``rtc.relay`` data
path between nodes. What it remembers, and the rules, are in services/rtc_state.py.

Ways (each works across replicas: no step needs the other end's replica):

* client -> node (``browser.py``): :meth:`RtcService.from_client` checks the client's rate
  and peers, stamps ``from: client:<id>`` (whatever the client sent is overwritten) and
  hands the frame to the node's live session with ``Router.send`` (class E);
* node -> client (``gateway.py``): :meth:`RtcService.from_node` checks the node's session
  routes, stamps ``from: node:<id>`` and publishes the frame on the client's bus topic
  (:func:`client_topic`), which the client's ``/ws`` connection alone subscribes to, on
  whichever replica it is;
* node -> node: the same check against an ``rtc.link`` grant, then ``Router.send``;
* :meth:`RtcService.delivering` is called by the receiving session for each ``rtc.*``
  frame it is about to write (``EdgeConnection.send_ephemeral``): the session learns whom
  its node may answer, and the relay's window is enforced there.

Rule: every refusal is an ``error`` frame with the contract's code (``bad_frame``,
``forbidden``, ``rate_limited``, ``node_offline``, ``rtc_unknown_peer``,
``quota_exceeded``), counted in ``tether_rtc_frames_refused_total``; nothing refused is
relayed, and the connection stays (a client that floods past ``MAX_REFUSED_RUN`` refusals
in a row is closed 4429 by browser.py).
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter

from tether.protocol.errors import BadFrame, Conflict, InvalidRequest, LocalProtocolError
from tether.protocol.frames import Frame, valid_node_id
from tether.protocol.rtc import (
    RTC_BODIES,
    RtcBody,
    RtcClose,
    RtcLink,
    RtcRelay,
    parse_rtc,
    with_route,
)
from tether.protocol.rtc_error import RtcError

from .bus import EventBus
from .events import Event
from .router import Router
from .rtc_state import (
    CLIENT_BURST,
    CLIENT_RATE_PER_S,
    MAX_REFUSED_RUN,
    ClientPeers,
    SessionRoutes,
    TokenBucket,
)

logger = logging.getLogger(__name__)

SIGNAL_TYPES = tuple(RTC_BODIES)  # what a /ws client may send: offer, answer, ice, close
NODE_TYPES = (*SIGNAL_TYPES, RtcRelay.TYPE)  # what a node may send
LINK_TTL_S = 600.0  # a grant must be used within this (services/rtc_state.py Rule 4)
REFUSALS = ("bad_frame", "forbidden", "rate_limited", "node_offline", "rtc_unknown_peer",
            "quota_exceeded", "frame_too_large", "relay_window", "not_for_client")

__all__ = ["LINK_TTL_S", "MAX_REFUSED_RUN", "NODE_TYPES", "SIGNAL_TYPES", "RtcCounters",
           "RtcService", "client_topic"]


def client_topic(address: str) -> str:
    """The bus topic a ``/ws`` client's rtc frames travel on. Internal: ``/ws`` refuses it
    as a subscription (browser.py ``topic_error`` knows no ``rtc`` kind), and the address
    is unguessable, so only the connection that was given it listens there."""
    return f"rtc:{address}"


class RtcCounters:
    """``tether_rtc_frames_relayed_total{type}``, ``tether_rtc_frames_refused_total
    {reason}`` (reasons: :data:`REFUSALS`) and ``tether_rtc_relay_bytes_total``, in the
    controller's own registry. Label values come from fixed sets, never from a peer."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.relayed = Counter("tether_rtc_frames_relayed_total",
                               "rtc.* frames relayed by this replica, by type",
                               ["type"], registry=registry)
        self.refused = Counter("tether_rtc_frames_refused_total",
                               "rtc.* frames refused or dropped by this replica, by reason",
                               ["reason"], registry=registry)
        self.relay_bytes = Counter("tether_rtc_relay_bytes_total",
                                   "rtc.relay data bytes handed to nodes by this replica",
                                   registry=registry)


class RtcService:
    """The relay (module docstring). ``clock`` is wall seconds (grants' expiry),
    ``monotonic`` paces the rate limits, ``new_id`` makes client ids and link ids
    (unguessable: ``secrets.token_urlsafe``)."""

    def __init__(self, router: Router, bus: EventBus, counters: RtcCounters | None = None,
                 *, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 new_id: Callable[[], str] = lambda: secrets.token_urlsafe(16)) -> None:
        self._router, self._bus = router, bus
        self.counters = counters or RtcCounters()
        self._clock, self._monotonic, self._new_id = clock, monotonic, new_id

    async def _to_node(self, node_id: str, frame: Frame) -> str | None:
        """Hand ``frame`` to the node's live session: None when it took it, else the
        refusal's code (``node_offline``, or ``frame_too_large`` past the frame cap the
        node announced in its hello)."""
        try:
            taken = await self._router.send(node_id, frame)
        except LocalProtocolError:
            return "frame_too_large"
        return None if taken else "node_offline"

    def _refuse(self, reason: str, code: str, message: str) -> tuple[str, str]:
        self.counters.refused.labels(reason).inc()
        return code, message

    # -- /ws clients ------------------------------------------------------------------

    def open_client(self) -> ClientPeers:
        """A new client's state, with its address (``client:<id>``)."""
        return ClientPeers(address=f"client:{self._new_id()}",
                           bucket=TokenBucket(CLIENT_RATE_PER_S, CLIENT_BURST,
                                              self._monotonic()))

    async def from_client(self, client: ClientPeers, frame: Frame) -> tuple[str, str] | None:
        """Relay one ``rtc.*`` frame of a client whose role was checked (operator or
        above). None when the node's session took it; else (code, message) for the
        ``error`` frame. ``client.refused_run`` counts rate-limited frames in a row."""
        if not client.bucket.take(self._monotonic()):
            client.refused_run += 1
            return self._refuse("rate_limited", "rate_limited", (
                "rtc signalling is limited to 20 frames a second (bursts of 40) per "
                "client; slow down"))
        client.refused_run = 0
        try:
            body = parse_rtc(frame.t, frame.b)
        except BadFrame as exc:
            return self._refuse("bad_frame", exc.code, exc.message)
        refusal = client.admit(body)
        if refusal is not None:
            return self._refuse(refusal[0], *refusal)
        opened = client.opened(body)
        # The client's frame id rides on: a node's error about it answers with it as
        # ``re``, and comes back to this client as its answer (error_from_node).
        failed = await self._to_node(body.node_id,
                                     with_route(body, from_=client.address).frame(id=frame.id))
        if failed is not None:
            if opened:
                client.peers.pop(body.peer_session_id, None)
            return self._refuse(failed, failed, (
                f"node {body.node_id!r} has no live session; try again when it is online"
                if failed == "node_offline" else
                f"the frame is over the frame cap node {body.node_id!r} announced"))
        self.counters.relayed.labels(frame.t).inc()
        return None

    def to_client(self, client: ClientPeers, event: Event) -> Frame | None:
        """An event of the client's topic as the frame to send it; None (dropped, counted)
        for one that is not for a peer this client has open with that node."""
        if event.kind == RtcError.TYPE:
            return self._error_to_client(client, event)
        try:
            body = parse_rtc(event.kind, event.data)
        except BadFrame:
            self._refuse("bad_frame", "bad_frame", "")
            return None
        if not client.accepts(body):
            self._refuse("not_for_client", "forbidden", "")
            return None
        return body.frame()

    def _error_to_client(self, client: ClientPeers, event: Event) -> Frame | None:
        """A node's error (:meth:`error_from_node`) as the client's ``error`` frame, ``re``
        its own frame id; None (dropped, counted) unless it is about a peer this client
        has open with that node. ``rtc_unknown_peer`` and ``unavailable`` mean the node
        holds no such peer: the client's record of it ends (its slot is free again)."""
        data = event.data if isinstance(event.data, dict) else {}
        re = data.get("re")
        try:
            error = RtcError.from_body(data.get("error", {}))
        except BadFrame:
            self._refuse("bad_frame", "bad_frame", "")
            return None
        peer = client.peers.get(error.peer_session_id)
        if peer is None or peer.node_id != error.node_id \
                or error.from_ != f"node:{error.node_id}":
            self._refuse("not_for_client", "forbidden", "")
            return None
        if error.code in ("rtc_unknown_peer", "unavailable"):
            del client.peers[error.peer_session_id]
        body = dataclasses.replace(error, to=None).to_body()
        return Frame(t="error", re=re if isinstance(re, str) else None, b=body)

    async def client_gone(self, client: ClientPeers) -> None:
        """The client's connection ended: each node it had a peer with gets ``rtc.close``
        (reason "client gone"), best effort, one at a time (at most ``max_peers``)."""
        peers, client.peers = client.peers, {}
        for peer_session_id, peer in peers.items():
            close = RtcClose(node_id=peer.node_id, peer_session_id=peer_session_id,
                             negotiation_id=peer.negotiation_id, from_=client.address,
                             to=None, reason="client gone")
            if await self._to_node(peer.node_id, close.frame()) is None:
                self.counters.relayed.labels(RtcClose.TYPE).inc()

    # -- nodes ------------------------------------------------------------------------

    def delivering(self, routes: SessionRoutes, frame: Frame) -> bool:
        """A node's session is about to write ``frame`` (``rtc.*``, from this controller):
        its routes learn from it. False: drop it (counted). A frame that does not parse
        (nothing here builds one; another replica's router may hand one on) teaches
        nothing and passes: the node parses its input once, at its own boundary, and the
        router stays a plain class E pipe."""
        try:
            body: RtcBody | RtcLink | RtcRelay
            if frame.t == RtcLink.TYPE:
                body = RtcLink.from_body(frame.b)
            elif frame.t == RtcRelay.TYPE:
                body = RtcRelay.from_body(frame.b)
            else:
                body = parse_rtc(frame.t, frame.b)
        except BadFrame:
            return True
        if routes.delivering(body, int(self._clock() * 1000)):
            if isinstance(body, RtcRelay) and body.data:
                self.counters.relay_bytes.inc(len(body.data))
            return True
        self._refuse("relay_window", "rate_limited", "")
        return False

    async def from_node(self, node_id: str, routes: SessionRoutes, frame: Frame
                        ) -> tuple[str, str] | None:
        """Relay one ``rtc.*`` frame of node ``node_id`` (its session's ``routes``) to its
        ``to``; None when relayed (published to a client, or taken by the other node's
        session), else (code, message) for the ``error`` frame."""
        try:
            body: RtcBody | RtcRelay = (RtcRelay.from_body(frame.b)
                                        if frame.t == RtcRelay.TYPE
                                        else parse_rtc(frame.t, frame.b))
        except BadFrame as exc:
            return self._refuse("bad_frame", exc.code, exc.message)
        to = body.to
        if to is None:
            return self._refuse("bad_frame", "bad_frame", (
                "field 'to' is required: the 'from' of the frame this answers"))
        why = routes.may_send(node_id, body, int(self._clock() * 1000))
        if why is not None:
            return self._refuse("forbidden", "forbidden", why)
        if isinstance(body, RtcRelay):
            routes.relay_acked(body)
        out = dataclasses.replace(body, from_=f"node:{node_id}", to=None)
        if to.startswith("client:"):
            self._bus.publish(client_topic(to), frame.t, out.to_body())
        else:
            failed = await self._to_node(to.removeprefix("node:"), out.frame())
            if failed is not None:
                return self._refuse(failed, failed, (
                    f"{to!r} has no live session; the peer cannot be reached now"
                    if failed == "node_offline" else
                    f"the frame is over the frame cap {to!r} announced"))
        self.counters.relayed.labels(frame.t).inc()
        return None

    def error_from_node(self, node_id: str, routes: SessionRoutes, frame: Frame) -> bool:
        """A node's ``error`` frame: True when it was about a client's peer and is relayed
        to that client (published on its topic, ``re`` kept: the client's own frame id).
        False when it is not for a client (no ``to: client:<id>``, no ``peer_session_id``,
        a body that does not parse: the caller logs it) or when the node may not address
        that client (Rule 1 of services/rtc_state.py: counted ``forbidden``, never
        relayed, never answered: two peers must not trade errors)."""
        b = frame.b
        to = b.get("to") if isinstance(b, dict) else None
        if not (isinstance(to, str) and to.startswith("client:")
                and isinstance(b.get("peer_session_id"), str)):
            return False
        try:
            error = RtcError.from_body(b)
        except BadFrame:
            self._refuse("bad_frame", "bad_frame", "")
            return False
        if error.node_id != node_id or error.to is None or \
                not routes.may_report(error.to, error.peer_session_id):
            self._refuse("forbidden", "forbidden", "")
            return False
        out = dataclasses.replace(error, from_=f"node:{node_id}", to=None)
        self._bus.publish(client_topic(error.to), RtcError.TYPE,
                          {"re": frame.re, "error": out.to_body()})
        self.counters.relayed.labels(RtcError.TYPE).inc()
        return True

    async def link(self, a: str, b: str) -> dict[str, object]:
        """Grant nodes ``a`` and ``b`` a peer (``a`` offers, ``b`` is its node end): an
        ``rtc.link`` to each node's session, which records it (the grant travels with what
        the nodes are sent; nothing is stored). Raises InvalidRequest for bad ids and
        Conflict ``node_offline`` unless both sessions took it."""
        if not (isinstance(a, str) and valid_node_id(a) and isinstance(b, str)
                and valid_node_id(b)):
            raise InvalidRequest("'a' and 'b' must be node ids ([a-z0-9][a-z0-9-]{0,62})")
        if a == b:
            raise InvalidRequest("'a' and 'b' must be two different nodes")
        peer_session_id = f"link-{self._new_id()}"
        expires_s = self._clock() + LINK_TTL_S
        expires_ms = int(expires_s * 1000)
        for node, other in ((a, b), (b, a)):
            grant = RtcLink(node_id=b, peer_session_id=peer_session_id,
                            from_=f"node:{other}", expires_at_ms=expires_ms)
            if await self._to_node(node, grant.frame()) is not None:
                raise Conflict(f"node {node!r} has no live session; both nodes must be "
                               "online to link them", code="node_offline")
        logger.info("rtc link granted", extra={"a": a, "b": b,
                                               "peer_session_id": peer_session_id})
        return {"peer_session_id": peer_session_id, "a": a, "b": b,
                "expires_at": expires_s}
