"""What the controller's rtc relay remembers, with no I/O (services/rtc.py does the I/O;
docs/protocol.md "Media plane signalling").

Two views of one peer, each kept where its frames pass, so that the relay works across
replicas without any shared state:

* :class:`ClientPeers`, one per ``/ws`` connection (on the replica holding the client):
  the peers this client opened (``peer_session_id`` -> node), its signalling rate;
* :class:`SessionRoutes`, one per node session (on the replica holding the node): whom
  this node may address, learned from what was delivered to it. Every frame for a node
  reaches its live session (``Router.send``), so the session sees every ``from`` it was
  given and every ``rtc.link`` grant, and the node's own frames enter through the same
  session: the check is local to the replica that must make it.

Rule 1 (a node speaks only to who spoke to it): a node may address ``client:<id>`` for a
``peer_session_id`` only after a frame of that client for that peer was delivered to its
session, and only as the node end (``node_id`` is the node itself); it may address
``node:<id>`` only under a grant (:class:`~tether.protocol.rtc.RtcLink`) for that peer
with that node. A close (either way) ends the route.
Rule 2 (bounded): a client holds at most ``max_peers`` peers; a session remembers at most
``MAX_CLIENT_ROUTES`` client routes and ``MAX_GRANTS`` grants, the least recently used
dropped past that (their node then gets ``forbidden`` until the other end speaks again).
Rule 3 (the relay is bounded per direction): :class:`RelayWindow` (the docstring of
:class:`~tether.protocol.rtc.RtcRelay`).
Rule 4 (grants lapse): a grant not used before its ``expires_at_ms`` lapses; once a frame
passed under it, it lasts until a close or the end of the session (a transfer may take
longer than the grant's TTL).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

from tether.protocol.rtc import (
    MAX_RELAY_WINDOW,
    RtcBody,
    RtcClose,
    RtcLink,
    RtcOffer,
    RtcRelay,
)

MAX_CLIENT_PEERS = 8  # open peers per /ws client
CLIENT_RATE_PER_S = 20.0  # rtc.* frames a client may send per second, sustained
CLIENT_BURST = 40.0
MAX_REFUSED_RUN = 64  # rate-limited frames in a row before the client is closed (4429)
MAX_CLIENT_ROUTES = 64  # (client, peer) routes one node session remembers
MAX_GRANTS = 16  # rtc.link grants one node session remembers
RELAY_INITIAL_WINDOW = 64 << 10  # in flight per relay direction before the receiver's ack
MAX_RELAY_IN_FLIGHT = 1 << 20  # the controller's cap on any receiver's window
MAX_RELAY_FRAMES = 256  # frames in flight per relay direction


class TokenBucket:
    """``rate_per_s`` tokens a second up to ``burst``; each frame takes one. Times are
    passed in (monotonic seconds)."""

    __slots__ = ("_at", "_tokens", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: float, now_s: float) -> None:
        self.rate_per_s, self.burst = rate_per_s, burst
        self._tokens, self._at = burst, now_s

    def take(self, now_s: float) -> bool:
        """True, and one token fewer, when a token is there; False (nothing taken)
        otherwise. A clock that goes back adds nothing."""
        elapsed = max(0.0, now_s - self._at)
        self._at = max(self._at, now_s)
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate_per_s)
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


@dataclass(slots=True)
class ClientPeer:
    node_id: str
    negotiation_id: str | int  # the last round the client named (for the close it is owed)


@dataclass(eq=False, slots=True)
class ClientPeers:
    """One ``/ws`` client's rtc state. ``address`` (``client:<id>``) is unguessable and
    names the bus topic the client listens on, on whichever replica."""

    address: str
    bucket: TokenBucket
    max_peers: int = MAX_CLIENT_PEERS
    peers: dict[str, ClientPeer] = field(default_factory=dict)
    refused_run: int = 0  # rate-limited frames since the last admitted one

    def admit(self, body: RtcBody) -> tuple[str, str] | None:
        """Whether the client may send ``body``: None, or (code, message). Only an offer
        opens a peer; any other frame needs a peer this client opened with that node."""
        peer = self.peers.get(body.peer_session_id)
        if peer is not None and peer.node_id != body.node_id:
            return "forbidden", (f"peer_session_id {body.peer_session_id!r} is open with "
                                 "another node; use a new id")
        if peer is None and not isinstance(body, RtcOffer):
            return "rtc_unknown_peer", (f"no open peer {body.peer_session_id!r} with node "
                                        f"{body.node_id!r}: open it with rtc.offer")
        if peer is None and len(self.peers) >= self.max_peers:
            return "quota_exceeded", (f"a client holds at most {self.max_peers} open peers; "
                                      "close one (rtc.close) first")
        return None

    def opened(self, body: RtcBody) -> bool:
        """Record ``body`` as sent (call after :meth:`admit` said yes). True when it opened
        the peer (the caller forgets it again if the node turned out offline)."""
        new = body.peer_session_id not in self.peers
        if isinstance(body, RtcClose):
            self.peers.pop(body.peer_session_id, None)
            return False
        self.peers[body.peer_session_id] = ClientPeer(body.node_id, body.negotiation_id)
        return new

    def accepts(self, body: RtcBody) -> bool:
        """Whether a frame from a node (``from`` stamped) is for a peer this client has
        open with that node (defence in depth: the node's session checked it first). A
        close is accepted once and ends the peer."""
        peer = self.peers.get(body.peer_session_id)
        if peer is None or peer.node_id != body.node_id or body.from_ != f"node:{body.node_id}":
            return False
        if isinstance(body, RtcClose):
            del self.peers[body.peer_session_id]
        return True


class RelayWindow:
    """One relay direction, as the receiver's session sees it (Rule 3): ``admit`` each
    data frame on its way to the receiver, ``acked`` with the receiver's acks."""

    __slots__ = ("_sizes", "acked", "cap", "in_flight", "last_seq", "max_frames", "window")

    def __init__(self, *, cap: int = MAX_RELAY_IN_FLIGHT,
                 max_frames: int = MAX_RELAY_FRAMES) -> None:
        self.cap, self.max_frames = cap, max_frames
        self.window = min(RELAY_INITIAL_WINDOW, cap)
        self.acked = self.last_seq = self.in_flight = 0
        self._sizes: deque[int] = deque()  # sizes of seq acked+1 .. last_seq

    def admit(self, seq: int, size: int) -> bool:
        """True: deliver the frame. A re-sent ``seq`` (at most ``last_seq``) passes and is
        not counted twice; the next ``seq`` passes if it fits (one frame always does);
        anything else (a gap, past the window or the frame count) is refused."""
        if seq <= self.last_seq:
            return True
        if seq != self.last_seq + 1:
            return False
        if self._sizes and (self.in_flight + size > min(self.window, self.cap)
                            or len(self._sizes) >= self.max_frames):
            return False
        self.last_seq = seq
        self._sizes.append(size)
        self.in_flight += size
        return True

    def on_ack(self, ack: int, window: int) -> None:
        """The receiver applied up to ``ack`` and takes ``window`` bytes more. An ack
        beyond what was delivered counts as far as what was; one behind is stale."""
        self.window = min(window, self.cap, MAX_RELAY_WINDOW)
        ack = min(ack, self.last_seq)
        while self.acked < ack:
            self.in_flight -= self._sizes.popleft()
            self.acked += 1


@dataclass(slots=True)
class Grant:
    peer: str  # the other node's address, node:<id>
    node_id: str  # the node end of the peer
    expires_at_ms: int
    used: bool = False
    relay_in: RelayWindow | None = None  # data from ``peer`` to this node, once relayed


class SessionRoutes:
    """Whom one node session may address (module docstring, Rules 1, 2 and 4)."""

    __slots__ = ("clients", "grants")

    def __init__(self) -> None:
        self.clients: OrderedDict[tuple[str, str], None] = OrderedDict()
        self.grants: OrderedDict[str, Grant] = OrderedDict()

    def delivering(self, body: RtcBody | RtcLink | RtcRelay, now_ms: int) -> bool:
        """A frame is on its way to this node: learn from it. False: drop it (a relay
        frame past its window, or with no grant here)."""
        if isinstance(body, RtcLink):
            self.grants[body.peer_session_id] = Grant(body.from_, body.node_id,
                                                      body.expires_at_ms)
            self.grants.move_to_end(body.peer_session_id)
            while len(self.grants) > MAX_GRANTS:
                self.grants.popitem(last=False)
            return True
        sender = body.from_ or ""
        if sender.startswith("client:"):
            key = (sender, body.peer_session_id)
            if isinstance(body, RtcClose):
                self.clients.pop(key, None)
                return True
            self.clients[key] = None
            self.clients.move_to_end(key)
            while len(self.clients) > MAX_CLIENT_ROUTES:
                self.clients.popitem(last=False)
            return True
        grant = self._grant(sender, body, now_ms)
        if grant is None:
            return not isinstance(body, RtcRelay)  # the sender's session checked signalling
        if isinstance(body, RtcClose):
            del self.grants[body.peer_session_id]
        elif isinstance(body, RtcRelay) and body.seq:
            if grant.relay_in is None:
                grant.relay_in = RelayWindow()
            return grant.relay_in.admit(body.seq, len(body.data))
        return True

    def may_send(self, node_id: str, body: RtcBody | RtcRelay, now_ms: int) -> str | None:
        """Why this node (``node_id``) may not send ``body`` to its ``to``, or None; a
        close it may send ends the route. Call only with ``to`` set."""
        to = body.to or ""
        if to.startswith("client:"):
            if isinstance(body, RtcRelay):
                return "rtc.relay goes between nodes only"
            if body.node_id != node_id:
                return (f"node_id must be this node ({node_id!r}) in a frame to a client; "
                        f"got {body.node_id!r}")
            key = (to, body.peer_session_id)
            if key not in self.clients:
                return (f"{to[:40]!r} has no peer {body.peer_session_id!r} open with this "
                        "node")
            if isinstance(body, RtcClose):
                del self.clients[key]
            return None
        grant = self._grant(to, body, now_ms)
        if grant is None:
            return (f"no grant for peer {body.peer_session_id!r} with {to[:80]!r} and "
                    f"node_id {body.node_id!r} (POST /api/v1/rtc/links)")
        if isinstance(body, RtcClose):
            del self.grants[body.peer_session_id]
        return None

    def may_report(self, to: str, peer_session_id: str) -> bool:
        """Whether this node may send an ``error`` about peer ``peer_session_id`` to the
        client ``to``: the route of Rule 1 (a frame of that client for that peer reached
        this session). Nothing is learnt or ended here."""
        return to.startswith("client:") and (to, peer_session_id) in self.clients

    def relay_acked(self, body: RtcRelay) -> None:
        """This node (the receiver) acked data of the relay ``body`` names."""
        grant = self.grants.get(body.peer_session_id)
        if body.ack is not None and body.window is not None and grant is not None \
                and grant.relay_in is not None:
            grant.relay_in.on_ack(body.ack, body.window)

    def _grant(self, other: str, body: RtcBody | RtcRelay, now_ms: int) -> Grant | None:
        """The live grant for the body's peer with ``other`` (marked used), or None."""
        grant = self.grants.get(body.peer_session_id)
        if grant is None or grant.peer != other or grant.node_id != body.node_id:
            return None
        if not grant.used and now_ms >= grant.expires_at_ms:
            del self.grants[body.peer_session_id]
            return None
        grant.used = True
        self.grants.move_to_end(body.peer_session_id)
        return grant
